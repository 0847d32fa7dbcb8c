"""Measured FLOPs of a built model, to cross-check the analytic accounting.

Two independent counters, both counting what is *computed* (dense: a causal or sliding-window
mask does not make SDPA skip work in their formulas), both in our convention (1 FLOP = one
multiply or one add, a MAC = 2 FLOPs):

  * `measure_flopcounter`: torch.utils.flop_counter.FlopCounterMode (dispatcher level).
  * `measure_fvcore`: fvcore.nn.FlopCountAnalysis (TorchScript trace), times 2 because fvcore
    counts one multiply-add as one "flop".

`analytic_comparable(spec, seq_len)` is what they should equal: the matmul + attention FLOPs of
the accounting under FlopConvention('dense'). Elementwise work (`Flops.other`: norms,
activations, softmax, RoPE, biases, residuals) is not compared: neither counter has a formula
for it that matches ours, and FlopCounterMode ignores it altogether.

Known gaps of the counters, and how they are closed here (explicitly, not by tolerances):

  * FlopCounterMode in torch 2.13 has flop formulas for the CUDA SDPA kernels (flash,
    efficient, cuDNN) but NOT for `aten._scaled_dot_product_flash_attention_for_cpu`, the fused
    kernel SDPA dispatches to on CPU, for every path we use: `is_causal=True`, an explicit
    boolean `attn_mask` (sliding window; SDPA first turns it into an additive float mask with
    `aten.where`, which is not counted either), and `enable_gqa=True` (the key/value tensors
    keep their H_kv heads; no repeat_interleave happens). Out of the box it therefore reports
    0 FLOPs for attention on CPU. We pass a `custom_mapping` formula for that op, the same
    count torch uses for the CUDA kernels: q k^T and p v as two dense batched matmuls over the
    *query* heads (GQA broadcasts each key/value head to its n_heads / n_kv_heads query heads,
    and each query head does its own matmul), ignoring the mask: 2 B H Tq Tk (hd + hd_v).
    `tests/test_flops.py` checks this formula against the MATH backend, where SDPA decomposes
    into ordinary matmuls that FlopCounterMode counts on its own.
  * fvcore has no handle for `aten::scaled_dot_product_attention` (it would report it as
    unsupported and count 0); `sdpa_fvcore_handle` below counts the same two matmuls as MACs.
  * fvcore counts `aten::layer_norm` as elementwise FLOPs; that is `other` in our convention,
    so its handle is replaced by one that counts 0 (it is then not reported as unsupported).
  * Linear biases: both counters count a biased linear (addmm / aten::linear) as the matmul
    alone, as we do (the bias add is in `other`).
  * archspec's Triton kernels are torch custom ops (`archspec::*`), opaque to both counters.
    Each registers its FLOP formula (archspec/ops/triton_support.py: `register_flops`) with
    FlopCounterMode's registry, and `fvcore_analysis` installs the same formulas as fvcore
    handles, so measured FLOPs stay right when kernels are in use.
  * Triangular solves (`torch.linalg.solve_triangular`, used by the chunked delta rules in
    archspec/ops/linear_attention): FlopCounterMode has no formula for
    `aten.linalg_solve_triangular` (it counts 0) and fvcore reports it as unsupported. Both get
    the count of forward/back substitution: an n x n triangle against m right-hand sides is
    m n(n-1)/2 multiply-adds, so m n (n-1) FLOPs (`_solve_triangular_flops`,
    `solve_triangular_fvcore_handle`). The n divisions by the diagonal when it is not unit are
    elementwise (`other`), like bias adds. `tests/test_linear_attention_ops.py` checks the formula
    against a substitution written with matmuls, which FlopCounterMode counts on its own.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .components.base import FlopConvention
from .ops.triton_support import fvcore_handles, install_flop_formulas

# Ops whose FLOPs are matmul-like: if fvcore reports one of these as unsupported, its count is
# missing real work. Tests assert none of them appears in `FvcoreResult.unsupported`.
MATMUL_LIKE_OPS = frozenset({
    "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "aten::addmm", "aten::baddbmm",
    "aten::addbmm", "aten::einsum", "aten::_convolution", "aten::conv1d", "aten::conv2d",
    "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_attention_math",
    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::tensordot", "aten::dot",
    "aten::mv", "aten::addmv", "aten::outer", "aten::_efficient_attention_forward",
    "aten::_flash_attention_forward", "aten::linalg_solve_triangular",
})


def analytic_comparable(spec, seq_len: int, batch: int = 1) -> int:
    """Analytic matmul + attention FLOPs of `batch` sequences of `seq_len` tokens under
    FlopConvention('dense') (all T^2 query-key pairs, whatever the mask or window), which is what
    both counters measure. The accounting is per sequence, hence the factor `batch`."""
    from .accounting import account
    total = account(spec, seq_len, FlopConvention("dense")).total().flops
    return batch * (total.matmul + total.attention)


# --- FlopCounterMode -----------------------------------------------------------------------

def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `aten._scaled_dot_product_flash_attention_for_cpu` (see the module docstring):
    scores q k^T [B, H, Tq, Tk] and output p v [B, H, Tq, hd_v], each a dense batched matmul
    over the query heads H (GQA key/value heads are broadcast), 2 FLOPs per MAC."""
    b, h, tq, d = query_shape
    _, h_kv, tk, _ = key_shape
    d_v = value_shape[-1]
    if h % h_kv:
        raise ValueError(f"query heads {h} not a multiple of key/value heads {h_kv}")
    return 2 * b * h * tq * tk * d + 2 * b * h * tq * tk * d_v


