"""MoE routing: which tokens go to which experts, with what weight.

    logits: [N, E] (float32 or wider), N = B T tokens in row order n = b T + t
    token_choice:     p = softmax(logits);  (w, idx) = top-k(p) [N, k];  w <- w / sum_k w (optional)
    chunk routing:    s_0 = start (learned),  s_c = mean(x[(c-1)C : cC]) for c >= 1   [B, n_c, d]
                      chunk c's decision (from s_c) applies to its tokens [cC, (c+1)C)
    expert_choice:    per sequence, expert e takes the C tokens with the largest p[t, e],
                      weight p[t, e]  ->  sel, vals [B, C, E]
    capacity (token and chunk routing): expert e keeps at most L = ceil(cf k T / E) assignments
                      of each sequence, the earliest in time (first come, first served), so
                      whether a token is kept depends only on the tokens before it
    losses:           load balance E sum_e f_e P_e (f_e: fraction of the N k assignments made to
                      e before capacity, P_e: mean of p[:, e]; 1 when balanced, E when collapsed),
                      z-loss mean_n logsumexp(logits_n)^2
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Assignments:
    """Kept (token, expert, weight) triples in expert-major order (token order within an
    expert); `counts[e]` rows belong to expert e (host ints)."""

    token: torch.Tensor    # int64 [P]: flat token index b T + t
    expert: torch.Tensor   # int64 [P]
    weight: torch.Tensor   # [P]
    counts: list[int]


def capacity_limit(capacity_factor: float, topk: int, seq_len: int, n_experts: int) -> int:
    """Most assignments one expert keeps per sequence under token choice: ceil(cf k T / E)."""
    return math.ceil(capacity_factor * topk * seq_len / n_experts)


def expert_choice_capacity(capacity_factor: float | None, topk: int, seq_len: int, n_experts: int) -> int:
    """Tokens each expert takes per sequence under expert choice: min(T, ceil(cf k T / E)),
    cf = 1 when null (so the average token is processed by k experts)."""
    cf = 1.0 if capacity_factor is None else capacity_factor
    return min(seq_len, math.ceil(cf * topk * seq_len / n_experts))


def token_choice(logits: torch.Tensor, topk: int, renormalize: bool):
    """softmax over experts, top-k. Returns (probs [N, E], weights [N, k], idx [N, k])."""
    probs = torch.softmax(logits, dim=-1)
    weights, idx = probs.topk(topk, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return probs, weights, idx


def chunk_summaries(x: torch.Tensor, start: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The routing input of every chunk, from tokens strictly before it: x [B, T, d] ->
    [B, ceil(T / C), d], row 0 = `start`, row c = mean of chunk c - 1 (always a full chunk)."""
    b, t, d = x.shape
    n_chunks = -(-t // chunk_size)
    full = (n_chunks - 1) * chunk_size   # tokens in the chunks that are summarised
    means = x[:, :full].reshape(b, n_chunks - 1, chunk_size, d).mean(2)
    return torch.cat([start.to(x.dtype).expand(b, 1, d), means], dim=1)


def expand_chunks(per_chunk: torch.Tensor, chunk_size: int, seq_len: int) -> torch.Tensor:
    """[B, n_c, ...] -> [B, T, ...]: every token takes its chunk's row."""
    return per_chunk.repeat_interleave(chunk_size, dim=1)[:, :seq_len]


def sort_assignments(idx: torch.Tensor, weights: torch.Tensor, n_experts: int, batch: int,
                     seq_len: int, limit: int | None) -> Assignments:
    """Token-choice assignments (idx, weights [N, k]) sorted expert-major, then by token; with
    `limit`, each (expert, sequence) group keeps only its first `limit` rows in time order."""
    n, k = idx.shape
    expert = idx.reshape(-1)
    order = torch.argsort(expert, stable=True)     # rows were token-major: stays token-ordered
    expert, token = expert[order], order // k
    weight = weights.reshape(-1)[order]
    if limit is not None:
        group = expert * batch + token // seq_len  # (expert, sequence), in sorted order
        sizes = torch.bincount(group, minlength=n_experts * batch)
        first = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(group.numel(), device=idx.device) - first[group]
        keep = rank < limit
        expert, token, weight = expert[keep], token[keep], weight[keep]
    counts = torch.bincount(expert, minlength=n_experts).tolist()
    return Assignments(token, expert, weight, counts)


def expert_choice(probs: torch.Tensor, capacity: int):
    """probs [B, T, E] -> (sel, vals) [B, C, E]: each expert's top-C tokens of each sequence."""
    vals, sel = probs.topk(capacity, dim=1)
    return sel, vals


def expert_choice_assignments(sel: torch.Tensor, vals: torch.Tensor, seq_len: int) -> Assignments:
    """Expert-choice picks as expert-major assignments (B C rows per expert)."""
    b, c, e = sel.shape
    offset = torch.arange(b, device=sel.device)[:, None, None] * seq_len
    token = (sel + offset).permute(2, 0, 1).reshape(-1)
    weight = vals.permute(2, 0, 1).reshape(-1)
    expert = torch.arange(e, device=sel.device).repeat_interleave(b * c)
    return Assignments(token, expert, weight, [b * c] * e)


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
    b, _, e = sel.shape
    combine = torch.zeros(b, seq_len, e, dtype=vals.dtype, device=vals.device)
    return combine.scatter_(1, sel, vals).reshape(b * seq_len, e)


def load_balancing_loss(probs: torch.Tensor, idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """E sum_e f_e P_e, f_e = fraction of the N k assignments made to e, P_e = mean p[:, e]."""
    counts = torch.zeros(n_experts, dtype=probs.dtype, device=probs.device)
    counts.index_add_(0, idx.reshape(-1), torch.ones(idx.numel(), dtype=probs.dtype, device=probs.device))
    return n_experts * (counts / idx.numel() * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean over rows of logsumexp(logits)^2 (ST-MoE's router z-loss)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()
