"""Plain forms of sparse attention: the ground truth (a dense masked softmax over an explicit
[T, T] mask built from the definition) and the decoding step.

    q: [B, H, T, D];  k, v: [B, H_kv, T, D];  mask: bool [T, T] or [B, H, T, T] (True = read)
    o = softmax(q k^T / sqrt(D) masked) v        (key/value head h // (H / H_kv) for head h)

Quadratic in T on purpose: this is what the fast forms (window.py, topk.py) must reproduce.
"""
from __future__ import annotations

import torch


def dense_masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                           scale: float | None = None) -> torch.Tensor:
    """Every row of the mask must keep at least one key (causal masks keep the diagonal)."""
    h, hkv, d = q.shape[1], k.shape[1], q.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    k = k.repeat_interleave(h // hkv, dim=1)
    v = v.repeat_interleave(h // hkv, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(v.dtype)
    return p @ v


def attend_one(q_t: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None,
               scale: float | None = None) -> torch.Tensor:
    """One query position per sequence against a cache: q_t [B, H, D], k, v [B, H_kv, n, D],
    keep bool [n] or [B, H, n] (None = all). Returns [B, H, D]."""
    bsz, h, d = q_t.shape
    hkv = k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    s = (q_t.view(bsz, hkv, h // hkv, 1, d) @ k[:, :, None].transpose(-1, -2)).view(bsz, h, -1) * scale
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1, dtype=torch.promote_types(q_t.dtype, torch.float32)).to(v.dtype)
    return (p.view(bsz, hkv, h // hkv, 1, -1) @ v[:, :, None]).view(bsz, h, d)
