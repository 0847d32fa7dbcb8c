"""Block-sparse top-k attention (MoBA-style gating, per query): the fast form.

    q: [B, H, T, D];  k, v: [B, H_kv, T, D];  o: [B, H, T, D];  blocks of b positions,
    n_b = ceil(T / b) blocks; blk(i) = floor(i / b).

Selection (no gradient): the complete blocks before a query's own block are its candidates;
each is represented by its mean-pooled key kbar_m = mean_{j in block m} k_j (after RoPE, in
float32). Query i (of head h) scores them with  s_im = q_i . kbar_m  and keeps the top
min(k, blk(i)) of them (`select_blocks`). Selection is per query and per query head, so it is
causal: it reads only q_i and blocks that end before blk(i) starts.

Attention (differentiable): query i reads its own block causally (j in [blk(i) b, i]) plus every
key of its selected blocks, one softmax over the union.

Fast form. The own block is a dense [b, b] causal tile per block (n_b b^2 pairs per head). For
the selected blocks the gather is done per key block, not per query (as MoBA does): the
(query, block) selections are sorted by block, each block's queries are packed into tiles of
`tile` = max(16, b) rows (the last tile of a block padded), and each tile is scored against its
block's b keys: queries gathered R x D, keys (R / tile) x b x D, scores R x b, with R the padded
row count (`TilePlan.rows`), instead of T k b D for gathering keys per query. The tiles go in
chunks (about 2^22 score elements each), merged with the own block by an online softmax: a
running row maximum m, and sums and numerators rescaled by exp(m_old - m_new) (scatter_reduce,
index_add). With gradients each chunk is checkpointed, so backward keeps the chunk inputs, not
its gathers and scores.

Work computed per sequence (2 D FLOPs per pair for q k^T, 2 D for p v):
    gate   2 D H (T - b) (n_b - 1)          (queries of blocks >= 1 against the pooled keys)
    own    4 D H n_b b^2
    tiles  4 D b R,   H S <= R < H S + H (n_b - 1) tile per sequence,
           S = sum_{i >= b} min(k, blk(i)) selections per head
R depends on how the selections fall into blocks (the padding of each block's last tile); the
exact R of a forward is returned with the output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .costs import CHUNK_ELEMENTS, tile_rows


@torch.no_grad()
def select_blocks(q: torch.Tensor, k: torch.Tensor, block_size: int, topk: int):
    """Top-k earlier blocks per query (module docstring). Returns (idx, valid), both
    [B, H, T - b, min(k, n_b - 1)] for the queries b .. T - 1 (block 0 has no candidates), or
    None when there is no candidate at all (T <= b or k = 0)."""
    bsz, h, t, d = q.shape
    hkv = k.shape[1]
    b = min(block_size, t)
    n_sel = math.ceil(t / b) - 1
    if n_sel == 0 or topk == 0:
        return None
    dtype = torch.promote_types(q.dtype, torch.float32)
    kbar = k[:, :, : n_sel * b].to(dtype).view(bsz, hkv, n_sel, b, d).mean(-2)
    qg = q.to(dtype).view(bsz, hkv, h // hkv, t, d)[:, :, :, b:].reshape(bsz, hkv, -1, d)
    gate = (qg @ kbar.transpose(-1, -2)).view(bsz, h, t - b, n_sel)
    own = torch.arange(b, t, device=q.device) // b
    gate = gate.masked_fill(torch.arange(n_sel, device=q.device)[None, :] >= own[:, None], float("-inf"))
    vals, idx = gate.topk(min(topk, n_sel), dim=-1)
    return idx, vals > float("-inf")


@dataclass
class TilePlan:
    """Packed rows of the selected-block part: row r holds query `row_query[r]` (a flat index
    into [B H T_pad] query rows; 0 on padding rows) when `row_valid[r]`; tile n (rows n*tile ..
    (n+1)*tile - 1) reads key block `tile_key[n]` (a flat index into [B H_kv n_b] blocks)."""

    row_query: torch.Tensor
    row_valid: torch.Tensor
    tile_key: torch.Tensor
    tile: int

    @property
    def rows(self) -> int:
        return self.row_query.numel()


def plan_tiles(idx: torch.Tensor, valid: torch.Tensor, n_kv_heads: int, seq_len: int,
               block_size: int, tile: int | None = None) -> TilePlan:
    """Sort the selections by (batch, head, block), then by query; pad each group to tiles."""
    bsz, h, tq, kk = idx.shape
    device = idx.device
    b = min(block_size, seq_len)
    tile = tile or tile_rows(block_size)
    n_b = math.ceil(seq_len / b)
    n_sel, tp, g = n_b - 1, n_b * b, h // n_kv_heads
    bh, i, s = valid.view(bsz * h, tq, kk).nonzero(as_tuple=True)
    m = idx.view(bsz * h, tq, kk)[bh, i, s]
    group = bh * n_sel + m
    pos_in_seq = i + b
    order = torch.argsort(group * tp + pos_in_seq)
    group, qrow = group[order], (bh * tp + pos_in_seq)[order]
    counts = torch.bincount(group, minlength=bsz * h * n_sel)
    tiles = (counts + tile - 1) // tile
    first_tile = torch.cumsum(tiles, 0) - tiles
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(group.numel(), device=device) - start[group]
    pos = first_tile[group] * tile + rank
    n_rows = int(tiles.sum()) * tile
    row_query = torch.zeros(n_rows, dtype=torch.long, device=device).index_put_((pos,), qrow)
    row_valid = torch.zeros(n_rows, dtype=torch.bool, device=device).index_put_(
        (pos,), torch.ones_like(pos, dtype=torch.bool))
    tile_group = torch.repeat_interleave(torch.arange(bsz * h * n_sel, device=device), tiles)
    tbh, tm = tile_group // n_sel, tile_group % n_sel
    tile_key = ((tbh // h) * n_kv_heads + (tbh % h) // g) * n_b + tm
    return TilePlan(row_query, row_valid, tile_key, tile)


def _tiles_chunk(q_flat, k_flat, v_flat, row_query, row_valid, tile_key, n_rows: int, tile: int):
    """Tiles of one chunk: q_flat [B H T_pad, D] (scaled queries), k_flat / v_flat [B H_kv n_b,
    b, D] (key blocks). Returns, per query row of the whole batch: the chunk's row maximum m_c
    (no gradient; -inf for rows without a selection here), sum_j exp(s - m_c) and
    sum_j exp(s - m_c) v_j over the chunk's selected keys."""
    nt, d = tile_key.numel(), q_flat.shape[-1]
    soft = torch.promote_types(q_flat.dtype, torch.float32)
    q_rows = q_flat.index_select(0, row_query).view(nt, tile, d)
    k_tiles = k_flat.index_select(0, tile_key)
    v_tiles = v_flat.index_select(0, tile_key)
    s = (q_rows @ k_tiles.transpose(-1, -2)).to(soft)  # [n_tiles, tile, b]
    s.masked_fill_(~row_valid.view(nt, tile, 1), float("-inf"))
    m = torch.full((n_rows,), float("-inf"), dtype=soft, device=s.device)
    m = m.scatter_reduce(0, row_query, s.detach().amax(-1).reshape(-1), "amax")
    shift = torch.where(torch.isfinite(m), m, 0.0)  # rows without a selection here: no -inf - -inf
    e = (s - shift[row_query].view(nt, tile, 1)).exp_()  # padding rows: exp(-inf) = 0
    den = torch.zeros(n_rows, dtype=soft, device=s.device).index_add(0, row_query, e.sum(-1).reshape(-1))
    num = torch.zeros(n_rows, d, dtype=soft, device=s.device).index_add(
        0, row_query, (e.to(v_flat.dtype) @ v_tiles).reshape(-1, d).to(soft))
    return m, den, num


