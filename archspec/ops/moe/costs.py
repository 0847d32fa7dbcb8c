"""Capacities of mixture routing, without torch (the accounting counts kept assignments with
them; routing.py and the dispatch plan drop assignments beyond them).

    token choice (and chunk routing, MoM's memories): an expert keeps at most
        L = ceil(cf k T / E) assignments of each sequence (first come, first served)
    expert choice: each expert takes C = min(T, ceil(cf k T / E)) tokens of each sequence
"""
from __future__ import annotations

import math


def capacity_limit(capacity_factor: float, topk: int, seq_len: int, n_experts: int) -> int:
    """Most assignments one expert keeps per sequence under token choice: ceil(cf k T / E)."""
    return math.ceil(capacity_factor * topk * seq_len / n_experts)


def expert_choice_capacity(capacity_factor: float | None, topk: int, seq_len: int, n_experts: int) -> int:
    """Tokens each expert takes per sequence under expert choice: min(T, ceil(cf k T / E)),
    cf = 1 when null (so the average token is processed by k experts)."""
    cf = 1.0 if capacity_factor is None else capacity_factor
    return min(seq_len, math.ceil(cf * topk * seq_len / n_experts))
