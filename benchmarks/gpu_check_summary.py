"""The last stage of benchmarks/gpu_check.sh: gathers the stages' exit codes and the two JSONs
(check_kernels.json, bench_kernels.json) into gpu_check.json and prints a short table.
Exits 1 when a stage failed, a check failed or a benchmark section raised."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ms(r: dict | None) -> str:
    return f"{r['median_s'] * 1e3:9.3f}" if r and "median_s" in r else f"{'-':>9}"


def frac(v) -> str:
    return f"{v:8.2f}" if v is not None else f"{'-':>8}"


def rate(r: dict | None, key: str, unit: float, name: str) -> str:
    v = (r or {}).get(key)
    return f"{v / unit:7.1f} {name:<4}" if v is not None else f"{'-':>12}"


def x(v) -> str:
    return f"{v:6.2f}x" if v is not None else f"{'-':>7}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--stages", required=True, help="file of 'name exit_code seconds' lines")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    stages, total = {}, None
    for line in Path(args.stages).read_text().split("\n"):
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total":
            total = int(parts[1])
        elif len(parts) == 3:
            stages[parts[0]] = {"exit": int(parts[1]), "seconds": int(parts[2]), "timed_out": parts[1] in ("124", "137")}
    # only the files of stages that ran in this call (a folder may hold an earlier run's)
    check = load(out / "check_kernels.json") if "check" in stages else None
    bench = load(out / "bench_kernels.json") if "bench" in stages else None
    problems = [f"stage {n} exited {s['exit']}" for n, s in stages.items() if s["exit"]]
    if check is None and "check" in stages:
        problems.append("check_kernels.json missing or unreadable")
    if bench is None and "bench" in stages:
        problems.append("bench_kernels.json missing or unreadable")
    failed = (check or {}).get("summary", {}).get("failed", [])
    problems += [f"check {n} failed" for n in failed]
    not_run = (check or {}).get("summary", {}).get("not_run", [])
    if not_run:
        problems.append(f"{len(not_run)} checks did not run (time limit?): {', '.join(not_run[:5])}"
                        + (" ..." if len(not_run) > 5 else ""))
    problems += [f"bench section {n} raised" for n in (bench or {}).get("errors", [])]
    summary = {
        "what": "benchmarks/gpu_check.sh: kernel checks at real sizes, then the kernel benchmarks",
        "mode": "smoke (cpu, interpreter, tiny sizes: timings mean nothing)" if args.smoke else "gpu",
        "versions": (check or bench or {}).get("versions"),
        "stages": stages, "total_s": total, "passed": not problems, "problems": problems,
        "checks": (check or {}).get("summary"),
        "fla": (bench or {}).get("fla"),
        "files": sorted(p.name for p in out.iterdir() if p.is_file()) + ["gpu_check.json"],
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")

    # --- the table, printed last -------------------------------------------------------------
    v = summary["versions"] or {}
    print(f"\n== gpu_check {summary['mode']}: {v.get('gpu', 'cpu')}, torch {v.get('torch')}, "
          f"triton {v.get('triton')}, commit {str(v.get('git_commit'))[:10]}")
    print("stages: " + ", ".join(f"{n} {s['exit']} ({s['seconds']}s)" for n, s in stages.items())
          + f"; total {total}s")
    if check:
        c = check["summary"]
        worst = {}
        for r in check["checks"]:
            if "max_error" in r:
                key = r["name"].split("/")[0] + "/" + r.get("dtype", "")
                worst[key] = max(worst.get(key, 0.0), r["max_error"] / r["bound"] if r["bound"] else r["max_error"])
        print(f"checks: {c['passed']} of {c['checks']} passed" + (f"; FAILED: {', '.join(c['failed'])}" if c["failed"] else "")
              + (f"; {len(c.get('not_run', []))} not run" if c.get("not_run") else ""))
        if worst:
            print("  worst error / bound: " + ", ".join(f"{k} {w:.2f}" for k, w in sorted(worst.items())))
    if bench:
        ce = bench.get("ceilings", {})
        if "copy_bytes_per_s" in ce:
            print(f"ceilings: copy {ce['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul "
                  f"{ce.get('matmul_bf16_flops_per_s', 0) / 1e12:.0f} TFLOP/s")
        print(f"fla: {'fla-core ' + str(bench['fla'].get('version')) if bench['fla'].get('available') else 'skipped: ' + str(bench['fla'].get('reason'))}")
        print(f"{'benchmark (ms, median)':38s} {'triton':>9} {'baseline':>9} {'ref':>9} {'vs base':>7} {'rate':>12} {'of floor':>8}")
        for name, res in (bench.get("norms") or {}).items():
            if not isinstance(res, dict) or "error" in res:
                continue
            for mode in ("fwd", "fwd_bwd"):
                r = res[mode]
                base = r.get("torch_rms_norm")
                print(f"{'norm ' + name + ' ' + mode:38s} {ms(r.get('archspec_triton'))} {ms(base)} "
                      f"{ms(r.get('archspec_reference'))} {x(r['speedup_vs_torch_rms_norm'] if base else r['speedup_vs_reference'])} "
                      f"{rate(r.get('archspec_triton'), 'bytes_per_s', 1e9, 'GB/s')} "
                      f"{frac(r.get('archspec_triton', {}).get('fraction_of_floor'))}")
        for section, base_name in (("la_chunk", "fla_chunk_gated_delta_rule"), ("mom_layer", "fla_MomAttention")):
            for shape, r in (bench.get(section) or {}).items():
                if not isinstance(r, dict) or "error" in r:
                    continue
                print(f"{section + ' ' + shape + ' fwd+bwd':38s} {ms(r.get('archspec_triton'))} {ms(r.get(base_name))} "
                      f"{ms(r.get('archspec_reference'))} {x(r.get('speedup_vs_fla'))} "
                      f"{rate(r.get('archspec_triton'), 'tflops', 1, 'TF/s')} "
                      f"{frac(r.get('archspec_triton', {}).get('fraction_of_floor'))}")
        print("  baseline: torch F.rms_norm (norms; the reference for gated), fla (la_chunk, mom_layer); "
              "vs base = baseline / triton time; rate: triton's GB/s (norms) or TFLOP/s; of floor = floor / triton time")
    print(("PASSED" if not problems else "FAILED: " + "; ".join(problems)) + f"  -> {out}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
