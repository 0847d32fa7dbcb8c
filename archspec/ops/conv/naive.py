"""The short causal depthwise convolution in plain PyTorch (the package docstring gives the
math): c shifted multiply-adds over the sequence, or over packed sequences that never read each
other's tokens, and the decoding step over a window of the last c - 1 inputs."""
from __future__ import annotations

import torch
from torch import nn


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
