"""The RMSNorms' entry points: each computes its norm by the plain PyTorch ground truth
(`backend="reference"`, naive.py) or by the Triton kernel (`backend="triton"`, triton_rmsnorm.py).
Shapes and math: the package docstring."""
from __future__ import annotations

import torch

from . import naive
from .triton_rmsnorm import fused_add_rmsnorm, fused_gated_rmsnorm, fused_rmsnorm

BACKENDS = ("reference", "triton")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown norm backend {backend!r} (use one of: {', '.join(BACKENDS)})")


def gated_rmsnorm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float,
                  norm_before_gate: bool, group_size: int | None = None,
                  backend: str = "reference") -> torch.Tensor:
    _check_backend(backend)
    if backend == "triton":
        return fused_gated_rmsnorm(x, z, weight, eps, norm_before_gate, group_size)
    return naive.gated_rmsnorm(x, z, weight, eps, norm_before_gate, group_size)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
            backend: str = "reference") -> torch.Tensor:
    _check_backend(backend)
    if backend == "triton":
        return fused_rmsnorm(x, weight, eps)
    return naive.rmsnorm(x, weight, eps)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                backend: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    _check_backend(backend)
    if backend == "triton":
        return fused_add_rmsnorm(x, residual, weight, eps)
    return naive.add_rmsnorm(x, residual, weight, eps)
