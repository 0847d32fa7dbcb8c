"""archspec's chunked gated delta rule against fla-core's plain PyTorch chunk form, on CPU.

    python benchmarks/bench_chunk_fla.py [--rounds 15] [--seq-len 2048] [--heads 4]
        [--head-dim 256] [--chunk 64] [--fla-dir benchmarks/.fla] [--also-rev REV ...]
        [--name chunk_fla_cpu] [--profile]

Writes benchmarks/results/<name>.json. One torch thread, float32, batch 1, the gated_delta op
inputs of bench_recurrent.py (q, k l2-normalised, MoM's decay range, beta = sigmoid(N(0, 1))).

Contenders, on the same input tensors:
  * `archspec`: archspec.ops.linear_attention.chunk_rule("gated_delta", ..., chunk_size=C), the
    working tree's code;
  * `fla`: fla-core's `naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=C)` from
    fla/ops/gated_delta_rule/naive.py, imported by file path from `--fla-dir` (fetched there as
    bench_recurrent.py does, with `pip download fla-core`; never installed into the environment);
  * `archspec@REV` for each `--also-rev`: chunk.py as committed at REV (`git show`), imported
    beside the current package (it shares the current common.py): a before/after in one run.

Modes: `forward` (under torch.no_grad) and `fwd_bwd` (forward, then backward from a fixed random
output gradient to all five inputs; their gradients reset to None before each run).

Timing: one warm-up of every (contender, mode), then `--rounds` rounds; a round runs every
(contender, mode) once, in an order rotated each round, so that the contenders share the
machine's load. Each run records process CPU time (with one thread, the work) and wall time
(which adds waits for a core on a loaded machine). Reported per (contender, mode): median,
min, max and all runs; and per baseline (fla, each REV) the ratio baseline time / archspec time
(> 1: archspec is faster) as the ratio of the medians and the median, min and max of the
per-round ratios (the two runs of a round are seconds apart).

Memory (exact, load independent): bytes live in torch's CPU allocator, from the profiler's
allocation and free events, above what was live before the call: `forward_peak` (no_grad),
`saved_for_backward` (live after a forward with autograd on, the output included: what the
graph keeps until the backward) and `fwd_bwd_peak`.

Agreement: outputs and the five input gradients of every contender against archspec's, and
the outputs against a float64 recurrent_rule (max |a - b| / max |b|).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, allocator_trace, environment, summary, write  # noqa: E402
from bench_recurrent import fetch_fla, dist_version, load_fla_naive, op_inputs, rel_diff  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(ROOT))
from archspec.ops import linear_attention as LA  # noqa: E402

LEAVES = ("q", "k", "v", "g", "beta")
MODES = ("forward", "fwd_bwd")


def chunk_rule_at(rev: str):
    """chunk_rule as committed at `rev`, imported as a sibling module of the current package."""
    source = subprocess.run(["git", "show", f"{rev}:archspec/ops/linear_attention/chunk.py"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "chunk.py"
    path.write_text(source)
    name = f"archspec.ops.linear_attention._chunk_{rev.replace('/', '_').replace('~', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.chunk_rule


def runners(fn, inp: dict) -> dict:
    """The two modes of one contender `fn(q, k, v, g, beta) -> o`."""
    args = [inp[x] for x in LEAVES]

    def forward():
        with torch.no_grad():
            return fn(*args)

    def fwd_bwd():
        for t in args:
            t.grad = None
        o = fn(*args)
        o.backward(inp["grad"])
        return o.detach()

    return {"forward": forward, "fwd_bwd": fwd_bwd}


def memory(fn, inp: dict, run: dict) -> dict:
    args = [inp[x] for x in LEAVES]
    for t in args:
        t.grad = None
    kept = []
    _, saved = allocator_trace(lambda: kept.append(fn(*args)))  # output + autograd graph
    kept.clear()
    fwd_peak, _ = allocator_trace(run["forward"])
    for t in args:
        t.grad = None
    fb_peak, _ = allocator_trace(run["fwd_bwd"])
    for t in args:
        t.grad = None
    return {"forward_peak": fwd_peak, "saved_for_backward": saved, "fwd_bwd_peak": fb_peak}


def time_rounds(runs: dict, rounds: int) -> tuple[dict, list]:
    """runs: {(contender, mode): fn}. One warm-up each, then `rounds` rotated rounds."""
    keys = list(runs)
    for key in keys:
        runs[key]()
    times = {key: {"cpu": [], "wall": []} for key in keys}
    loads = []
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            w0, c0 = time.perf_counter(), time.process_time()
            runs[key]()
            times[key]["wall"].append(time.perf_counter() - w0)
            times[key]["cpu"].append(time.process_time() - c0)
        loads.append(round(os.getloadavg()[0], 2))
        print(f"round {r + 1}/{rounds} done, load {loads[-1]}", flush=True)
    return times, loads


def ratios(base: dict, ours: dict) -> dict:
    """baseline time / archspec time, > 1: archspec faster."""
    out = {}
    for clock in ("cpu", "wall"):
        per_round = [b / a for b, a in zip(base[clock], ours[clock])]
        out[clock] = {"of_medians": statistics.median(base[clock]) / statistics.median(ours[clock]),
                      "per_round_median": statistics.median(per_round),
                      "per_round_min": min(per_round), "per_round_max": max(per_round)}
    return out


def profile_table(run, label: str) -> None:
    from torch.profiler import ProfilerActivity, profile
    run()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    print(f"--- {label} (profiler overhead included)")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total",
                                                             row_limit=20))


def git_state() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    path = "archspec/ops/linear_attention"
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_changes_in_benchmarked_code": git("status", "--porcelain", "--", path)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=256, help="K = V")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--fla-dir", default=str(ROOT / "benchmarks" / ".fla"))
    ap.add_argument("--also-rev", nargs="*", default=[],
                    help="git revisions whose chunk.py also runs (before/after in one run)")
    ap.add_argument("--name", default="chunk_fla_cpu")
    ap.add_argument("--profile", action="store_true",
                    help="print a torch.profiler table per contender and mode, then exit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import bench_recurrent
    bench_recurrent.H, bench_recurrent.K = args.heads, args.head_dim  # op_inputs reads these
    env = environment()
    side = Path(args.fla_dir).resolve()
    try:
        setup = fetch_fla(side)
        naive = load_fla_naive(side)
    except Exception as exc:  # noqa: BLE001 - the comparison needs fla
        sys.exit(f"fla-core not available in {side} ({type(exc).__name__}: {exc}); fetch it where "
                 "pip reaches PyPI: python benchmarks/bench_kernels.py --fetch-fla")
    c = args.chunk

    def archspec_at(chunk_rule):
        return lambda q, k, v, g, b: chunk_rule("gated_delta", q, k, v, g=g, beta=b, chunk_size=c)[0]

    contenders = {"archspec": archspec_at(LA.chunk_rule),
                  "fla": lambda q, k, v, g, b: naive(q, k, v, g, b, chunk_size=c)[0],
                  **{f"archspec@{rev}": archspec_at(chunk_rule_at(rev)) for rev in args.also_rev}}
    inp = op_inputs("gated_delta", args.seq_len)
    runs = {name: runners(fn, inp) for name, fn in contenders.items()}
    if args.profile:
        for name, run in runs.items():
            for mode in MODES:
                profile_table(run[mode], f"{name} {mode}")
        return

    print("agreement and memory", flush=True)
    results = {}
    for name, run in runs.items():
        o = run["fwd_bwd"]()
        results[name] = (o, [inp[x].grad.clone() for x in LEAVES])
    with torch.no_grad():
        ref = LA.recurrent_rule("gated_delta", *(inp[x].double() for x in ("q", "k", "v")),
                                g=inp["g"].double(), beta=inp["beta"].double())[0]
    o_ours, g_ours = results["archspec"]
    agreement = {"definition": "max |a - b| / max |b|",
                 "output_vs_float64_recurrent": {n: rel_diff(o, ref) for n, (o, _) in results.items()}}
    for name, (o, grads) in results.items():
        if name != "archspec":
            agreement[f"{name}_vs_archspec"] = {
                "output": rel_diff(o, o_ours),
                "grads": {x: rel_diff(a, b) for x, a, b in zip(LEAVES, grads, g_ours)}}
    del results
    mem = {name: memory(contenders[name], inp, runs[name]) for name in runs}

    load_before = list(os.getloadavg())
    times, loads = time_rounds({(n, m): runs[n][m] for n in runs for m in MODES}, args.rounds)
    load_after = list(os.getloadavg())
    timings = {n: {m: {"cpu_s": summary(times[(n, m)]["cpu"]), "wall_s": summary(times[(n, m)]["wall"]),
                       "tokens_per_cpu_s": args.seq_len / statistics.median(times[(n, m)]["cpu"])}
                   for m in MODES} for n in runs}
    ratio = {n: {m: ratios(times[(n, m)], times[("archspec", m)]) for m in MODES}
             for n in runs if n != "archspec"}
    for name in ratio:
        ratio[name]["memory"] = {k: mem[name][k] / mem["archspec"][k] for k in mem["archspec"]}
    write(args.name, {
        "benchmark": "archspec chunk_rule vs fla-core naive_chunk_gated_delta_rule, gated_delta, CPU",
        **env,
        "git": git_state(),
        "command": "python benchmarks/bench_chunk_fla.py " + " ".join(sys.argv[1:]),
        "fla": {"dir": str(side), "setup": setup, "fla_core_version": dist_version(side, "fla_core"),
                "einops_version": dist_version(side, "einops")},
        "shapes": {"batch": 1, "seq_len": args.seq_len, "heads": args.heads, "k_dim": args.head_dim,
                   "v_dim": args.head_dim, "chunk_size": c, "dtype": "float32", "torch_threads": 1},
        "rounds": args.rounds,
        "load_average_1_5_15min_before_timing": load_before,
        "load_average_1min_after_each_round": loads,
        "load_average_1_5_15min_after_timing": load_after,
        "timings": timings,
        "ratio": {"definition": "baseline time / archspec time (> 1: archspec faster); of_medians "
                                "from the medians, per_round_* over the rounds; memory: baseline "
                                "bytes / archspec bytes",
                  **ratio},
        "memory_bytes": mem,
        "agreement": agreement,
    })


if __name__ == "__main__":
    main()
