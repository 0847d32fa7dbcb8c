"""Causal sliding window plus global tokens: the banded fast form.

    q: [B, H, T, D];  k, v: [B, H_kv, T, D];  o: [B, H, T, D];  G = H / H_kv query heads per
    key/value head (GQA);  w the window, b the query block, L = b + w - 1 the band.

Query i reads key j (j <= i) iff  i - j < w  or  j is global  or  (i is global and global
tokens read their prefix). The fast form never builds a [T, T] array:

  band     queries in blocks of b rows [s, s + b) against the keys [s - w + 1, s + b): L
           columns, windows (unfold) of the keys padded with w - 1 zero rows in front and up to
           the block multiple at the end, masked to 0 <= i - j < w and j >= 0;
  gk       followed, in the same key list of every block, by the global keys that some query
           reads outside its band (g <= T - 1 - w), masked to i - j >= w.
           So each block scores one key list of L + n_gk keys: one matmul, one in-place mask,
           one softmax per row (the exact joint one), one matmul with the values. Keys and values
           per block [B, H_kv, n_b, L + n_gk, D] (copied once), scores [B, H_kv, n_b, G b,
           L + n_gk]: memory O(T (b + w + n_gk)) per head.
  gq       (prefix mode) the global queries whose prefix is longer than the window (g >= w),
           gathered, scored densely against keys [0, g_last], masked causally; their rows replace
           the band's rows for those positions. [B, H_kv, G n_gq, g_last + 1].

Work computed per query head (each a q k^T and a p v matmul, 2 D FLOPs per pair each):
    n_b b L  +  n_b b n_gk  +  n_gq (g_last + 1)    pairs   (costs.py: `WindowPlan.computed_pairs`)
which includes the masked slack of the band (the triangle corners, the w - 1 padded columns of
the first block, the rows padding T to n_b b) and the global-query rows the band also computed.
With w' = min(w, T) and b' = min(b, T) in place of w and b, a short sequence costs no more
than its length allows. `attended_pairs` (costs.py) counts the pairs the mask keeps, exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .costs import CHUNK_ELEMENTS, WindowPlan


def _block_mask(plan: WindowPlan, device) -> torch.Tensor:
    """bool [n_b, 1, b, L + n_gk]: which columns of each block's key list a row reads."""
    b, w, nb, L = plan.block, plan.window, plan.n_blocks, plan.band
    i = (torch.arange(nb, device=device)[:, None] * b + torch.arange(b, device=device)[None, :])[..., None]
    j = i - i % b - (w - 1) + torch.arange(L, device=device)  # key position of each band column
    band = (j >= 0) & (i - j >= 0) & (i - j < w)
    gk = torch.tensor(plan.global_keys, device=device, dtype=torch.long)
    return torch.cat([band, (i - gk) >= w], dim=-1)[:, None]


def _band_chunk(qb: torch.Tensor, kpad: torch.Tensor, vpad: torch.Tensor, kg, vg, mask: torch.Tensor,
                first: int, plan: WindowPlan) -> torch.Tensor:
    """Blocks first .. first + c - 1: qb [B, H_kv, c, G b, D] (scaled queries), kpad / vpad the
    keys / values with w - 1 zero rows in front (and padded to the block multiple), kg / vg
    [B, H_kv, n_gk, D] or None, mask [c, 1, b, L + n_gk]. Returns [B, H_kv, c, G b, D]."""
    bsz, hkv, c, gb, d = qb.shape
    b, L = plan.block, plan.band
    g = gb // b
    start = first * b
    # each block's key list [B, H_kv, c, L + n_gk, D]: its band, then the global keys
    kb = kpad[:, :, start:start + (c - 1) * b + L].unfold(2, L, b).transpose(-1, -2)
    vb = vpad[:, :, start:start + (c - 1) * b + L].unfold(2, L, b).transpose(-1, -2)
    if kg is not None:
        kb = torch.cat([kb, kg[:, :, None].expand(-1, -1, c, -1, -1)], dim=3)
        vb = torch.cat([vb, vg[:, :, None].expand(-1, -1, c, -1, -1)], dim=3)
    else:  # one copy either way: the batched matmul would copy the strided view unless B H_kv = 1
        kb, vb = kb.contiguous(), vb.contiguous()
    n_keys = kb.shape[3]
    scores = (qb @ kb.transpose(-1, -2)).view(bsz, hkv, c, g, b, n_keys)
    scores.masked_fill_(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1, dtype=torch.promote_types(qb.dtype, torch.float32)).to(vb.dtype)
    return p.view(bsz, hkv, c, gb, n_keys) @ vb


