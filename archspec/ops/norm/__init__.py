"""RMSNorms: the plain residual-add + RMSNorm of the pre-norm block and the gated RMSNorm of
Mamba2 / MoM, each with a reference (reference.py, plain PyTorch, the ground truth) and a Triton
kernel (triton_kernels.py, wrapped as custom ops in fused.py).

    rmsnorm(x, w, eps):             x: [..., n], w: [n];  y = x / sqrt(mean(x^2) + eps) * w
    add_rmsnorm(x, r, w, eps):      (y, h) with h = x + r (x when r is None), y = rmsnorm(h)
    gated_rmsnorm(x, z, w, eps, norm_before_gate, group_size):
        norm_before_gate=True:  y = x / rms(x) * w * silu(z)
        norm_before_gate=False: y = u / rms(u) * w,  u = x * silu(z)
        (rms over each group of group_size columns; default the whole row)

Each takes `backend`: "reference" (default) or "triton" (the kernel: CUDA, or the CPU under
TRITON_INTERPRET=1; rows up to MAX_WIDTH columns, `width_unsupported` says why not). Computed in float32, returned in x's dtype. Importing this package
registers the kernels' custom ops (`archspec::*`) but does not import triton.
"""
from __future__ import annotations

import torch

from . import reference
from .fused import (MAX_WIDTH, dtype_unsupported, fused_add_rmsnorm,  # registers the ops
                    fused_gated_rmsnorm, fused_rmsnorm, gate_launches, kernel_launches,
                    width_unsupported)
from .reference import GATED_NORM_FLOPS_PER_ELEMENT, NORM_FLOPS_PER_GROUP, gated_rmsnorm_flops

BACKENDS = ("reference", "triton")

__all__ = ["GATED_NORM_FLOPS_PER_ELEMENT", "MAX_WIDTH", "NORM_FLOPS_PER_GROUP", "BACKENDS",
           "add_rmsnorm", "fused_add_rmsnorm", "fused_gated_rmsnorm", "fused_rmsnorm",
           "gated_rmsnorm", "gated_rmsnorm_flops", "gate_launches", "kernel_launches", "rmsnorm",
           "dtype_unsupported", "width_unsupported"]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown norm backend {backend!r} (use one of: {', '.join(BACKENDS)})")


def gated_rmsnorm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float,
                  norm_before_gate: bool, group_size: int | None = None,
                  backend: str = "reference") -> torch.Tensor:
    _check_backend(backend)
    if backend == "triton":
        return fused_gated_rmsnorm(x, z, weight, eps, norm_before_gate, group_size)
    return reference.gated_rmsnorm(x, z, weight, eps, norm_before_gate, group_size)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
            backend: str = "reference") -> torch.Tensor:
    _check_backend(backend)
    if backend == "triton":
        return fused_rmsnorm(x, weight, eps)
    return reference.rmsnorm(x, weight, eps)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                backend: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    _check_backend(backend)
    if backend == "triton":
        return fused_add_rmsnorm(x, residual, weight, eps)
    return reference.add_rmsnorm(x, residual, weight, eps)
