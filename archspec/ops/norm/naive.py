"""RMSNorms in plain PyTorch: the ground truth every kernel in this package is tested against.

Gated RMSNorm, the output norm of Mamba2 and of MoM / GatedDeltaNet:

    x, z: [..., n];  w: [n] (init 1);  rms(u) = sqrt(mean(u^2 over each group) + eps)
    norm_before_gate=True  (fla FusedRMSNormGated, MoM):  y = x / rms(x) * w * silu(z)
    norm_before_gate=False (Mamba2 RMSNormGated):          y = u / rms(u) * w,  u = x * silu(z)

`group_size` splits the last dimension into groups normalised separately (Mamba2 with
ngroups > 1); default the whole dimension. Computed in float32 (float64 stays float64) and cast
back to x's dtype. FLOPs: `gated_rmsnorm_flops` (costs.py).

Residual add + RMSNorm, the pre-norm block's norm (the `rmsnorm` component computes `rmsnorm`):

    x, r: [..., n];  w: [n]
    h = x + r (in x's dtype: the residual stream as the model stores it; h = x without r)
    y = h / sqrt(mean(h^2) + eps) * w     (float32, float64 stays float64; cast back to h's dtype)
    returns (y, h)

L2 norm, what the delta rules' callers apply to q and k per head (MoM, GatedDeltaNet; no kernel):

    y = x / sqrt(sum(x^2) + eps)   over the last dimension, in x's dtype
"""
from __future__ import annotations

import torch
from torch import nn


def gated_rmsnorm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float,
                  norm_before_gate: bool, group_size: int | None = None) -> torch.Tensor:
    dtype = x.dtype
    compute = torch.promote_types(dtype, torch.float32)  # float64 stays float64 (gradcheck)
    x, z = x.to(compute), z.to(compute)
    if not norm_before_gate:
        x = x * nn.functional.silu(z)
    n = x.shape[-1]
    group = group_size or n
    if n % group:
        raise ValueError(f"group_size {group} does not divide the normalised size {n}")
    grouped = x.reshape(*x.shape[:-1], n // group, group)
    y = (grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)).reshape(x.shape)
    y = y * weight.to(compute)
    if norm_before_gate:
        y = y * nn.functional.silu(z)
    return y.to(dtype)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * w over the last dimension, in float32 (float64 stays
    float64), cast back."""
    compute = torch.promote_types(x.dtype, torch.float32)
    y = nn.functional.rms_norm(x.to(compute), (x.shape[-1],), weight.to(compute), eps)
    return y.to(x.dtype)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rmsnorm(h), h) with h = x + residual (x itself without a residual)."""
    h = x if residual is None else x + residual
    return rmsnorm(h, weight, eps), h


def l2_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dimension, in x's dtype."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)
