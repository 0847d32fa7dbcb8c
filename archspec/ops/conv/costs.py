"""What the short causal convolution costs, without torch.

Per token and channel: c multiplies and c - 1 adds, 1 more with a bias, plus the activation
(SiLU: ACTIVATION_FLOPS["silu"]); all elementwise (`Flops.other`: the convolution is c shifted
multiply-adds, which FlopCounterMode does not count).
"""
from __future__ import annotations

from ...costs import ACTIVATION_FLOPS, Flops


def conv_flops(tokens: int, channels: int, kernel: int, bias: bool, activation: str | None) -> Flops:
    """FLOPs of causal_conv1d (or as many causal_conv1d_step calls) over `tokens` tokens."""
    per_channel = (2 * kernel - 1 + (1 if bias else 0)
                   + (ACTIVATION_FLOPS["silu"] if activation == "silu" else 0))
    return Flops(other=tokens * channels * per_channel)
