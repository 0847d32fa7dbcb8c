"""Routing of mixtures (MoE's experts, MoM's memories): which tokens go to which experts, with
what weight.

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
                      e before capacity, P_e: mean of p[:, e]; 1 when balanced, E when collapsed;
                      MoM's form counts f_e per token: k when balanced), z-loss
                      mean_n logsumexp(logits_n)^2
The capacity limits are in costs.py; the dense views of the routing (the ground truth's) in
naive.py.
"""
from __future__ import annotations

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


def load_balancing_loss(probs: torch.Tensor, idx: torch.Tensor, n_experts: int,
                        fraction_of: str = "assignments") -> torch.Tensor:
    """E sum_e f_e P_e over probs [N, E] and top-k choices idx [N, k] (distinct in each row):
    P_e = mean p[:, e], and f_e the count of e in idx over
        fraction_of="assignments" (Switch; MoE): the N k assignments, so sum_e f_e = 1: balanced
            routing gives 1, routing collapsed onto one expert E;
        fraction_of="tokens" (MoM, as fla): the N tokens (the fraction whose top-k holds e), so
            sum_e f_e = k: balanced routing gives k."""
    if fraction_of not in ("assignments", "tokens"):
        raise ValueError(f"fraction_of must be 'assignments' or 'tokens', got {fraction_of!r}")
    counts = torch.zeros(n_experts, dtype=probs.dtype, device=probs.device)
    counts.index_add_(0, idx.reshape(-1), torch.ones(idx.numel(), dtype=probs.dtype, device=probs.device))
    total = idx.shape[0] if fraction_of == "tokens" else idx.numel()
    return n_experts * (counts / total * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean over rows of logsumexp(logits)^2 (ST-MoE's router z-loss)."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()