def _solve_triangular_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `aten.linalg_solve_triangular(A, B, upper, left, unitriangular)`: substitution,
    n - 1 multiply-adds per solution element on average (row i of an n x n triangle uses i
    earlier unknowns), whichever side A is on; the diagonal's divisions are `other`."""
    n = a_shape[-1]
    return math.prod(out_shape) * (n - 1)


def flopcounter_mapping() -> dict:
    """The `custom_mapping` FlopCounterMode needs: SDPA on CPU, triangular solves. (archspec's
    own kernels are in FlopCounterMode's global registry, installed here too.)"""
    install_flop_formulas()
    mapping = {torch.ops.aten.linalg_solve_triangular: _solve_triangular_flops}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_sdpa_flops
    return mapping


def _logits_forward(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


def flopcounter_by_op(model: nn.Module, tokens: torch.Tensor) -> dict[str, int]:
    """FlopCounterMode's forward FLOPs by aten op (no gradients, no display)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flopcounter_mapping()) as mode:
        _logits_forward(model, tokens)
    return {str(k): int(v) for k, v in mode.get_flop_counts()["Global"].items()}


def measure_flopcounter(model: nn.Module, tokens: torch.Tensor) -> int:
    """Total forward FLOPs of `model(tokens)` by torch's FlopCounterMode, with the CPU SDPA
    kernel counted (see the module docstring)."""
    return sum(flopcounter_by_op(model, tokens).values())


# --- fvcore --------------------------------------------------------------------------------

def sdpa_fvcore_handle(inputs, outputs) -> int:
    """fvcore handle for `aten::scaled_dot_product_attention(q, k, v, attn_mask, dropout_p,
    is_causal, scale, enable_gqa)`: MACs of q k^T and p v, dense (the mask is ignored, as
    FlopCounterMode does), over the query heads: B H Tq Tk hd + B H Tq Tk hd_v. With GQA the key
    and value have H_kv <= H heads and each is shared by H / H_kv query heads, so the count uses
    the query's H, not H_kv."""
    from fvcore.nn.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, h, tq, d = q
    tk, d_v = k[-2], v[-1]
    if h % k[-3]:
        raise ValueError(f"query heads {h} not a multiple of key/value heads {k[-3]}")
    n = h
    for dim in batch:
        n *= dim
    return n * tq * tk * d + n * tq * tk * d_v


def solve_triangular_fvcore_handle(inputs, outputs) -> int:
    """fvcore handle for `aten::linalg_solve_triangular(A, B, upper, left, unitriangular)`: the
    multiply-adds of substitution, (n - 1) / 2 per solution element for an n x n triangle (an
    integer: the solution has n rows or columns, and n (n - 1) is even)."""
    from fvcore.nn.jit_handles import get_shape
    n = get_shape(inputs[0])[-1]
    return math.prod(get_shape(outputs[0])) * (n - 1) // 2


def _elementwise_not_counted(inputs, outputs) -> int:
    """Elementwise work is `other` in our convention; not part of the compared count."""
    return 0


@dataclass
class FvcoreResult:
    flops: int  # 2 x fvcore's total (fvcore counts a MAC as one)
    by_operator: dict[str, int] = field(default_factory=dict)  # fvcore's own counts (MACs)
    unsupported: Counter = field(default_factory=Counter)  # op name -> occurrences fvcore skipped

    @property
    def skipped_matmul_ops(self) -> list[str]:
        return sorted(op for op in self.unsupported if op in MATMUL_LIKE_OPS)


class _Logits(nn.Module):
    """Tracing needs tensor outputs; the model returns a dataclass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return _logits_forward(self.model, tokens)


def fvcore_analysis(model: nn.Module, tokens: torch.Tensor) -> FvcoreResult:
    """Run fvcore's FlopCountAnalysis with the SDPA and triangular-solve handles registered and
    layer_norm counted 0; its warnings (unsupported ops, uncalled modules, tracer warnings) are
    silenced and the unsupported ops returned instead."""
    from fvcore.nn import FlopCountAnalysis
    analysis = FlopCountAnalysis(_Logits(model), (tokens,))
    # (`None` would only add layer_norm to the ignored set, where fvcore's default handle still
    # wins, so it is replaced by a handle that counts 0.)
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_fvcore_handle,
                           "aten::linalg_solve_triangular", solve_triangular_fvcore_handle,
                           "aten::layer_norm", _elementwise_not_counted)
    # archspec's own kernels (custom ops), counted by the formulas they registered
    for name, handle in fvcore_handles().items():
        analysis.set_op_handle(name, handle)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_fvcore_logger():
        warnings.simplefilter("ignore")
        total = analysis.total()
        unsupported = Counter(analysis.unsupported_ops())
        by_op = {k: int(v) for k, v in analysis.by_operator().items()}
    return FvcoreResult(flops=2 * int(total), by_operator=by_op, unsupported=unsupported)


def measure_fvcore(model: nn.Module, tokens: torch.Tensor) -> int:
    """Forward FLOPs by fvcore in our convention: 2 x fvcore's count (its "flop" is a MAC).
    Use `fvcore_analysis` to also get the ops fvcore could not count."""
    return fvcore_analysis(model, tokens).flops


@contextlib.contextmanager
def _quiet_fvcore_logger():
    import logging
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
