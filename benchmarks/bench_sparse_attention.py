"""Sparse attention (archspec/ops/sparse_attention) against dense SDPA with a mask, on CPU.

    /work/venv/bin/python benchmarks/bench_sparse_attention.py [--seq-len 8192] [--repeats 3]

Writes benchmarks/results/sparse_attention_cpu.json. One torch thread, float32, batch 1,
H 8 query heads, H_kv 2 key/value heads, head_dim 64; q, k, v random (seeded), as the attention
op gets them (after projections and RoPE): the op alone is measured, not the projections.

Cases (each the fast path against the baseline on the same inputs and the same read set):
  * window: window 512, 4 attention sinks (global_first) and a global token every 1024
    positions (global_every, reading their whole prefix), band blocks of 64 query rows;
  * block_topk: blocks of 64, each query reads its own block and its top-8 earlier blocks.
Baseline: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
enable_gqa=True) with the boolean mask of the definition, [T, T] (window) or [1, H, T, T]
(block_topk, from the same selection, which is computed once outside the timing). The mask is
built once, outside the timing, and held during the runs (its bytes are reported). For
reference, SDPA with is_causal=True (full causal attention, no mask) is timed too.

Modes: `forward` (torch.no_grad) and `forward_backward` (a fixed random output gradient,
gradients for q, k and v). Each (case, mode, path) gets fresh inputs, one warm-up, then
--repeats timed runs (wall clock and process CPU time, medians reported: with one thread the
CPU time is the work, the wall clock adds waits for a core on a loaded machine), then one run under the profiler for memory:
the peak bytes live in torch's CPU allocator during the run above what was live before it (q,
k, v, the output gradient), from the profiler's allocation and free events; the mask the
baseline holds is added (`peak_with_mask_bytes`; the mask is reported on its own too). This
counts every tensor the path allocates, SDPA's internal float copy of a boolean mask included,
and does not depend on machine load or on what ran before in the process; process RSS is not
used (it also holds what the C library keeps after a free and the BLAS libraries' workspaces).
The outputs of the fast path and the baseline are compared (max abs difference, forward).
FLOPs: the fast path's FlopCounterMode count of the op against its analytic count (for
block_topk at the padded rows R its forward reported) and dense SDPA's 4 D H T^2; `attended`
is 4 D H times the pairs the mask keeps (plus, for block_topk, the gate).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, allocator_trace, environment, summary, write  # noqa: E402

sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from archspec.ops import sparse_attention as SA  # noqa: E402

H, HKV, D = 8, 2, 64
CASES = {
    "window": {"window": 512, "global_first": 4, "global_every": 1024, "global_reads": "prefix", "block_size": 64},
    "block_topk": {"block_size": 64, "topk": 8},
}
PATHS = ("fast", "sdpa_masked", "sdpa_causal")
PADDED_ROWS = {}  # block_topk: R of the latest fast forward
MODES = ("forward", "forward_backward")


def peak_allocated(fn) -> int:
    """Peak bytes live in torch's CPU allocator while `fn()` runs, above what was live when it
    started (_common.allocator_trace)."""
    return allocator_trace(fn)[0]


def inputs(t: int, grad: bool):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, t, D, generator=g)
    k = torch.randn(1, HKV, t, D, generator=g)
    v = torch.randn(1, HKV, t, D, generator=g)
    dout = torch.randn(1, H, t, D, generator=g) if grad else None
    return q, k, v, dout


def make_op(case: str, path: str, t: int, q, k):
    """(op(q, k, v) -> o, bytes of the mask the op holds). The fast paths compute what they
    need inside the op (block_topk: its selection); the masked baseline gets its mask (and the
    selection behind it) built beforehand, outside the timing."""
    cfg = CASES[case]
    if path == "sdpa_causal":
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)), 0
    if case == "window":
        plan = SA.plan_window(t, cfg["window"], cfg["block_size"], cfg["global_first"], cfg["global_every"],
                              cfg["global_reads"])
        if path == "fast":
            return (lambda q, k, v: SA.window_attention(q, k, v, plan)), 0
        mask = SA.window_mask(t, cfg["window"], cfg["global_first"], cfg["global_every"], cfg["global_reads"])
    else:
        if path == "fast":
            def fast(q, k, v):
                o, PADDED_ROWS["last"] = SA.block_topk_attention(q, k, v, cfg["block_size"], cfg["topk"])
                return o
            return fast, 0
        selection = SA.select_blocks(q.detach(), k.detach(), cfg["block_size"], cfg["topk"])
        mask = SA.block_topk_mask(selection, t, cfg["block_size"], (1, H))
    op = (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))
    return op, mask.numel() * mask.element_size()


def measure(case: str, path: str, mode: str, t: int, repeats: int) -> tuple[dict, torch.Tensor]:
    backward = mode == "forward_backward"
    q, k, v, dout = inputs(t, backward)
    if backward:
        q, k, v = (x.requires_grad_() for x in (q, k, v))
    op, mask_bytes = make_op(case, path, t, q, k)

    def run():
        if backward:
            for x in (q, k, v):
                x.grad = None
            o = op(q, k, v)
            o.backward(dout)
            return o.detach()
        with torch.no_grad():
            return op(q, k, v)

    run()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    for x in (q, k, v):
        x.grad = None
    gc.collect()
    peak = peak_allocated(run)
    result = {"timing": summary(times), "cpu_time": summary(cpu), "peak_allocated_bytes": peak, "mask_bytes": mask_bytes,
              "peak_with_mask_bytes": peak + mask_bytes,
              "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    out = run()
    if mode == "forward" and path == "fast":
        from torch.utils.flop_counter import FlopCounterMode
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            op(q, k, v)
        result["flopcountermode"] = counter.get_total_flops()
        if case == "block_topk":
            result["padded_rows"] = PADDED_ROWS["last"]
    return result, out


def analytic(case: str, t: int) -> dict:
    cfg = CASES[case]
    if case == "window":
        plan = SA.plan_window(t, cfg["window"], cfg["block_size"], cfg["global_first"], cfg["global_every"],
                              cfg["global_reads"])
        computed = plan.computed_pairs()
        attended = SA.attended_pairs(t, cfg["window"], cfg["global_first"], cfg["global_every"], cfg["global_reads"])
        return {"fast_computed_pairs_per_head": computed, "attended_pairs_per_head": attended,
                "fast_attention_flops": 4 * D * H * computed, "attended_flops": 4 * D * H * attended,
                "dense_sdpa_flops": 4 * D * H * t * t,
                "n_global": len(SA.global_positions(t, cfg["global_first"], cfg["global_every"]))}
    b, n_b = cfg["block_size"], math.ceil(t / cfg["block_size"])
    s = SA.selections_per_head(t, b, cfg["topk"])
    own = sum(n * (n + 1) // 2 for n in [min(t, (m + 1) * b) - m * b for m in range(n_b)])
    return {"selections_per_head": s, "attended_pairs_per_head": own + b * s,
            "attended_flops": 4 * D * H * (own + b * s),
            "gate_flops": 2 * D * H * (t - b) * (n_b - 1),
            "fast_attention_flops_without_tile_padding": 4 * D * (H * n_b * b * b + b * H * s) + 2 * D * H * (t - b) * (n_b - 1),
            "dense_sdpa_flops": 4 * D * H * t * t}


def block_topk_flops(t: int, rows: int) -> int:
    """What the fast block_topk op computes at R padded rows (all heads, one sequence)."""
    b, n_b = CASES["block_topk"]["block_size"], math.ceil(t / CASES["block_topk"]["block_size"])
    return 4 * D * (H * n_b * b * b + b * rows) + 2 * D * H * (t - b) * (n_b - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = args.seq_len
    cases = {}
    for case in CASES:
        runs, outs = {}, {}
        for mode in MODES:
            for path in PATHS:
                print(f"[{case}] {path} {mode}", flush=True)
                runs.setdefault(mode, {})[path], out = measure(case, path, mode, t, args.repeats)
                if mode == "forward":
                    outs[path] = out
                del out
                gc.collect()
        ratios = {}
        for mode in MODES:
            fast, masked = runs[mode]["fast"], runs[mode]["sdpa_masked"]
            ratios[mode] = {
                "time_sdpa_masked_over_fast": masked["timing"]["median_s"] / fast["timing"]["median_s"],
                "cpu_time_sdpa_masked_over_fast": masked["cpu_time"]["median_s"] / fast["cpu_time"]["median_s"],
                "peak_memory_sdpa_masked_over_fast": masked["peak_with_mask_bytes"] / fast["peak_with_mask_bytes"],
                "time_sdpa_causal_over_fast": runs[mode]["sdpa_causal"]["timing"]["median_s"] / fast["timing"]["median_s"],
            }
        flops = {**analytic(case, t), "fast_flopcountermode": runs["forward"]["fast"]["flopcountermode"]}
        if case == "block_topk":
            rows = runs["forward"]["fast"]["padded_rows"]
            flops.update(padded_rows=rows, fast_attention_flops_at_padded_rows=block_topk_flops(t, rows))
        cases[case] = {"config": CASES[case], "runs": runs, "ratios": ratios, "flops": flops,
                       "forward_max_abs_diff_fast_vs_sdpa_masked": (outs["fast"] - outs["sdpa_masked"]).abs().max().item()}
        del outs
        print(json.dumps({case: cases[case]["ratios"]}, indent=1), flush=True)
    write("sparse_attention_cpu", {
        "benchmark": "sparse attention op (fast path) vs dense SDPA with the same mask, CPU, float32",
        **environment(),
        "shapes": {"batch": 1, "seq_len": t, "n_heads": H, "n_kv_heads": HKV, "head_dim": D, "dtype": "float32"},
        "repeats": {"timed": args.repeats, "warmup": 1},
        "baseline": "F.scaled_dot_product_attention(q, k, v, attn_mask=<bool mask of the definition>, enable_gqa=True)",
        "memory": "peak bytes live in torch's CPU allocator during one run (profiler allocation events), "
                  "above what was live before it (q, k, v, the output gradient), plus the mask the "
                  "baseline holds",
        "cases": cases,
    })


if __name__ == "__main__":
    main()
