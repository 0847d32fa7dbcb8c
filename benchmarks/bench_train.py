"""Training throughput and memory on the CPU: `archspec train` in one process against
`torchrun --nproc_per_node 2` (FSDP2 over gloo) with the same global batch, in the same run.

    python benchmarks/bench_train.py [--spec specs/hydra-tiny.yaml] [--steps 30] [--repeats 2]

Indicative only on a shared 2-core machine: two processes split the same 2 cores, so no
speed-up is expected; what it shows is FSDP's overhead (gathers, reduce-scatters over gloo) and
each rank's memory. Per configuration: the median, min and max of tokens/s over the steps after
the first 3 (which pay one-off costs), and rank 0's peak resident set (VmHWM) at the end, from
OUT/metrics.jsonl. One intra-op thread per process (OMP_NUM_THREADS=1), so the two-process run
does not oversubscribe the cores. Writes benchmarks/results/train_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, write  # noqa: E402

SKIP = 3  # first steps: allocator growth, lazily built tables, first gathers


def run(spec: str, data: Path, out: Path, steps: int, nproc: int, batch: int, seq_len: int) -> dict:
    args = ["-m", "archspec", "train", spec, "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--batch-size", str(batch), "--seq-len", str(seq_len), "--warmup", "2", "--no-progress",
            "--eval-fraction", "0"]
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    steps_ = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [m["tokens_per_s"] for m in steps_ if "tokens_per_s" in m][SKIP:]
    return {"tokens_per_s": {"median": statistics.median(speeds), "min": min(speeds), "max": max(speeds),
                             "steps": len(speeds)},
            "rank0_peak_rss_bytes": steps_[-1]["peak_memory_bytes"],
            "final_loss": steps_[-1]["loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="specs/hydra-tiny.yaml")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2, help="runs of each configuration, alternated")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args()
    results: dict[str, list] = {"one_process": [], "two_processes_fsdp": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "docs.txt"
        data.write_bytes(b"".join(f.read_bytes() for f in sorted((ROOT / "docs").glob("*.md"))))
        for r in range(args.repeats):  # alternated, so the machine's noise falls on both alike
            for name, nproc in (("one_process", 1), ("two_processes_fsdp", 2)):
                out = Path(tmp) / f"{name}-{r}"
                results[name].append(run(args.spec, data, out, args.steps, nproc, args.batch_size, args.seq_len))
                print(name, results[name][-1], flush=True)
    one = statistics.median(r["tokens_per_s"]["median"] for r in results["one_process"])
    two = statistics.median(r["tokens_per_s"]["median"] for r in results["two_processes_fsdp"])
    write("train_cpu", {
        "what": "archspec train tokens/s and rank-0 peak RSS: one process vs two (FSDP2, gloo), same "
                "global batch", "spec": args.spec, "steps": args.steps, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "environment": environment(), "results": results,
        "two_over_one_tokens_per_s": two / one})
    print(f"tokens/s: one process {one:,.0f}, two processes {two:,.0f} (ratio {two / one:.2f})")


if __name__ == "__main__":
    main()
