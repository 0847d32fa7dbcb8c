"""The sparse_attention module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch

from ...ops import sparse_attention as SA
from ..attention.module import AttentionProjections
from ..base import ModelConfig
from .spec import _keeps_everything, _window_plan


class SparseAttentionModule(AttentionProjections):
    # "reference": dense attention over the explicit [T, T] mask (the ground truth)
    forms = ("fast", "reference")

    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__(cfg, model)
        self.cfg = dict(cfg)
        self.pattern = cfg["pattern"]
        self.last_padded_rows = 0  # block_topk: R of the latest fast forward (all sequences)

    def mask(self, q, k, t: int) -> torch.Tensor:
        """The definition's mask: [T, T] (window) or [B, H, T, T] (block_topk)."""
        c = self.cfg
        if self.pattern == "window":
            return SA.window_mask(t, c["window"], c["global_first"], c["global_every"], c["global_reads"],
                                  device=q.device)
        sel = SA.select_blocks(q, k, c["block_size"], c["topk"])
        return SA.block_topk_mask(sel, t, c["block_size"], (q.shape[0], self.n_heads)).to(q.device)

    def attend(self, q, k, v) -> torch.Tensor:
        c, t = self.cfg, q.shape[2]
        if self.form == "reference":
            return SA.dense_masked_attention(q, k, v, self.mask(q, k, t))
        if self.pattern == "window":
            return SA.window_attention(q, k, v, _window_plan(c, t))
        o, self.last_padded_rows = SA.block_topk_attention(q, k, v, c["block_size"], c["topk"])
        return o

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        b, t, _ = x.shape
        o = self.attend(*self.qkv(x))
        return self.o_proj(o.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    # --- decoding: one position at a time against the kept KV ---------------------------
    def init_cache(self, batch: int, device=None, dtype=None) -> dict:
        w = self.q_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        empty = torch.zeros(batch, self.n_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return {"k": empty, "v": empty.clone(), "pos": torch.zeros(0, dtype=torch.long, device=device),
                "t": 0}

    @staticmethod
    def cache_bytes(cache: dict) -> int:
        """Bytes of K and V the cache holds, per sequence."""
        return (cache["k"][0].numel() + cache["v"][0].numel()) * cache["k"].element_size()

    def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """x_t [B, d] at position cache['t'] -> y_t [B, d]; appends this position's K/V and
        drops those no later position can read (see kept_tokens)."""
        c, p = self.cfg, cache["t"]
        q, k, v = self.qkv(x_t[:, None], start=p)
        keys = torch.cat([cache["k"], k], 2)
        vals = torch.cat([cache["v"], v], 2)
        pos = torch.cat([cache["pos"], torch.tensor([p], device=x_t.device)])
        if self.pattern == "window":
            glob = SA.is_global(p + 1, c["global_first"], c["global_every"], x_t.device)
            reads = (p - pos < c["window"]) | glob[pos]
            if c["global_reads"] == "prefix" and bool(glob[p]):
                reads = torch.ones_like(reads)
            keep = (pos >= p + 2 - c["window"]) | glob[pos] | _keeps_everything(c)
        else:
            reads = self._topk_reads(q[:, :, 0], keys, pos, p)
            keep = torch.ones_like(pos, dtype=torch.bool)
        o = SA.attend_one(q[:, :, 0], keys, vals, reads)
        cache.update(k=keys[:, :, keep], v=vals[:, :, keep], pos=pos[keep], t=p + 1)
        return self.o_proj(o.reshape(x_t.shape[0], -1))

    def _topk_reads(self, q_t, keys, pos, p):
        """[B, H, n] keys position p reads: its own block up to p and its top-k earlier
        blocks (the cache holds every position in order here)."""
        bsz, h, d = q_t.shape
        b = self.cfg["block_size"]
        own = pos // b == p // b
        n_sel = p // b
        if n_sel == 0:
            return own.expand(bsz, h, -1)
        dtype = torch.promote_types(q_t.dtype, torch.float32)
        kbar = keys[:, :, : n_sel * b].to(dtype).view(bsz, self.n_kv_heads, n_sel, b, d).mean(-2)
        gate = (q_t.to(dtype).view(bsz, self.n_kv_heads, h // self.n_kv_heads, d)
                @ kbar.transpose(-1, -2)).view(bsz, h, n_sel)
        idx = gate.topk(min(self.cfg["topk"], n_sel), dim=-1).indices
        chosen = torch.zeros(bsz, h, n_sel + 1, dtype=torch.bool, device=q_t.device).scatter_(-1, idx, True)
        return own | chosen.gather(-1, torch.clamp(pos // b, max=n_sel).expand(bsz, h, -1))
