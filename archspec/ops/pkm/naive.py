"""The plain forms of the product-key lookup: every one of the n^2 slots scored (the ground
truth of product_topk), a flat memory's scores over the materialised product keys (tests and
benchmark), and the value read by indexing and summing (the ground truth of read_values)."""
from __future__ import annotations

import torch

from .lookup import subkey_scores


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


def read_values_plain(slots: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Ground truth of read_values: index, weight, sum."""
    return (table[slots] * weights.to(table.dtype)[..., None]).sum(-2)
