"""Short causal depthwise convolution over time (Mamba, MoM, GatedDeltaNet's "short conv").

    x: [B, T, C] (channels last);  w: [C, 1, c] (nn.Conv1d's depthwise layout);  b: [C] or None
    y[:, t] = act( b + sum_{j=0}^{c-1} w[:, 0, j] * x[:, t - (c - 1) + j] ),  x[:, <0] = 0

With `cu_seqlens` (int64 [S + 1], offsets of S sequences packed along T, B = 1) each sequence
starts from zeros: positions before a sequence's first token are never read, so packed
sequences do not leak into each other.

Computed as c shifted multiply-adds (elementwise: no im2col, and the same code handles packed
sequences), in plain PyTorch: naive.py, the one form (causal_conv1d) and the decoding step
(causal_conv1d_step), which keeps the last c - 1 inputs per channel as its state. FLOPs:
costs.py (torch-free).

Importing this package imports no torch: conv_flops is loaded with it, every other name on first
use.
"""
from __future__ import annotations

from ...lazy import lazy_exports
from .costs import conv_flops

_LAZY = {".naive": ["causal_conv1d", "causal_conv1d_step", "positions_in_sequence"]}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = ["conv_flops"]
__all__ += [name for names in _LAZY.values() for name in names]
