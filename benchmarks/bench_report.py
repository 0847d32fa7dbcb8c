"""`archspec report` on Llama-2-7B (end to end, in a subprocess) against fvcore's
FlopCountAnalysis on the same model built on CPU in bfloat16.

    /work/venv/bin/python benchmarks/bench_report.py [--seq-len 64] [--repeats 5]

Writes benchmarks/results/bench_report.json. The fvcore side runs in a child process so that a
model that does not fit in memory is reported (with the reason) instead of killing the
benchmark; it then falls back to the same spec with fewer layers, largest first.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, summary, timed, write  # noqa: E402

SPEC = ROOT / "specs" / "llama-2-7b.yaml"
ARCHSPEC = [sys.executable, "-m", "archspec"]
FALLBACK_LAYERS = (16, 8, 4, 2)


def time_report(seq_len: int, repeats: int) -> dict:
    cmd = [*ARCHSPEC, "report", str(SPEC), "--seq-len", str(seq_len), "--format", "json"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)  # warm-up (page cache, .pyc)

    def once():
        return subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, text=True)
    times, proc = timed(once, repeats)
    return {"command": " ".join(["python -m archspec", *cmd[3:]]), **summary(times),
            "output_bytes": len(proc.stdout)}


def fvcore_child(spec_path: str, seq_len: int) -> dict:
    """In the child: build on CPU in bfloat16, run fvcore, report timings and counts."""
    import torch

    import archspec
    from archspec.flopcount import analytic_comparable, fvcore_analysis
    spec = archspec.load(spec_path)
    t0 = time.perf_counter()
    model = archspec.build(spec, device="cpu", dtype="bfloat16", seed=0).eval()
    build_s = time.perf_counter() - t0
    tokens = torch.randint(0, spec.model.vocab_size, (1, seq_len))
    t0 = time.perf_counter()
    result = fvcore_analysis(model, tokens)
    fvcore_s = time.perf_counter() - t0
    analytic = analytic_comparable(spec, seq_len, batch=1)
    return {"spec": spec.name, "n_sublayers": len(spec.sublayers),
            "parameters": sum(p.numel() for p in model.parameters()),
            "build_s": build_s, "fvcore_analysis_s": fvcore_s,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "fvcore_macs": result.flops // 2, "fvcore_flops": result.flops,
            "fvcore_by_operator_macs": result.by_operator,
            "fvcore_unsupported_ops": dict(result.unsupported),
            "fvcore_skipped_matmul_ops": result.skipped_matmul_ops,
            "analytic_dense_matmul_attention_flops": analytic,
            "flops_agree": analytic == result.flops}


def run_fvcore(spec_path: Path, seq_len: int) -> dict:
    code = ("import json, sys; sys.path.insert(0, %r); import bench_report as b; "
            "print('RESULT' + json.dumps(b.fvcore_child(%r, %d)))"
            % (str(Path(__file__).resolve().parent), str(spec_path), seq_len))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    reason = f"exit status {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode < 0 else "")
    return {"failed": True, "reason": reason + ": " + " | ".join(tail)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    report = time_report(args.seq_len, args.repeats)
    attempts = []
    fv = run_fvcore(SPEC, args.seq_len)
    attempts.append({"spec": "specs/llama-2-7b.yaml", **({"ok": True} if "failed" not in fv else fv)})
    tmp = tempfile.TemporaryDirectory()
    for layers in FALLBACK_LAYERS:
        if "failed" not in fv:
            break
        path = Path(tmp.name) / f"llama-2-7b-{layers}l.yaml"
        path.write_text(f"extends: {SPEC}\nmodel: {{name: llama-2-7b-{layers}-layers}}\n"
                        f"layout: \"(attn mlp) x {layers}\"\n")
        fv = run_fvcore(path, args.seq_len)
        attempts.append({"spec": f"llama-2-7b, {layers} layers", **({"ok": True} if "failed" not in fv else fv)})
    if "failed" in fv:
        ratio = None
    else:
        ratio = {"value": fv["fvcore_analysis_s"] / report["median_s"],
                 "definition": "fvcore FlopCountAnalysis time / `archspec report` median time",
                 "baseline": "`archspec report` end to end in a subprocess (interpreter start, "
                             "imports, load, validate, accounting, JSON output)",
                 "with_build": {"value": (fv["build_s"] + fv["fvcore_analysis_s"]) / report["median_s"],
                                "definition": "(CPU bfloat16 build + fvcore analysis) / report median"}}
    write("bench_report", {
        "benchmark": "archspec report vs fvcore FlopCountAnalysis, Llama-2-7B",
        **environment(),
        "shapes": {"spec": "specs/llama-2-7b.yaml", "batch": 1, "seq_len": args.seq_len,
                   "fvcore_dtype": "bfloat16", "fvcore_device": "cpu"},
        "timings": {"archspec_report": report,
                    "fvcore": None if "failed" in fv else
                    {"build_s": fv["build_s"], "fvcore_analysis_s": fv["fvcore_analysis_s"]}},
        "ratio": ratio,
        "flops": None if "failed" in fv else {
            k: fv[k] for k in ("spec", "parameters", "analytic_dense_matmul_attention_flops",
                               "fvcore_flops", "flops_agree", "fvcore_by_operator_macs",
                               "fvcore_unsupported_ops", "fvcore_skipped_matmul_ops",
                               "peak_rss_gib")},
        "fvcore_attempts": attempts,
        "notes": "FLOPs: 1 FLOP = one multiply or add; fvcore counts a MAC as one, so fvcore_flops "
                 "= 2 x its count. The analytic side is matmul + attention under "
                 "FlopConvention('dense') (all T^2 pairs, as fvcore's SDPA handle counts); "
                 "elementwise work is excluded on both sides. fvcore gets an SDPA handle from "
                 "archspec.flopcount (it has none). The build time includes weight "
                 "initialisation (normal_) of every parameter; the fvcore time is one "
                 "TorchScript trace plus a bfloat16 forward on CPU. Single runs for fvcore "
                 "(minutes each); the report is the median of `repeats` runs after a warm-up.",
    })


if __name__ == "__main__":
    main()
