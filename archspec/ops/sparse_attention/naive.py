"""Plain forms of sparse attention: the ground truth (a dense masked softmax over an explicit
[T, T] mask built from the definition) and the decoding step.

    q: [B, H, T, D];  k, v: [B, H_kv, T, D];  mask: bool [T, T] or [B, H, T, T] (True = read)
    o = softmax(q k^T / sqrt(D) masked) v        (key/value head h // (H / H_kv) for head h)

    window_mask(T, window, global_first, global_every, global_reads)   the window's definition
    block_topk_mask(selection, T, block_size, (B, H))                  block top-k's definition
    is_global(T, global_first, global_every)                           bool [T]

Quadratic in T on purpose: this is what the fast forms (window.py, topk.py) must reproduce.
"""
from __future__ import annotations

import math

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


def is_global(seq_len: int, first: int = 0, every: int | None = None, device=None) -> torch.Tensor:
    """bool [T]: which positions are global (same definition as global_positions)."""
    p = torch.arange(seq_len, device=device)
    out = p < first
    if every:
        out = out | (p % every == every - 1)
    return out


def window_mask(seq_len: int, window: int, global_first: int = 0, global_every: int | None = None,
                global_reads: str = "prefix", device=None) -> torch.Tensor:
    """bool [T, T], the definition: query i reads key j iff j <= i and (i - j < window or j is
    global or (i is global and global_reads == 'prefix'))."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    g = is_global(seq_len, global_first, global_every, device)
    reads = (i - j < window) | g[None, :]
    if global_reads == "prefix":
        reads = reads | g[:, None]
    return (j <= i) & reads


def block_topk_mask(selection, seq_len: int, block_size: int, shape: tuple[int, int]) -> torch.Tensor:
    """bool [B, H, T, T], the definition: query i reads j iff (blk(j) = blk(i) and j <= i) or blk(j)
    is one of i's selected blocks. `shape` = (B, H); `selection` from select_blocks (or None)."""
    bsz, h = shape
    b = min(block_size, seq_len)
    i = torch.arange(seq_len)[:, None]
    j = torch.arange(seq_len)[None, :]
    own = (j // b == i // b) & (j <= i)
    mask = own.expand(bsz, h, seq_len, seq_len).clone()
    if selection is not None:
        idx, valid = selection
        n_b = math.ceil(seq_len / b)
        chosen = torch.zeros(bsz, h, seq_len, n_b + 1, dtype=torch.bool, device=idx.device)
        # invalid slots point at the dummy column n_b
        chosen[:, :, b:].scatter_(-1, idx.masked_fill(~valid, n_b), True)
        mask = mask.to(idx.device) | chosen[..., :n_b].gather(-1, (j // b).expand(bsz, h, seq_len, seq_len).to(idx.device))
    return mask
