"""Argument checks and dtype rules shared by the recurrent and the chunked forms.

Every check reads shapes only (never tensor values), so the fixed-length path stays traceable
by torch.compile(fullgraph=True); the values of `cu_seqlens` are checked where the varlen path
reads them on the host anyway (`check_offsets`).
"""
from __future__ import annotations

import torch

from .costs import DECAYED, WITH_BETA, check_rule


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16 / fp16 / fp32 all compute in fp32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) \
        else torch.float32


def resolve_scale(scale: float | None, k_dim: int) -> float:
    return k_dim ** -0.5 if scale is None else scale


def check_rule_arguments(rule: str, g, beta) -> None:
    """The rule exists and gets exactly the optional arguments it uses."""
    check_rule(rule)
    if rule in DECAYED and g is None:
        what = "one per head" if rule == "gated_delta" else "one per key channel"
        raise ValueError(f"rule {rule!r} needs the log-space decay g ({what})")
    if rule not in DECAYED and g is not None:
        raise ValueError(f"rule {rule!r} has no decay: g must be None")
    if rule in WITH_BETA and beta is None:
        raise ValueError(f"rule {rule!r} needs beta (the write strength, one per head and token)")
    if rule not in WITH_BETA and beta is not None:
        raise ValueError(f"rule {rule!r} takes no beta (only {WITH_BETA} do): beta must be None")


def _expect(name: str, tensor: torch.Tensor, shape: tuple, layout: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape)}, got {tuple(tensor.shape)}")


def check_inputs(rule, q, k, v, g, beta, initial_state, cu_seqlens) -> int:
    """Validate the sequence-form arguments; returns N, the number of sequences (states)."""
    check_rule_arguments(rule, g, beta)
    for name, t in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta),
                    ("initial_state", initial_state)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.dim() != 4:
        raise ValueError(f"q must have shape [B, T, H, K], got {tuple(q.shape)}")
    b, t, h, k_dim = q.shape
    _expect("k", k, q.shape, "[B, T, H, K] like q")
    if v.dim() != 4 or tuple(v.shape[:3]) != (b, t, h):
        raise ValueError(f"v must have shape [B, T, H, V] = ({b}, {t}, {h}, V), got {tuple(v.shape)}")
    if g is not None:
        if rule == "gla":
            _expect("g", g, (b, t, h, k_dim), "[B, T, H, K] (gla: one decay per key channel)")
        else:
            _expect("g", g, (b, t, h), "[B, T, H] (gated_delta: one decay per head)")
    if beta is not None:
        _expect("beta", beta, (b, t, h), "[B, T, H]")
    n = b
    if cu_seqlens is not None:
        if b != 1:
            raise ValueError(f"packed sequences (cu_seqlens) need batch 1, got batch {b}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.is_floating_point():
            raise ValueError("cu_seqlens must be a 1-D integer tensor of N + 1 offsets "
                             f"(got {cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)})")
        n = cu_seqlens.numel() - 1
    if initial_state is not None:
        _expect("initial_state", initial_state, (n, h, k_dim, v.shape[-1]), "[N, H, K, V]")
    return n


def check_offsets(offsets: list[int], total: int) -> None:
    """cu_seqlens values: start at 0, never decrease, end at the packed length T."""
    if offsets[0] != 0 or offsets[-1] != total:
        raise ValueError(f"cu_seqlens must run from 0 to T = {total}, got {offsets[0]} .. {offsets[-1]}")
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {offsets}")


def check_chunk_size(chunk_size) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
