"""The dense ground truth of mixture routing and execution: the routing as a dense [N, E] weight
matrix (zero = not assigned), written independently of routing.sort_assignments, and every
expert run on every token, weighted by it.

    dense_combine(idx, weights, B, T, E, limit)   -> combine [B T, E]   (token choice; capacity
        by a running count over time)
    dense_combine_expert_choice(sel, vals, T)     -> combine [B T, E]
    dense_experts(x [N, d], combine [N, E], w_gate, w_up, w_down, act) -> [N, d]
        out = sum_e combine[:, e] * gated_expert(x, W_gate,e, W_up,e, W_down,e)

dense_experts costs 6 d f E FLOPs per token, E/k times the grouped form's (experts.py): the
ground truth and the benchmark baseline.
"""
from __future__ import annotations

import torch

from .experts import gated_expert


def dense_combine(idx: torch.Tensor, weights: torch.Tensor, batch: int, seq_len: int,
                  n_experts: int, limit: int | None) -> torch.Tensor:
    """Token-choice routing as a dense [B T, E] matrix of weights, zero where a token does not
    use an expert; capacity by a running count over time (written independently of
    sort_assignments, for the ground truth)."""
    combine = torch.zeros(batch, seq_len, n_experts, dtype=weights.dtype, device=weights.device)
    combine.scatter_(-1, idx.view(batch, seq_len, -1), weights.view(batch, seq_len, -1))
    if limit is not None:
        chosen = torch.zeros_like(combine, dtype=torch.int64)
        chosen.scatter_(-1, idx.view(batch, seq_len, -1), 1)
        seen = chosen.cumsum(1)                  # assignments to e up to and including t
        combine = combine * ((chosen == 1) & (seen <= limit))
    return combine.reshape(batch * seq_len, n_experts)


def dense_combine_expert_choice(sel: torch.Tensor, vals: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Expert-choice picks (sel, vals [B, C, E]) as a dense [B T, E] matrix of weights."""
    b, _, e = sel.shape
    combine = torch.zeros(b, seq_len, e, dtype=vals.dtype, device=vals.device)
    return combine.scatter_(1, sel, vals).reshape(b * seq_len, e)


def dense_experts(x: torch.Tensor, combine: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                  w_down: torch.Tensor, act) -> torch.Tensor:
    """Every expert on every token, masked by the combine weights [N, E] (zero where a token is
    not assigned). The plain ground truth: E/k times the work of grouped_experts."""
    out = torch.zeros_like(x)
    gates, ups, downs = w_gate.unbind(0), w_up.unbind(0), w_down.unbind(0)
    for e in range(combine.shape[-1]):
        out = out + combine[:, e, None].to(x.dtype) * gated_expert(x, gates[e], ups[e], downs[e], act)
    return out
