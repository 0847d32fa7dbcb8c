"""Short causal depthwise convolution over time (Mamba, MoM, GatedDeltaNet's "short conv").

    x: [B, T, C] (channels last);  w: [C, 1, c] (nn.Conv1d's depthwise layout);  b: [C] or None
    y[:, t] = act( b + sum_{j=0}^{c-1} w[:, 0, j] * x[:, t - (c - 1) + j] ),  x[:, <0] = 0

With `cu_seqlens` (int64 [S + 1], offsets of S sequences packed along T, B = 1) each sequence
starts from zeros: positions before a sequence's first token are never read, so packed
sequences do not leak into each other.

Computed as c shifted multiply-adds (elementwise: no im2col, and the same code handles packed
sequences). FLOPs per token and channel: c multiplies + (c - 1) adds, +1 with a bias, plus the
activation (SiLU: 4). The decoding form keeps the last c - 1 inputs per channel as its state.
"""
from __future__ import annotations

import torch
from torch import nn

SILU_FLOPS = 4  # negate+exp, add, divide, multiply


def conv_flops_per_token(channels: int, kernel: int, bias: bool, activation: str | None) -> int:
    per_channel = 2 * kernel - 1 + (1 if bias else 0) + (SILU_FLOPS if activation == "silu" else 0)
    return channels * per_channel


def positions_in_sequence(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """int64 [total]: index of each packed token within its own sequence."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    starts = torch.repeat_interleave(cu_seqlens[:-1], lengths, output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = "silu", cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """y = act(causal depthwise conv(x)); x [B, T, C], weight [C, 1, c] or [C, c]."""
    channels, kernel = weight.shape[0], weight.shape[-1]
    w = weight.reshape(channels, kernel).to(x.dtype)
    t = x.shape[1]
    pos = None
    if cu_seqlens is not None:
        if x.shape[0] != 1:
            raise ValueError(f"packed sequences (cu_seqlens) need batch 1, got {x.shape[0]}")
        pos = positions_in_sequence(cu_seqlens, t)
    y = x * w[:, kernel - 1]
    for shift in range(1, min(kernel, t + 1)):
        shifted = nn.functional.pad(x[:, : t - shift], (0, 0, shift, 0))
        if pos is not None:
            shifted = shifted * (pos >= shift).to(x.dtype)[None, :, None]
        y = y + shifted * w[:, kernel - 1 - shift]
    if bias is not None:
        y = y + bias.to(x.dtype)
    return nn.functional.silu(y) if activation == "silu" else y


def causal_conv1d_step(x_t: torch.Tensor, state: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None, activation: str | None = "silu"):
    """One decoding step. x_t [B, C]; state [B, C, c - 1] holds the previous c - 1 inputs
    (oldest first). Returns (y_t [B, C], new state)."""
    channels, kernel = weight.shape[0], weight.shape[-1]
    window = torch.cat([state, x_t[:, :, None]], dim=-1)  # [B, C, c]
    y = (window * weight.reshape(channels, kernel).to(x_t.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(x_t.dtype)
    y = nn.functional.silu(y) if activation == "silu" else y
    return y, window[:, :, 1:]