def block_topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, topk: int,
                         scale: float | None = None, tile: int | None = None, selection=None,
                         budget: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, int]:
    """The fast form (module docstring). q [B, H, T, D], k, v [B, H_kv, T, D] -> (o [B, H, T, D],
    R the padded rows of the selected-block part for the whole batch; 0 without selections).
    `selection`: a precomputed `select_blocks` result (default: computed here). The tiles go in
    chunks of about `budget` score elements, merged by an online softmax (running row maximum,
    rescaled sums); with gradients each chunk is checkpointed (recomputed in backward)."""
    bsz, h, t, d = q.shape
    hkv = k.shape[1]
    if h % hkv or k.shape != v.shape or k.shape[2] != t:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit")
    g = h // hkv
    b = min(block_size, t)
    n_b = math.ceil(t / b)
    tp = n_b * b
    scale = d ** -0.5 if scale is None else scale
    soft = torch.promote_types(q.dtype, torch.float32)
    qs = F.pad(q * scale, (0, 0, 0, tp - t)).view(bsz, hkv, g, n_b, b, d)
    kb = F.pad(k, (0, 0, 0, tp - t)).view(bsz, hkv, 1, n_b, b, d)
    vb = F.pad(v, (0, 0, 0, tp - t)).view(bsz, hkv, 1, n_b, b, d)
    causal = torch.ones(b, b, dtype=torch.bool, device=q.device).tril()
    s_own = (qs @ kb.transpose(-1, -2)).masked_fill_(~causal, float("-inf"))  # [B, H_kv, G, n_b, b, b]
    if selection is None:
        selection = select_blocks(q, k, block_size, topk)
    if selection is None:
        p = torch.softmax(s_own, dim=-1, dtype=soft).to(v.dtype)
        return (p @ vb).view(bsz, h, tp, d)[:, :, :t], 0

    # own block first: its row maximum starts the running one (finite: the diagonal is read)
    n_rows = bsz * h * tp
    s_own = s_own.to(soft).reshape(n_rows, b)
    m = s_own.detach().amax(-1)
    e_own = (s_own - m[:, None]).exp_()
    den = e_own.sum(-1)
    num = (e_own.to(v.dtype).view(bsz, hkv, g, n_b, b, b) @ vb).reshape(n_rows, d).to(soft)

    plan = plan_tiles(*selection, hkv, t, block_size, tile)
    tile = plan.tile
    q_flat, k_flat, v_flat = qs.reshape(n_rows, d), kb.reshape(-1, b, d), vb.reshape(-1, b, d)
    step = max(1, budget // (tile * b))  # tiles per chunk
    recompute = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    for first in range(0, plan.tile_key.numel(), step):
        rows = slice(first * tile, (first + step) * tile)
        args = (q_flat, k_flat, v_flat, plan.row_query[rows], plan.row_valid[rows],
                plan.tile_key[first:first + step], n_rows, tile)
        m_c, den_c, num_c = checkpoint(_tiles_chunk, *args, use_reentrant=False) if recompute else _tiles_chunk(*args)
        m_new = torch.maximum(m, m_c)
        f_old, f_new = torch.exp(m - m_new), torch.exp(m_c - m_new)  # shifts: no gradient
        den = den * f_old + den_c * f_new
        num = num * f_old[:, None] + num_c * f_new[:, None]
        m = m_new
    o = (num / den[:, None]).to(v.dtype)
    return o.view(bsz, h, tp, d)[:, :, :t], plan.rows
