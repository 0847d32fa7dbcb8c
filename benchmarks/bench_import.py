"""Cold start of the front end: `archspec validate specs/tiny.yaml` and `archspec report
specs/llama-2-7b.yaml`, each a fresh process, against `python -c "import torch"` measured in the
same run (the commands interleaved, so the machine's noise falls on all of them alike), and
`archspec report` of the 7B spec against fvcore (a CPU build of the model plus FlopCountAnalysis).

    python benchmarks/bench_import.py [--repeats 15] [--fvcore]

Writes benchmarks/results/bench_import.json: per command the median, min and max of the wall
time and of the CPU time (user + system of the child, from getrusage), the modules each loads
(torch and triton must not be among the front end's), and the ratios to `import torch` (target:
at most 0.25). With --fvcore, a child process builds Llama-2-7B in bfloat16 and runs fvcore
(minutes, ~13 GiB; bench_report.py's child), and the ratio (build + analysis) / report median is
recorded (goal: at least 300).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, write  # noqa: E402

PY = sys.executable
COMMANDS = {
    "import_torch": [PY, "-c", "import torch"],
    "validate_tiny": [PY, "-m", "archspec", "validate", "specs/tiny.yaml"],
    "report_llama_7b": [PY, "-m", "archspec", "report", "specs/llama-2-7b.yaml", "--format", "json"],
}
TARGET = 0.25  # front-end command / import torch
PROBE = ("import sys, runpy; sys.argv = {argv!r}; "
         "exec('try:\\n runpy.run_module(\"archspec\", run_name=\"__main__\")\\nexcept SystemExit: pass'); "
         "print('MODULES', ' '.join(m for m in ('torch', 'triton', 'numpy', 'networkx') if m in sys.modules), "
         "file=sys.stderr)")


def run_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def loaded_modules(cmd: list[str]) -> list[str]:
    """Which heavy modules an archspec command imports (run in-process under a probe)."""
    argv = ["archspec", *cmd[3:]]
    proc = subprocess.run([PY, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES")), "MODULES")
    return line.split()[1:]


def stats(values: list[float]) -> dict:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values),
            "all_s": values}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--fvcore", action="store_true", help="also build 7B and run fvcore (minutes)")
    args = ap.parse_args()
    for cmd in COMMANDS.values():
        run_once(cmd)  # warm-up: page cache and .pyc files
    wall = {k: [] for k in COMMANDS}
    cpu = {k: [] for k in COMMANDS}
    for r in range(args.repeats):
        for name, cmd in COMMANDS.items():
            w, c = run_once(cmd)
            wall[name].append(w)
            cpu[name].append(c)
        print(f"[{r + 1}/{args.repeats}] " + ", ".join(f"{k} {wall[k][-1]:.2f}s" for k in COMMANDS),
              file=sys.stderr, flush=True)
    base_wall, base_cpu = statistics.median(wall["import_torch"]), statistics.median(cpu["import_torch"])
    results = {name: {"command": " ".join(["python", *cmd[1:]]), "wall": stats(wall[name]),
                      "cpu": stats(cpu[name])} for name, cmd in COMMANDS.items()}
    ratios = {}
    for name in ("validate_tiny", "report_llama_7b"):
        results[name]["heavy_modules_loaded"] = loaded_modules(COMMANDS[name])
        ratios[name] = {"wall": statistics.median(wall[name]) / base_wall,
                        "cpu": statistics.median(cpu[name]) / base_cpu,
                        "per_run_cpu_range": [min(c / t for c, t in zip(cpu[name], cpu["import_torch"])),
                                              max(c / t for c, t in zip(cpu[name], cpu["import_torch"]))],
                        "target": f"<= {TARGET}"}
    out = {"benchmark": "front-end cold start vs `import torch`", **environment(),
           "repeats": args.repeats, "timings": results, "ratio_to_import_torch": ratios,
           "definition": "median of the command's time / median of `python -c \"import torch\"`, "
                         "each a fresh process, interleaved in one run; per_run_cpu_range: the "
                         "range over runs of command CPU / the same round's import-torch CPU"}
    if args.fvcore:
        import bench_report
        fv = bench_report.run_fvcore(ROOT / "specs" / "llama-2-7b.yaml", 64)
        report_s = statistics.median(wall["report_llama_7b"])
        out["fvcore"] = fv if "failed" in fv else {
            "build_s": fv["build_s"], "fvcore_analysis_s": fv["fvcore_analysis_s"],
            "flops_agree": fv["flops_agree"], "peak_rss_gib": fv["peak_rss_gib"],
            "ratio": (fv["build_s"] + fv["fvcore_analysis_s"]) / report_s,
            "definition": "(CPU bfloat16 build of Llama-2-7B + fvcore FlopCountAnalysis at seq_len 64, "
                          "one run in a child process) / median wall of `archspec report` (goal >= 300)"}
    write("bench_import", out)
    for name, r in ratios.items():
        print(f"{name}: {r['wall']:.3f}x wall, {r['cpu']:.3f}x CPU of import torch "
              f"(modules: {', '.join(results[name]['heavy_modules_loaded']) or 'none'})")
    if "fvcore" in out and "ratio" in out["fvcore"]:
        print(f"fvcore build + analysis / report: {out['fvcore']['ratio']:.0f}x")


if __name__ == "__main__":
    main()
