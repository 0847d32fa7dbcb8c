"""MoM's dispatch as Triton kernels: torch custom ops `archspec::dispatch_*` with fake
implementations, autograd and FLOP formulas (conventions: archspec/ops/triton_support.py).

    archspec::dispatch_gather(x, token, order, offsets)             -> x[token]      [P, D]
    archspec::dispatch_gather_backward(grad, order, offsets)         -> dx            [N, D]
    archspec::dispatch_combine(o, weight, token, order, offsets)     -> out           [n_tokens, D]
    archspec::dispatch_combine_backward(grad, o, weight, token)      -> (do, dweight)

`order` and `offsets` are the inverse map token -> packed rows in CSR form (plan.py's `RowMap`):
the backward of the gather and the forward of the combine read, for each token, its rows
order[offsets[t]:offsets[t+1]] and sum them in that fixed order; no atomics, so every result is
bitwise reproducible. N (gather) and n_tokens (combine) are offsets.numel() - 1.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..triton_support import check_runnable, launch, register_flops

BLOCK_ROWS = 16   # packed rows per program (gather, combine backward)
MAX_BLOCK_D = 128  # columns per program: the next power of two of D, at most this


# --- launching ---------------------------------------------------------------------------------

def _acc(*tensors: Tensor):
    import triton.language as tl
    return tl.float64 if any(t.dtype == torch.float64 for t in tensors) else tl.float32


def _block_d(d: int) -> int:
    import triton
    return min(triton.next_power_of_2(max(d, 1)), MAX_BLOCK_D)


def _segment_sum(src: Tensor, weight: Tensor | None, order: Tensor, offsets: Tensor) -> Tensor:
    """out[t] = sum of (weight[r] *) src[r] over t's rows, in src's dtype."""
    n_tokens, d = offsets.shape[0] - 1, src.shape[1]
    if src.shape[0] == 0 or d == 0 or n_tokens == 0:
        return src.new_zeros(n_tokens, d)
    check_runnable(src)
    from .triton_kernels import segment_sum_kernel
    import triton
    src, order, offsets = src.contiguous(), order.contiguous(), offsets.contiguous()
    weight = None if weight is None else weight.contiguous()
    out = src.new_empty(n_tokens, d)
    block_d = _block_d(d)
    grid = (n_tokens, triton.cdiv(d, block_d))
    launch(segment_sum_kernel, grid, src, src if weight is None else weight, order, offsets, out, d,
                             HAS_WEIGHT=weight is not None,
                             ACC=_acc(src) if weight is None else _acc(src, weight), BLOCK_D=block_d)
    return out


# --- gather ------------------------------------------------------------------------------------

def _gather(x: Tensor, token: Tensor, order: Tensor, offsets: Tensor) -> Tensor:
    """x [N, D] -> x[token] [P, D]; order / offsets (the CSR of token) serve the backward."""
    p, d = token.shape[0], x.shape[1]
    out = x.new_empty(p, d)
    if p == 0 or d == 0:
        return out
    check_runnable(x)
    from .triton_kernels import gather_kernel
    import triton
    x, token = x.contiguous(), token.contiguous()
    block_d = _block_d(d)
    launch(gather_kernel, (triton.cdiv(p, BLOCK_ROWS), triton.cdiv(d, block_d)),
        x, token, out, p, d, BLOCK_R=BLOCK_ROWS, BLOCK_D=block_d)
    return out


# the launchers are plain functions (the gate runs them on meta tensors, where a custom op
# would run its fake implementation); the custom ops wrap them
dispatch_gather = torch.library.custom_op("archspec::dispatch_gather", mutates_args=())(_gather)


@dispatch_gather.register_fake
def _(x, token, order, offsets):
    return x.new_empty(token.shape[0], x.shape[1])


@torch.library.custom_op("archspec::dispatch_gather_backward", mutates_args=())
def dispatch_gather_backward(grad: Tensor, order: Tensor, offsets: Tensor) -> Tensor:
    """dx[t] = sum of grad[r] over the packed rows r of token t (CSR order)."""
    return _segment_sum(grad, None, order, offsets)


@dispatch_gather_backward.register_fake
def _(grad, order, offsets):
    return grad.new_empty(offsets.shape[0] - 1, grad.shape[1])


def _gather_setup(ctx, inputs, output):
    _, _, order, offsets = inputs
    ctx.save_for_backward(order, offsets)


def _gather_grad(ctx, grad):
    order, offsets = ctx.saved_tensors
    return dispatch_gather_backward(grad, order, offsets), None, None, None


dispatch_gather.register_autograd(_gather_grad, setup_context=_gather_setup)


# --- combine -----------------------------------------------------------------------------------

@torch.library.custom_op("archspec::dispatch_combine", mutates_args=())
def dispatch_combine(o: Tensor, weight: Tensor, token: Tensor, order: Tensor, offsets: Tensor) -> Tensor:
    """out[t] = sum of weight[r] o[r] over the packed rows r of token t -> [n_tokens, D]."""
    return _segment_sum(o, weight, order, offsets)


@dispatch_combine.register_fake
def _(o, weight, token, order, offsets):
    return o.new_empty(offsets.shape[0] - 1, o.shape[1])


def _combine_backward(grad: Tensor, o: Tensor, weight: Tensor, token: Tensor) -> tuple[Tensor, Tensor]:
    """do[r] = weight[r] grad[token[r]] (o's dtype); dweight[r] = <o[r], grad[token[r]]>
    (weight's dtype), both accumulated in float32."""
    p, d = o.shape
    do, dweight = o.new_empty(p, d), weight.new_empty(p)
    if p == 0:
        return do, dweight
    if d == 0:
        return do, dweight.zero_()
    check_runnable(o)
    from .triton_kernels import combine_backward_kernel
    import triton
    grad, o, weight, token = grad.contiguous(), o.contiguous(), weight.contiguous(), token.contiguous()
    launch(combine_backward_kernel, (triton.cdiv(p, BLOCK_ROWS),),
        grad, o, weight, token, do, dweight, p, d, ACC=_acc(grad, o, weight),
        BLOCK_R=BLOCK_ROWS, BLOCK_D=_block_d(d))
    return do, dweight


dispatch_combine_backward = torch.library.custom_op("archspec::dispatch_combine_backward",
                                                    mutates_args=())(_combine_backward)


@dispatch_combine_backward.register_fake
def _(grad, o, weight, token):
    return o.new_empty(o.shape), weight.new_empty(weight.shape)


def _combine_setup(ctx, inputs, output):
    o, weight, token, _, _ = inputs
    ctx.save_for_backward(o, weight, token)


def _combine_grad(ctx, grad):
    o, weight, token = ctx.saved_tensors
    do, dweight = dispatch_combine_backward(grad.to(o.dtype), o, weight, token)
    return do, dweight, None, None, None


dispatch_combine.register_autograd(_combine_grad, setup_context=_combine_setup)


# --- FLOPs -------------------------------------------------------------------------------------
# The gather (and its backward) moves data: 0 FLOPs. The combine's weighting and summing (and
# its backward's products and row dots) are elementwise `other` work in our accounting (MoM
# counts it as 2 V per assignment in `Flops.other`), which neither FlopCounterMode nor the
# fvcore comparison includes: both only measure matmul-like work (archspec/flopcount.py). The
# formulas return 0 so the ops are registered (fvcore does not report them as unsupported) and
# the measured count stays comparable with the accounting's matmul FLOPs.

def _no_matmul_flops(*args) -> int:
    return 0


for _op in (dispatch_gather, dispatch_gather_backward, dispatch_combine, dispatch_combine_backward):
    register_flops(_op, _no_matmul_flops)


# --- launches for the ahead-of-time gate (`archspec kernels`) ----------------------------------

def kernel_launches(d: int, dtype: torch.dtype, *, tokens: int = 4096, rows: int | None = None,
                    gather: bool = True, combine: bool = True,
                    weight_dtype: torch.dtype | None = None) -> list:
    """The Triton launches (triton_support.KernelLaunch) of a gather of `rows` packed rows
    (default 2 per token) from `tokens` tokens of width `d` and its backward (`gather`), and of
    a weighted combine back and its backward (`combine`), `dtype` rows, weights in
    `weight_dtype` (default dtype): the launchers run on meta tensors and record."""
    from ..triton_support import recorded_launches
    rows = 2 * tokens if rows is None else rows
    meta = dict(device="meta")
    x = torch.empty(tokens, d, dtype=dtype, **meta)
    packed = torch.empty(rows, d, dtype=dtype, **meta)
    token = torch.empty(rows, dtype=torch.int64, **meta)
    order, offsets = torch.empty_like(token), torch.empty(tokens + 1, dtype=torch.int64, **meta)
    weight = torch.empty(rows, dtype=weight_dtype or dtype, **meta)
    with recorded_launches() as found:
        if gather:
            _gather(x, token, order, offsets)
            _segment_sum(packed, None, order, offsets)  # its backward
        if combine:
            _segment_sum(packed, weight, order, offsets)
            _combine_backward(x, packed, weight, token)
    return found


def gate_launches() -> list:
    """Launches at the extremes of what the kernels take: one column (BLOCK_D 1) and rows
    wider than a program's MAX_BLOCK_D columns (the column loop and masks), float32, bfloat16
    and float64 (accumulated in float64)."""
    found = []
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        found += kernel_launches(1, dtype)
        found += kernel_launches(8 * MAX_BLOCK_D + 1, dtype)
    return found
