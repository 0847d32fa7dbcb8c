"""The chunked linear-attention rules as Triton kernels (triton_kernels.py), exposed as torch
custom ops with fake implementations, a backward op, and FLOP formulas. Same API and results
(up to rounding) as chunk.py's `chunk_rule`, the reference they are tested against.

    triton_chunk_rule(rule, q, k, v, *, g, beta, scale, initial_state, output_final_state,
                      cu_seqlens, chunk_size=64) -> (o [B, T, H, V] in v's dtype, final state or None)

Rules: linear, gla, delta, gated_delta. g arrives as float32 (a log decay; rounding it to bf16
would round its cumsums), and dg is float32.
Every batch runs as packed sequences: a fixed-length [B, T] batch is B sequences of T rows.
A chunk never spans two sequences; the last chunk of each is partial (masked rows), never padded
in memory, so a group of 1 token costs one chunk and an empty sequence none.

Ops (all in namespace `archspec`):
    la_chunk_fwd(q, k, v, g?, beta?, h0?, cu_seqlens, chunk_indices, chunk_offsets, rule, scale,
                 chunk_size, n_chunks, output_final_state) -> (o, ht, h, X, T, W)
    la_chunk_bwd(q, k, v, g?, beta?, h0?, cu_seqlens, chunk_indices, chunk_offsets, h, X, T, W,
                 do, dht?, rule, scale, chunk_size, n_chunks) -> (dq, dk, dv, dg, dbeta, dh0)
h (the state entering each chunk, [n_chunks, H, K, V] fp32), X (the values each chunk writes)
and T ((I + A)^-1 per chunk, delta rules) are saved for the backward; gla saves its scores P in
T's place and its chunk-local cumsums G in W's; absent ones are empty.

FLOPs (registered for both counters): the forward op counts exactly `chunk_flops(rule, ...)`'s
matmul term, the figure the component accounting uses (so a model measures the same with the
kernels as with the reference). It counts the algorithm: the kernel forms (I + A)^-1 with
squarings where the reference substitutes, which is more arithmetic at the same count. The
backward op counts 2x the forward (the standard estimate; the kernels recompute P).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..triton_support import check_runnable, install_flop_formulas, interpreting, launch, register_flops
from .common import check_chunk_size, check_inputs, check_offsets, resolve_scale
from .costs import KERNEL_DTYPE_NAMES, WITH_BETA, chunk_flops, kernels_unsupported

GLA_SUB_CHUNK = 16  # gla's sub-chunk (triton_kernels.py); tl.dot needs >= 16
BLOCK_K = 64  # key columns per block
BLOCK_V = 64  # value columns per program outside the state passes
BLOCK_K_STATE = 128  # key rows per state tile in the state passes (MAX_HEAD_DIM / 128 = 2 tiles)
STATE_TILE = 4096  # fp32 elements of state one state-pass program holds (NK * BK * BV)
BLOCK_BWD = 32  # key and value columns per block in the backward's per-chunk kernels
KERNEL_DTYPES = tuple(getattr(torch, name) for name in KERNEL_DTYPE_NAMES)
# (warps, pipeline stages) per kernel, checked by `archspec kernels --compile` for sm_80 and
# sm_90: 4 warps hold a few [64, 64] fp32 tiles per thread in registers; the programs that hold
# many (the state passes: NK state tiles; the backward's accumulators) take 8 warps, twice the
# registers. The sequential state passes take 1 stage: pipelining their loads would keep a
# second copy of every block they read per chunk in shared memory, past sm_80's limit.
LAUNCH = {"state_fwd_kernel": (8, 1), "state_bwd_kernel": (8, 1), "dqk_bwd_kernel": (8, 1),
          "wy_bwd_kernel": (8, 1), "wy_inverse_bwd_kernel": (8, 1), "gla_chunk_bwd_kernel": (8, 2), "wy_fwd_kernel": (8, 2),
          "output_fwd_kernel": (8, 2)}
DEFAULT_LAUNCH = (4, 2)


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


@dataclass(frozen=True)
class Blocks:
    """Block sizes of one launch family: BT rows per chunk, keys in NK blocks of BK, values in
    blocks of BV (BV_STATE in the state passes, which hold NK state tiles of [BK, BV_STATE])."""

    BT: int
    BK: int
    NK: int
    BV: int
    BK_STATE: int
    NK_STATE: int
    BV_STATE: int
    BK_BWD: int
    NK_BWD: int
    BV_BWD: int


def blocks(k_dim: int, v_dim: int, chunk_size: int) -> Blocks:
    bk = min(BLOCK_K, _pow2(k_dim))
    nk = -(-k_dim // bk)
    bv = min(BLOCK_V, _pow2(v_dim))
    bk_state = min(BLOCK_K_STATE, _pow2(k_dim))
    nk_state = -(-k_dim // bk_state)  # <= 2: the state passes hold two tiles at most
    assert nk_state <= 2, f"K={k_dim} needs {nk_state} state tiles; MAX_HEAD_DIM bounds it to 2"
    bv_state = max(16, min(bv, STATE_TILE // (nk_state * bk_state)))
    bk_bwd = min(BLOCK_BWD, _pow2(k_dim))
    return Blocks(chunk_size, bk, nk, bv, bk_state, nk_state, bv_state,
                  bk_bwd, -(-k_dim // bk_bwd), min(BLOCK_BWD, bv))


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    """The dots' operand type (triton_kernels._dot). 16-bit inputs: operands rounded to the
    inputs' own type, as fla does (tensor cores at full rate; the rounding of fp32 intermediates
    such as the state costs ~2^-9 relative, inside the bf16 tolerance). fp32 inputs: tf32x3,
    three tf32 products that keep fp32 accuracy on the tensor cores."""
    prec = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "tf32x3")
    if prec != "tf32x3" and device.type == "cpu" and interpreting():
        return prec + "_emulated"  # the interpreter's own 16-bit dots are wrong (_round_bf16)
    return prec


def _operand_dtype(dtype: torch.dtype) -> torch.dtype:
    """How W and X (delta rules) are stored: they serve only as dot operands, which round them
    to 16 bits for 16-bit inputs anyway (half the memory and the loads)."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def _inverse_precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _empty(ref: torch.Tensor) -> torch.Tensor:
    return ref.new_empty(0, dtype=torch.float32)


