"""Plain PyTorch ground truth of MoM's dispatch: every kernel test compares against these."""
from __future__ import annotations

import torch


def gather_rows(x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """x [N, D], token int64 [P] -> x[token] [P, D]."""
    return x[token]


def combine_rows(o: torch.Tensor, weight: torch.Tensor, token: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """o [P, D], weight [P], token int64 [P] -> out [n_tokens, D] (o's dtype), with
    out[t] = sum over rows r with token[r] == t of weight[r] * o[r], accumulated in float32
    (float64 for float64 inputs); a token with no row gets zeros."""
    acc = torch.promote_types(torch.promote_types(o.dtype, weight.dtype), torch.float32)
    rows = o.to(acc) * weight.to(acc)[:, None]
    out = torch.zeros(n_tokens, o.shape[1], dtype=acc, device=o.device).index_add_(0, token, rows)
    return out.to(o.dtype)
