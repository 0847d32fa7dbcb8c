"""Triton kernels of MoM's dispatch (the only module of archspec.ops.dispatch importing triton;
triton_dispatch.py imports it when a kernel first runs). All are deterministic and atomics-free:
every output element is written by exactly one program, and every sum runs in a fixed order.

Tensors are contiguous and row-major ([rows, D]); indices are int64, so row offsets never
overflow int32. Accumulation is in `ACC` (float32, float64 for float64 inputs).

  gather_kernel            out[r] = x[token[r]]                           (row copy)
  segment_sum_kernel       out[t] = sum_{i in [offsets[t], offsets[t+1])} w[order[i]] src[order[i]]
                           (CSR segmented row sum: combine forward, gather backward without w)
  combine_backward_kernel  do[r] = w[r] dout[token[r]];  dweight[r] = <o[r], dout[token[r]]>
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gather_kernel(x_ptr, token_ptr, out_ptr, P, D,
                  BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (cdiv(P, BLOCK_R), cdiv(D, BLOCK_D)): a [BLOCK_R, BLOCK_D] tile of out."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < P
    mask = rmask[:, None] & (cols < D)[None, :]
    src = tl.load(token_ptr + rows, mask=rmask, other=0)
    vals = tl.load(x_ptr + src[:, None] * D + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], vals, mask=mask)


@triton.jit
def segment_sum_kernel(src_ptr, weight_ptr, order_ptr, offsets_ptr, out_ptr, D,
                       HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (n_tokens, cdiv(D, BLOCK_D)): one token's BLOCK_D columns, its rows summed in CSR
    order (ascending packed row: the argsort is stable). A token without rows gets zeros."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    start = tl.load(offsets_ptr + t)
    end = tl.load(offsets_ptr + t + 1)
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for i in range(start, end):
        r = tl.load(order_ptr + i)
        v = tl.load(src_ptr + r * D + cols, mask=cmask, other=0.0).to(ACC)
        if HAS_WEIGHT:
            v = v * tl.load(weight_ptr + r).to(ACC)
        acc += v
    tl.store(out_ptr + t * D + cols, acc.to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def combine_backward_kernel(dout_ptr, o_ptr, weight_ptr, token_ptr, do_ptr, dweight_ptr, P, D,
                            ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Grid (cdiv(P, BLOCK_R),): BLOCK_R packed rows, looping over D in BLOCK_D columns; the
    row dot accumulates per column block, then across blocks in order."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < P
    tok = tl.load(token_ptr + rows, mask=rmask, other=0)
    w = tl.load(weight_ptr + rows, mask=rmask, other=0.0).to(ACC)
    dot = tl.zeros([BLOCK_R], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        g = tl.load(dout_ptr + tok[:, None] * D + cols[None, :], mask=mask, other=0.0).to(ACC)
        ov = tl.load(o_ptr + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(ACC)
        tl.store(do_ptr + rows[:, None] * D + cols[None, :],
                 (g * w[:, None]).to(do_ptr.dtype.element_ty), mask=mask)
        dot += tl.sum(g * ov, axis=1)
    tl.store(dweight_ptr + rows, dot.to(dweight_ptr.dtype.element_ty), mask=rmask)