def _opt(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is not None and t.numel() else None


def _run(kernel, grid, *args, **constexprs) -> None:
    warps, stages = LAUNCH.get(kernel.fn.__name__, DEFAULT_LAUNCH)
    launch(kernel, grid, *args, num_warps=warps, num_stages=stages, **constexprs)


# --- forward op ---------------------------------------------------------------------------------

def _la_chunk_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
                  beta: torch.Tensor | None, h0: torch.Tensor | None, cu_seqlens: torch.Tensor,
                  chunk_indices: torch.Tensor, chunk_offsets: torch.Tensor, rule: str, scale: float,
                  chunk_size: int, n_chunks: int, output_final_state: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton_kernels as tk
    total, h, k_dim = q.shape
    v_dim = v.shape[-1]
    n_seq = cu_seqlens.numel() - 1
    delta, has_g, gla = rule in WITH_BETA, g is not None, rule == "gla"
    bl = blocks(k_dim, v_dim, chunk_size)
    kb = dict(BT=bl.BT, BK=bl.BK, NK=bl.NK, PREC=_precision(q.dtype, q.device))
    f32 = dict(dtype=torch.float32, device=q.device)
    o = torch.empty(total, h, v_dim, dtype=v.dtype, device=q.device)
    states = torch.empty(n_chunks, h, k_dim, v_dim, **f32)
    ht = torch.empty(n_seq, h, k_dim, v_dim, **f32) if output_final_state else _empty(q)
    x, t, w, u = _empty(q), _empty(q), _empty(q), _empty(q)
    dummy = _empty(q)
    if gla and n_chunks:  # t holds P (the decayed scores), w the chunk-local cumsums G of g
        t = torch.zeros(total, h, bl.BT, **f32)
        w = torch.empty(total, h, k_dim, **f32)
        _run(tk.gla_cumsum_kernel, (n_chunks, h, bl.NK), g, w, cu_seqlens, chunk_indices, h, k_dim,
             BT=bl.BT, BK=bl.BK)
        _run(tk.gla_scores_kernel, (n_chunks, h), q, k, w, t, cu_seqlens, chunk_indices, scale, h, k_dim,
             BC=GLA_SUB_CHUNK, **kb)
    if delta:  # T and, beside it, k k^T below the diagonal
        t = torch.empty(total, h, 2 * bl.BT, **f32)
        u = torch.empty(total, h, v_dim, **f32)
        w = torch.empty(total, h, k_dim, dtype=_operand_dtype(q.dtype), device=q.device)
        x = torch.empty(total, h, v_dim, dtype=_operand_dtype(q.dtype), device=q.device)
        if n_chunks:
            _run(tk.wy_fwd_kernel, (n_chunks, h), k, v, beta, g if has_g else dummy, t, u, w, cu_seqlens,
                 chunk_indices, h, k_dim, v_dim, HAS_G=has_g, BV=bl.BV, LOG2_BT=int(math.log2(bl.BT)),
                 INV_PREC=_inverse_precision(q.dtype), **kb)
    decay = w if gla else g if has_g else dummy
    if n_seq:
        _run(tk.state_fwd_kernel, (n_seq, h, -(-v_dim // bl.BV_STATE)),
             k, v, decay, u, w if delta else dummy, x if delta else dummy, states,
             h0 if h0 is not None else dummy, ht if output_final_state else dummy, cu_seqlens,
             chunk_offsets, h, k_dim, v_dim, DELTA=delta, HAS_G=has_g, GLA=gla, HAS_H0=h0 is not None,
             STORE_HT=output_final_state, **dict(kb, BK=bl.BK_STATE, NK=bl.NK_STATE, BV=bl.BV_STATE))
    if n_chunks:
        _run(tk.output_fwd_kernel, (n_chunks, h, -(-v_dim // bl.BV)),
             q, k, v, decay, x if delta else dummy, t if gla else dummy, states, o, cu_seqlens,
             chunk_indices, chunk_offsets, scale, h, k_dim, v_dim, DELTA=delta, HAS_G=has_g, GLA=gla,
             BV=bl.BV, **kb)
    return o, ht, states, x, t, w


la_chunk_fwd = torch.library.custom_op("archspec::la_chunk_fwd", mutates_args=())(_la_chunk_fwd)


@la_chunk_fwd.register_fake
def _(q, k, v, g, beta, h0, cu_seqlens, chunk_indices, chunk_offsets, rule, scale, chunk_size,
      n_chunks, output_final_state):
    total, h, k_dim = q.shape
    v_dim = v.shape[-1]
    n_seq = cu_seqlens.shape[0] - 1
    f32 = dict(dtype=torch.float32, device=q.device)
    delta, gla = rule in WITH_BETA, rule == "gla"
    return (v.new_empty(total, h, v_dim),
            q.new_empty(n_seq, h, k_dim, v_dim, dtype=torch.float32) if output_final_state else _empty(q),
            torch.empty(n_chunks, h, k_dim, v_dim, **f32),
            torch.empty(total, h, v_dim, dtype=_operand_dtype(q.dtype), device=q.device) if delta else _empty(q),
            torch.empty(total, h, (2 if delta else 1) * chunk_size, **f32) if delta or gla else _empty(q),
            torch.empty(total, h, k_dim, dtype=_operand_dtype(q.dtype) if delta else torch.float32,
                        device=q.device) if delta or gla else _empty(q))


# --- backward op --------------------------------------------------------------------------------

def _la_chunk_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None,
                  beta: torch.Tensor | None, h0: torch.Tensor | None, cu_seqlens: torch.Tensor,
                  chunk_indices: torch.Tensor, chunk_offsets: torch.Tensor, states: torch.Tensor,
                  x: torch.Tensor, t: torch.Tensor, w: torch.Tensor, do: torch.Tensor,
                  dht: torch.Tensor | None, rule: str, scale: float, chunk_size: int, n_chunks: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton_kernels as tk
    total, h, k_dim = q.shape
    v_dim = v.shape[-1]
    n_seq = cu_seqlens.numel() - 1
    delta, has_g, gla = rule in WITH_BETA, g is not None, rule == "gla"
    bl = blocks(k_dim, v_dim, chunk_size)
    kb = dict(BT=bl.BT, BK=bl.BK, NK=bl.NK, PREC=_precision(q.dtype, q.device))
    bwd = dict(BT=bl.BT, BK=bl.BK_BWD, NK=bl.NK_BWD, BV=bl.BV_BWD, PREC=kb["PREC"])
    state = dict(BT=bl.BT, BK=bl.BK_STATE, NK=bl.NK_STATE, BV=bl.BV_STATE, PREC=kb["PREC"])
    f32 = dict(dtype=torch.float32, device=q.device)
    dummy = _empty(q)
    do = do.contiguous()
    dx = torch.zeros(total, h, v_dim, **f32)
    dstates = torch.empty(n_chunks, h, k_dim, v_dim, **f32)
    dh0 = torch.empty(n_seq, h, k_dim, v_dim, **f32) if h0 is not None else _empty(q)
    decay = w if gla else g if has_g else dummy
    # dG's parts (gated_delta): one per key block (dqk_bwd_kernel), the WY step's, P's
    wy_part = bl.NK_BWD
    p_part = bl.NK_BWD + (1 if delta else 0)
    d_g_parts = torch.empty(p_part + 1, total, h, **f32) if has_g and not gla else dummy
    d_pe = torch.empty(total, h, bl.BT, **f32) if not gla else dummy
    if n_chunks:
        _run(tk.local_bwd_kernel, (n_chunks, h),
             q, k, decay, x if delta else dummy, v, t if gla else dummy, do, dx, d_pe, d_g_parts,
             cu_seqlens, chunk_indices, scale, total, h, k_dim, v_dim, DELTA=delta, HAS_G=has_g,
             GLA=gla, DG_PART=p_part, BV=bl.BV, **kb)
    q_state, k_state, state_scale = q, k, scale
    if gla and n_chunks:  # the reverse pass reads q and k with their decays folded in
        q_state, k_state, state_scale = torch.empty_like(q), torch.empty_like(k), 1.0
        _run(tk.gla_decayed_kernel, (n_chunks, h, bl.NK), q, k, w, q_state, k_state, cu_seqlens,
             chunk_indices, scale, h, k_dim, BT=bl.BT, BK=bl.BK, PREC=kb["PREC"])
    if n_seq:
        _run(tk.state_bwd_kernel, (n_seq, h, -(-v_dim // bl.BV_STATE)),
             q_state, k_state, decay, w if delta else dummy, do, dx, dstates,
             dht if dht is not None else dummy, dh0 if h0 is not None else dummy, cu_seqlens,
             chunk_offsets, state_scale, h, k_dim, v_dim, DELTA=delta, HAS_G=has_g, GLA=gla,
             HAS_DHT=dht is not None, STORE_DH0=h0 is not None, **state)
    dq = torch.zeros(total, h, k_dim, **f32)
    dk = torch.zeros(total, h, k_dim, **f32)
    dv = torch.zeros(total, h, v_dim, **f32) if delta else dx
    dbeta = torch.zeros(total, h, **f32) if delta else _empty(q)
    dg = torch.zeros(g.shape, **f32) if has_g else _empty(q)
    if gla and n_chunks:
        d_scores = torch.zeros(total, h, bl.BT, **f32)
        d_last = torch.empty(n_chunks, h, k_dim, **f32)
        _run(tk.gla_chunk_bwd_kernel, (n_chunks, h, bl.NK_BWD),
             q, k, v, w, states, do, dstates, d_scores, dq, dk, d_last, cu_seqlens, chunk_indices,
             chunk_offsets, scale, h, k_dim, v_dim, BT=bl.BT, BK=bl.BK_BWD, BV=bl.BV_BWD, PREC=kb["PREC"])
        _run(tk.gla_intra_bwd_kernel, (n_chunks, h, bl.NK),
             q, k, w, d_scores, dq, dk, d_last, dg, cu_seqlens, chunk_indices, chunk_offsets, scale,
             h, k_dim, BT=bl.BT, BC=GLA_SUB_CHUNK, BK=bl.BK, PREC=kb["PREC"])
    elif n_chunks:
        d_w = torch.empty(total, h, k_dim, **f32) if delta else dummy
        _run(tk.dqk_bwd_kernel, (n_chunks, h, bl.NK_BWD),
             q, k, v, decay, x if delta else dummy, states, do, dx, dstates, d_pe, dq, dk, d_w, d_g_parts,
             cu_seqlens, chunk_indices, chunk_offsets, scale, total, h, k_dim, v_dim, DELTA=delta,
             HAS_G=has_g, **bwd)
        if delta:  # d_pe, read by dqk_bwd_kernel, now holds dT and then B
            _run(tk.wy_bwd_kernel, (n_chunks, h),
                 k, v, decay, beta, t, dx, d_w, dk, dv, dbeta, d_pe, d_g_parts, cu_seqlens, chunk_indices,
                 total, h, k_dim, v_dim, HAS_G=has_g, DG_PART=wy_part, **bwd)
            _run(tk.wy_inverse_bwd_kernel, (n_chunks, h),
                 decay, beta, t, d_pe, dbeta, d_g_parts, cu_seqlens, chunk_indices, total, h,
                 HAS_G=has_g, BT=bl.BT, DG_PART=wy_part, PREC=kb["PREC"])
            _run(tk.wy_dk_bwd_kernel, (n_chunks, h, bl.NK_BWD),
                 k, d_pe, dk, cu_seqlens, chunk_indices, h, k_dim, BT=bl.BT, BK=bl.BK_BWD, PREC=kb["PREC"])
        if has_g:
            _run(tk.chunk_dg_kernel, (n_chunks, h), d_g_parts, dg, cu_seqlens, chunk_indices, total, h,
                 N_PARTS=p_part + 1, BT=bl.BT)
    return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
            dg if has_g else _empty(q), dbeta.to(beta.dtype) if delta else _empty(q),
            dh0)


la_chunk_bwd = torch.library.custom_op("archspec::la_chunk_bwd", mutates_args=())(_la_chunk_bwd)


@la_chunk_bwd.register_fake
def _(q, k, v, g, beta, h0, cu_seqlens, chunk_indices, chunk_offsets, states, x, t, w, do, dht,
      rule, scale, chunk_size, n_chunks):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(g, dtype=torch.float32) if g is not None else _empty(q),
            torch.empty_like(beta) if rule in WITH_BETA else _empty(q),
            torch.empty_like(h0, dtype=torch.float32) if h0 is not None else _empty(q))


def _setup(ctx, inputs, output):
    q, k, v, g, beta, h0, cu, ci, co, rule, scale, chunk_size, n_chunks, _ = inputs
    _, _, states, x, t, w = output
    ctx.save_for_backward(q, k, v, g, beta, h0, cu, ci, co, states, x, t, w)
    ctx.args = (rule, scale, chunk_size, n_chunks)


def _backward(ctx, do, dht, *_unused):
    q, k, v, g, beta, h0, cu, ci, co, states, x, t, w = ctx.saved_tensors
    rule, scale, chunk_size, n_chunks = ctx.args
    dq, dk, dv, dg, dbeta, dh0 = la_chunk_bwd(
        q, k, v, g, beta, h0, cu, ci, co, states, x, t, w, do,
        dht if dht is not None and dht.numel() else None, rule, scale, chunk_size, n_chunks)
    return (dq, dk, dv, _opt(dg), _opt(dbeta), _opt(dh0) if h0 is not None else None,
            None, None, None, None, None, None, None, None)


la_chunk_fwd.register_autograd(_backward, setup_context=_setup)


# --- FLOPs ----------------------------------------------------------------------------------------

def _forward_matmul_flops(rule: str, n_chunks: int, h: int, k_dim: int, v_dim: int, c: int) -> int:
    # chunk_flops counts per chunk; one sequence of n_chunks full chunks has the same count
    return chunk_flops(rule, [n_chunks * c], h, k_dim, v_dim, c).matmul


def _fwd_flops(q, k, v, g, beta, h0, cu, ci, co, rule, scale, chunk_size, n_chunks, *_):
    _, h, k_dim = q
    return _forward_matmul_flops(rule, n_chunks, h, k_dim, v[-1], chunk_size)


def _bwd_flops(q, k, v, g, beta, h0, cu, ci, co, states, x, t, w, do, dht, rule, scale,
               chunk_size, n_chunks, *_):
    _, h, k_dim = q
    return 2 * _forward_matmul_flops(rule, n_chunks, h, k_dim, v[-1], chunk_size)


register_flops(la_chunk_fwd, _fwd_flops)
register_flops(la_chunk_bwd, _bwd_flops)


# --- entry point ----------------------------------------------------------------------------------

def chunk_layout(cu_seqlens: torch.Tensor, total: int, chunk_size: int):
    """(chunk_indices int32 [n_chunks, 2] = (sequence, chunk within it), chunk_offsets int32
    [N + 1] = chunks before each sequence, n_chunks), from the offsets read on the host."""
    offsets = cu_seqlens.tolist()
    check_offsets(offsets, total)
    counts = [-(-(e - b) // chunk_size) for b, e in zip(offsets, offsets[1:])]
    pairs = [(i, j) for i, c in enumerate(counts) for j in range(c)]
    device = cu_seqlens.device
    indices = torch.tensor(pairs, dtype=torch.int32, device=device).reshape(-1, 2)
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    return indices, torch.tensor(starts, dtype=torch.int32, device=device), starts[-1]


def fixed_layout(batch: int, length: int, chunk_size: int, device):
    """The same for B sequences of T rows, from shapes alone (no host reads: torch.compile
    traces it without a graph break)."""
    per = -(-length // chunk_size)
    cu = torch.arange(batch + 1, dtype=torch.int64, device=device) * length
    seq = torch.arange(batch, dtype=torch.int32, device=device).repeat_interleave(per)
    idx = torch.arange(per, dtype=torch.int32, device=device).repeat(batch)
    offsets = torch.arange(batch + 1, dtype=torch.int32, device=device) * per
    return cu, torch.stack([seq, idx], 1), offsets, batch * per


def check_kernel_arguments(rule: str, chunk_size: int, *tensors) -> None:
    """What the kernels cannot take, as clear errors (the reference takes all of it)."""
    q, _, v = tensors
    reason = kernels_unsupported(rule, q.shape[-1], v.shape[-1], chunk_size)
    if reason is not None:
        raise ValueError(reason)
    for t in tensors:
        if t is not None and t.dtype not in KERNEL_DTYPES:
            raise ValueError(f"the Triton kernels take float32, bfloat16 or float16 inputs, got {t.dtype}; "
                             "use backend 'reference' (float64 gradchecks run there)")


def triton_chunk_rule(rule: str, q, k, v, *, g=None, beta=None, scale=None, initial_state=None,
                      output_final_state=False, cu_seqlens=None, chunk_size=64):
    """chunk_rule's API and results, with the Triton kernels (see the module docstring)."""
    check_inputs(rule, q, k, v, g, beta, initial_state, cu_seqlens)
    check_chunk_size(chunk_size)
    check_kernel_arguments(rule, chunk_size, q, k, v)
    check_runnable(q)
    install_flop_formulas()
    b, t, h, k_dim = q.shape
    v_dim = v.shape[-1]
    if cu_seqlens is None:
        cu_seqlens, indices, offsets, n_chunks = fixed_layout(b, t, chunk_size, q.device)
    else:
        indices, offsets, n_chunks = chunk_layout(cu_seqlens, b * t, chunk_size)
    dtype = q.dtype

    def rows(x, width=None):
        if x is None:
            return None
        return x.reshape(b * t, h, *(() if width is None else (width,))).contiguous()

    g_rows = None
    if g is not None:
        g_rows = rows(g.float(), k_dim if rule == "gla" else None)
    beta_rows = rows(beta.to(dtype)) if beta is not None else None
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    o, ht, *_ = la_chunk_fwd(rows(q, k_dim), rows(k.to(dtype), k_dim), rows(v, v_dim), g_rows,
                             beta_rows, h0, cu_seqlens.to(torch.int64).contiguous(), indices, offsets,
                             rule, float(resolve_scale(scale, k_dim)), chunk_size, n_chunks,
                             output_final_state)
    o = o.reshape(b, t, h, v_dim)
    return o, (ht if output_final_state else None)




def kernel_launches(rule: str, heads: int, k_dim: int, v_dim: int, chunk_size: int, dtype: torch.dtype,
                    initial_state: bool = False, final_state: bool = False) -> list:
    """The Triton launches (triton_support.KernelLaunch) of one forward and backward of `rule`
    at these sizes: the launchers run on meta tensors and record instead of launching."""
    from ..triton_support import recorded_launches
    reason = kernels_unsupported(rule, k_dim, v_dim, chunk_size)
    if reason is not None or dtype not in KERNEL_DTYPES:
        raise ValueError(reason or f"the Triton kernels take {KERNEL_DTYPES}, got {dtype}")
    meta = dict(device="meta")
    batch, length = 1, 2 * chunk_size
    total = batch * length
    q = torch.empty(total, heads, k_dim, dtype=dtype, **meta)
    v = torch.empty(total, heads, v_dim, dtype=dtype, **meta)
    g = None
    if rule == "gla":
        g = torch.empty(total, heads, k_dim, dtype=torch.float32, **meta)
    elif rule == "gated_delta":
        g = torch.empty(total, heads, dtype=torch.float32, **meta)
    beta = torch.empty(total, heads, dtype=dtype, **meta) if rule in WITH_BETA else None
    h0 = torch.empty(batch, heads, k_dim, v_dim, dtype=torch.float32, **meta) if initial_state else None
    cu, indices, offsets, n_chunks = fixed_layout(batch, length, chunk_size, "meta")
    args = (rule, 1.0 / math.sqrt(k_dim), chunk_size, n_chunks)
    with recorded_launches() as found:
        o, ht, states, x, t, w = _la_chunk_fwd(q, q, v, g, beta, h0, cu, indices, offsets, *args, final_state)
        _la_chunk_bwd(q, q, v, g, beta, h0, cu, indices, offsets, states, x, t, w, o,
                      ht if final_state else None, *args)
    return found


# the corners of what `check_kernel_arguments` admits: smallest blocks, the largest heads at
# the largest chunk, and keys and values of different block counts
GATE_SHAPES = ((16, 16, 16), (256, 256, 64), (64, 256, 32), (256, 16, 64))
# what the gate holds to its limits today (no spills on sm_80 and sm_90): 16-bit inputs, every
# rule. float32 inputs (tf32x3 dots: fp32 accuracy at about twice the registers) still spill: they
# compute right (the interpreter tests) but `auto` keeps the reference for float32 models (mom's
# auto_skips); `archspec kernels --compile sm_80,sm_90 --dtypes float32` shows where
GATE_RULES = ("linear", "gla", "delta", "gated_delta")
GATE_DTYPES = (torch.bfloat16,)


def gate_launches() -> list:
    """Launches at the extremes of the kernels' range (`archspec kernels`): GATE_RULES in
    GATE_DTYPES (float16 compiles as bfloat16 does), initial and final states on, at
    GATE_SHAPES (K, V, chunk)."""
    found = []
    for rule in GATE_RULES:
        for dtype in GATE_DTYPES:
            for k_dim, v_dim, chunk in GATE_SHAPES:
                found += kernel_launches(rule, 4, k_dim, v_dim, chunk, dtype, initial_state=True,
                                         final_state=True)
    return list(dict.fromkeys(found))
