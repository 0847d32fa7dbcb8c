"""The fast product-key lookup (the package docstring gives the math and why it is exact):
score each query half against its n sub-keys, keep the top knn of each half, and take the knn
best of the knn^2 candidate sums; read the chosen values by an embedding bag."""
from __future__ import annotations

import torch
from torch.nn import functional as F


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


def read_values(slots: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """slots int64 [N, m], weights [N, m], table [rows, v] -> sum_m weights * table[slots] [N, v],
    by an embedding bag (gathers the m rows and sums them weighted, without materialising
    [N, m, v]; its backward writes only the touched rows of the table's gradient)."""
    return F.embedding_bag(slots, table, mode="sum", per_sample_weights=weights.to(table.dtype))
