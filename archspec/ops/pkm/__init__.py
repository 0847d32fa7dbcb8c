"""Product-key lookup (Lample et al., 2019, "Large Memory Layers with Product Keys").

    q: [N, H, K] queries (N tokens, H heads, K = k_dim even, c = K / 2)
    keys: [H, 2, n, c] sub-keys: per head, n for the first half of the query, n for the second
    slot (i, j), i, j in [0, n), has the product key [k1_i ; k2_j] and index i n + j; n^2 slots
    score(i, j) = q . [k1_i ; k2_j] = q1 . k1_i + q2 . k2_j = s1_i + s2_j

    product_topk(q, keys, knn) -> (scores [N, H, knn], slots [N, H, knn])   the fast form
        s = [q1 k1^T, q2 k2^T]          [H, 2, N, n]   (one batched matmul, 2 N H n c MACs)
        (s1', i'), (s2', j') = top-knn of each half                      [H, N, knn] each
        candidates s1'_a + s2'_b, slot i'_a n + j'_b                      [H, N, knn^2]
        the knn best candidates, best first
    full_topk(q, keys, knn)    -> the same pair, by scoring all n^2 slots (s1_i + s2_j for
        every i, j: [H, N, n^2]) and taking the top knn: the ground truth.
    flat_scores(q, keys)       -> [H, N, n^2]: the scores of a flat memory, q against each of
        the n^2 materialised product keys [k1_i ; k2_j] (a matmul of 2 N H n^2 K FLOPs); the
        same numbers as s1_i + s2_j up to rounding (tests, benchmark).
    read_values(slots, weights, table) -> [N, v]: sum over the H knn (slot, weight) pairs of
        weight * table[slot], by F.embedding_bag(mode='sum', per_sample_weights) (the fast form);
    read_values_plain(...)     -> the same, by indexing and summing (the ground truth).

Why the fast form finds the exact top knn of all n^2 slots: let (i, j) be among the knn best
slots and suppose i is not among the knn best first-half sub-keys. Then knn indices i' have
s1_i' > s1_i, and the knn slots (i', j) score s1_i' + s2_j > s1_i + s2_j: (i, j) would not be
among the knn best. So i is in top-knn(s1), likewise j in top-knn(s2): every slot of the exact
top knn is a candidate. (With ties among scores the top knn is not unique; both forms return a
valid one and the same scores.) The candidate sums are the same floating-point additions as in
the full scoring, so both forms select slots with bit-identical scores.

FLOPs per token (1 FLOP = one multiply or one add; a comparison counted as 1): sub-key scores
2 H n K (matmul: what FlopCounterMode counts); top-knn of each half 2 H n comparisons; candidate
sums H knn^2; top-knn of the candidates H knn^2 comparisons; the value read H knn v multiplies
and (H knn - 1) v adds (an embedding bag: FlopCounterMode has no formula for it and counts 0).
Scoring every slot instead costs H n^2 adds and H n^2 comparisons on top of the same sub-key
matmul (full_topk; at n 512, knn 32: 524,288 per head against 3,072 for the product lookup), and
a flat memory's matmul (flat_scores) is 2 H n^2 K, n times the sub-key matmul.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["subkey_scores", "product_topk", "full_topk", "flat_scores", "read_values",
           "read_values_plain", "lookup_other_flops"]


def subkey_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """q [N, H, K], keys [H, 2, n, K/2] -> scores of each query half against its sub-keys
    [H, 2, N, n] (one batched matmul over the 2H (head, half) pairs)."""
    n_tok, h, k = q.shape
    halves = q.reshape(n_tok, h, 2, k // 2).permute(1, 2, 0, 3)  # [H, 2, N, c]
    return torch.matmul(halves, keys.transpose(-1, -2))


def product_topk(q: torch.Tensor, keys: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The knn best slots of each (token, head) through the knn x knn candidates of the two
    halves: (scores [N, H, knn], slot indices int64 [N, H, knn]), best first."""
    n = keys.shape[2]
    s = subkey_scores(q, keys)
    top, idx = s.topk(knn, dim=-1)                                  # [H, 2, N, knn]
    cand = top[:, 0, :, :, None] + top[:, 1, :, None, :]            # [H, N, knn, knn]
    cand_slot = idx[:, 0, :, :, None] * n + idx[:, 1, :, None, :]
    best, pick = cand.flatten(-2).topk(knn, dim=-1)                 # [H, N, knn]
    slot = cand_slot.flatten(-2).gather(-1, pick)
    return best.permute(1, 0, 2), slot.permute(1, 0, 2)


def full_topk(q: torch.Tensor, keys: torch.Tensor, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth: score every one of the n^2 slots (s1_i + s2_j) and take the knn best."""
    s = subkey_scores(q, keys)
    every = (s[:, 0, :, :, None] + s[:, 1, :, None, :]).flatten(-2)  # [H, N, n^2], slot i n + j
    best, slot = every.topk(knn, dim=-1)
    return best.permute(1, 0, 2), slot.permute(1, 0, 2)


def flat_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """A flat memory's scores: q [N, H, K] against the n^2 materialised product keys
    [k1_i ; k2_j] -> [H, N, n^2] (slot i n + j)."""
    h, _, n, c = keys.shape
    full_keys = torch.cat([keys[:, 0, :, None, :].expand(h, n, n, c),
                           keys[:, 1, None, :, :].expand(h, n, n, c)], dim=-1).reshape(h, n * n, 2 * c)
    return torch.matmul(q.transpose(0, 1), full_keys.transpose(-1, -2))


def read_values(slots: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """slots int64 [N, m], weights [N, m], table [rows, v] -> sum_m weights * table[slots] [N, v],
    by an embedding bag (gathers the m rows and sums them weighted, without materialising
    [N, m, v]; its backward writes only the touched rows of the table's gradient)."""
    return F.embedding_bag(slots, table, mode="sum", per_sample_weights=weights.to(table.dtype))


def read_values_plain(slots: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Ground truth of read_values: index, weight, sum."""
    return (table[slots] * weights.to(table.dtype)[..., None]).sum(-2)


def lookup_other_flops(heads: int, n_keys: int, knn: int, v_dim: int) -> int:
    """Non-matmul FLOPs of one token's product_topk + read_values (see the module docstring):
    top-knn of the halves, candidate sums, their top-knn, the weighted sum of H knn rows."""
    return heads * (2 * n_keys + 2 * knn * knn) + heads * knn * v_dim + (heads * knn - 1) * v_dim
