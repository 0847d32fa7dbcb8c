"""The sparse_attention module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ops import sparse_attention as SA
from ..attention.module import AttentionProjections
from ..base import ModelConfig
from ..modules import fresh, state_device_dtype
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

    # --- decoding: one position at a time against the kept KV (modules.py: the contract) --
    def init_state(self, batch: int, max_len: int, device=None, dtype=None) -> "SparseKV":
        """K and V [B, H_kv, 0, hd]: they grow to the kept positions (spec.kept_tokens), which
        stay bounded with a window and global_reads: window."""
        device, dtype = state_device_dtype(self, device, dtype)
        empty = torch.zeros(batch, self.n_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return SparseKV(empty, empty.clone(), max_len)

    def prefill(self, x: torch.Tensor, state: "SparseKV", ctx=None) -> torch.Tensor:
        """The forward over the prompt x [B, T, d], keeping the K and V of the positions a
        later one may read."""
        fresh(state)
        b, t, _ = x.shape
        state.check(t)
        q, k, v = self.qkv(x)
        keep = self._kept(torch.arange(t, device=x.device), t)
        state.k, state.v, state.pos = k[:, :, keep], v[:, :, keep], t
        return self.o_proj(self.attend(q, k, v).transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def step(self, x_t: torch.Tensor, state: "SparseKV", ctx=None) -> torch.Tensor:
        """x_t [B, d] at position p = state.pos -> y_t [B, d]; appends this position's K/V and
        drops those no later position can read (see spec.kept_tokens)."""
        c, p = self.cfg, state.pos
        state.check(p + 1)
        q, k, v = self.qkv(x_t[:, None], start=p)
        keys, vals = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)
        pos = self._kept_positions(p + 1, x_t.device)  # the cached positions, then p
        if self.pattern == "window":
            glob = self._is_global(pos)
            reads = (p - pos < c["window"]) | glob
            if c["global_reads"] == "prefix" and bool(glob[-1]):
                reads = torch.ones_like(reads)
        else:
            reads = self._topk_reads(q[:, :, 0], keys, pos, p)
        o = SA.attend_one(q[:, :, 0], keys, vals, reads)
        keep = self._kept(pos, p + 1)
        state.k, state.v, state.pos = keys[:, :, keep], vals[:, :, keep], p + 1
        return self.o_proj(o.reshape(x_t.shape[0], -1))

    def _kept(self, pos: torch.Tensor, t: int) -> torch.Tensor:
        """bool over positions pos (< t): those a position >= t may read, after t tokens."""
        if _keeps_everything(self.cfg):
            return torch.ones_like(pos, dtype=torch.bool)
        return (pos >= t + 1 - self.cfg["window"]) | self._is_global(pos)

    def _is_global(self, pos: torch.Tensor) -> torch.Tensor:
        """bool over positions: global ones (SA.is_global's definition, for these only)."""
        c = self.cfg
        out = pos < c["global_first"]
        return out | (pos % c["global_every"] == c["global_every"] - 1) if c["global_every"] else out

    def _kept_positions(self, t: int, device) -> torch.Tensor:
        """The positions the state holds while taking token t - 1: those kept after t - 1
        tokens (the older globals, then the last w - 2 positions) and t - 1 itself. Built
        from the kept ones only, so a step costs O(kept), not O(t)."""
        if _keeps_everything(self.cfg):
            return torch.arange(t, device=device)
        lo = max(0, t - self.cfg["window"])  # kept after t - 1 tokens: j >= t - w, and globals
        older = SA.global_positions(lo, self.cfg["global_first"], self.cfg["global_every"])
        return torch.cat([torch.tensor(older, dtype=torch.long, device=device),
                          torch.arange(lo, t, device=device)])

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


@dataclass
class SparseKV:
    """sparse_attention's decoding state: the K and V [B, H_kv, n, hd] of the n kept
    positions (in order), and `pos`, the tokens consumed."""
    k: torch.Tensor
    v: torch.Tensor
    max_len: int
    pos: int = 0

    def check(self, t: int) -> None:
        if t > self.max_len:
            raise ValueError(f"this state was made for {self.max_len} tokens (init_state's max_len); "
                             f"position {t - 1} needs a larger max_len")