def chunk_blocks(plan: WindowPlan, batch: int, n_heads: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Query blocks per chunk: as many as keep one chunk's scores within `budget` elements."""
    per_block = batch * n_heads * plan.block * (plan.band + len(plan.global_keys))
    return max(1, min(plan.n_blocks, budget // per_block))


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: WindowPlan,
                     scale: float | None = None, budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """The banded form (module docstring). q [B, H, T, D], k, v [B, H_kv, T, D] -> [B, H, T, D].
    Softmax in float32 (float64 stays float64); the matmuls in the inputs' dtype. Query blocks
    go in chunks of `chunk_blocks(...)`; with gradients each chunk is checkpointed (its scores
    and probabilities are recomputed in backward instead of kept)."""
    bsz, h, t, d = q.shape
    hkv = k.shape[1]
    if t != plan.seq_len or h % hkv or k.shape != v.shape or k.shape[2] != t:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not "
                         f"fit a plan for T={plan.seq_len}")
    g = h // hkv
    b, w, nb = plan.block, plan.window, plan.n_blocks
    tp = nb * b
    scale = d ** -0.5 if scale is None else scale

    # queries [B, H_kv, n_b, G b, D]: the G heads sharing a key head stacked in each block
    qs = q * scale
    qb = F.pad(qs, (0, 0, 0, tp - t)).view(bsz, hkv, g, nb, b, d).transpose(2, 3).reshape(bsz, hkv, nb, g * b, d)
    kpad, vpad = F.pad(k, (0, 0, w - 1, tp - t)), F.pad(v, (0, 0, w - 1, tp - t))
    kg = vg = None
    if plan.global_keys:
        gk = torch.tensor(plan.global_keys, device=q.device)
        kg, vg = k.index_select(2, gk), v.index_select(2, gk)
    mask = _block_mask(plan, q.device)
    step = chunk_blocks(plan, bsz, h, budget)
    recompute = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    outs = []
    for first in range(0, nb, step):
        args = (qb[:, :, first:first + step], kpad, vpad, kg, vg, mask[first:first + step], first, plan)
        outs.append(checkpoint(_band_chunk, *args, use_reentrant=False) if recompute else _band_chunk(*args))
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    o = o.view(bsz, hkv, nb, g, b, d).transpose(2, 3).reshape(bsz, h, tp, d)[:, :, :t]

    if plan.global_queries:
        gq = torch.tensor(plan.global_queries, device=q.device)
        tk = plan.query_key_len
        qg = qs.view(bsz, hkv, g, t, d).index_select(3, gq).reshape(bsz, hkv, g * len(gq), d)
        causal = torch.arange(tk, device=q.device)[None, :] <= gq[:, None]  # [n_gq, tk]
        sq = (qg @ k[:, :, :tk].transpose(-1, -2)).view(bsz, hkv, g, len(gq), tk)
        soft = torch.promote_types(q.dtype, torch.float32)
        pq = torch.softmax(sq.masked_fill(~causal, float("-inf")), dim=-1, dtype=soft).to(v.dtype)
        og = (pq.view(bsz, hkv, g * len(gq), tk) @ v[:, :, :tk]).view(bsz, h, len(gq), d)
        o = o.index_copy(2, gq, og)
    return o
