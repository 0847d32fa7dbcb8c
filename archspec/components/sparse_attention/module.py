"""The sparse_attention module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ops import sparse_attention as SA
from ..attention.module import AttentionProjections, SlotsKV
from ..base import ModelConfig
from ..modules import fresh, row_positions, state_device_dtype
from .spec import _keeps_everything, _window_plan


class SparseAttentionModule(AttentionProjections):
    # "reference": dense attention over the explicit [T, T] mask (the ground truth)
    forms = ("fast", "reference")

    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__(cfg, model)
        self.cfg = dict(cfg)
        self.pattern = cfg["pattern"]
        self.last_padded_rows = 0  # block_topk: R of the latest fast forward (all sequences)
        self._global_slots = None  # decoding: the global slots' positions (_global_slot_positions)

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

    # --- decoding: a fixed-capacity KV cache (modules.py: the contract) -------------------
    def slots(self, max_len: int) -> tuple[int, int]:
        """(R, G): a state for max_len tokens holds a ring of R slots (position j in slot
        j mod R) and G global slots (the i-th global position in slot R + i). What a later
        position can read stays in R + G = spec.kept_tokens(max_len) slots: the last
        R = min(max_len, w - 1) positions, and the G global positions older than them
        (window pattern, global_reads: window or no global_every); every position
        (R = max_len, G = 0) when the pattern keeps everything."""
        c = self.cfg
        if _keeps_everything(c):
            return max_len, 0
        ring = min(max_len, c["window"] - 1)
        return ring, SA.GlobalSet(max_len, c["global_first"], c["global_every"]).count(0, max_len - ring)

    def init_state(self, batch: int, max_len: int, device=None, dtype=None) -> "SparseKV":
        """K and V [B, H_kv, R + G, hd] zeros (slots: the layout), a fixed size, so that
        step has static shapes (torch.compile)."""
        device, dtype = state_device_dtype(self, device, dtype)
        k = torch.zeros(batch, self.n_kv_heads, sum(self.slots(max_len)), self.head_dim, device=device, dtype=dtype)
        return SparseKV(k, torch.zeros_like(k), max_len)

    def prefill(self, x: torch.Tensor, state: "SparseKV", ctx=None) -> torch.Tensor:
        """The forward over the prompt x [B, T, d], keeping the K and V of the positions a
        later one may read: the last R in the ring, the older global ones in their slots."""
        fresh(state)
        b, t, _ = x.shape
        state.check(t)
        q, k, v = self.qkv(x)
        ring, _ = self.slots(state.max_len)
        recent = torch.arange(max(0, t - ring), t, device=x.device)
        older = torch.tensor(SA.global_positions(max(0, t - ring), self.cfg["global_first"], self.cfg["global_every"]),
                             dtype=torch.long, device=x.device)
        dest = torch.cat([recent % max(ring, 1), ring + self._globals_below(older)])
        state.k[:, :, dest] = k[:, :, torch.cat([recent, older])].to(state.k.dtype)
        state.v[:, :, dest] = v[:, :, torch.cat([recent, older])].to(state.v.dtype)
        state.pos = t
        return self.o_proj(self.attend(q, k, v).transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def step(self, x_t: torch.Tensor, state: "SparseKV", ctx=None) -> torch.Tensor:
        """x_t [B, d], row b at position p_b (state.pos, or pos - lag_b: modules.py) ->
        y_t [B, d]. Its query reads the slots' keys it may read (their positions follow from
        p_b and the layout) and its own; then the position leaving the ring, p_b - R, moves to
        its global slot if it is global, and p_b takes its ring slot. Static shapes."""
        b, p = x_t.shape[0], state.pos
        state.check(p + 1)
        rows = row_positions(state, b, x_t.device)  # [B]
        q, k, v = self.qkv(x_t[:, None], start=p, positions=None if state.lag is None else rows)
        keys, vals = torch.cat([state.k, k], 2), torch.cat([state.v, v], 2)
        pos = torch.cat([self._slot_positions(rows, state.k.shape[2], state.max_len), rows[:, None]], 1)
        if self.pattern == "window" and not _keeps_everything(self.cfg):
            reads = (pos >= 0)[:, None]  # the slots hold only what p_b may read: [B, 1, n]
        elif self.pattern == "window":
            c = self.cfg
            reads = (rows[:, None] - pos < c["window"]) | self._is_global(pos)
            if c["global_reads"] == "prefix":
                reads |= self._is_global(rows)[:, None]
            reads = (reads & (pos >= 0))[:, None]  # [B, 1, n]
        else:
            reads = self._topk_reads(q[:, :, 0], keys, pos, rows)
        o = SA.attend_one(q[:, :, 0], keys, vals, reads)
        self._write(state, k[:, :, 0], v[:, :, 0], rows)
        state.pos = p + 1
        return self.o_proj(o.reshape(b, -1))

    def _write(self, state: "SparseKV", k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> None:
        """After row b read at p_b: p_b - R leaves the ring (to its global slot if global),
        and k, v [B, H_kv, hd] of p_b take ring slot p_b mod R."""
        ring, n_global = self.slots(state.max_len)
        batch = torch.arange(k.shape[0], device=k.device)
        if n_global:
            gone = rows - ring
            slot = ring + self._globals_below(gone).clamp(0, n_global - 1)
            move = ((gone >= 0) & self._is_global(gone))[:, None, None]
            for cache, new in ((state.k, k), (state.v, v)):
                leaving = cache[batch, :, rows % ring] if ring else new.to(cache.dtype)
                cache[batch, :, slot] = torch.where(move, leaving, cache[batch, :, slot])
        if ring:
            state.k[batch, :, rows % ring] = k.to(state.k.dtype)
            state.v[batch, :, rows % ring] = v.to(state.v.dtype)

    def _slot_positions(self, rows: torch.Tensor, n_slots: int, max_len: int) -> torch.Tensor:
        """int64 [B, R + G]: the position each slot holds before row b's step at p_b, -1 for
        an empty slot. Ring slot s: the latest j < p_b with j = s mod R; global slot i: the
        i-th global position, once it has left the ring (j < p_b - R)."""
        ring, n_global = self.slots(max_len)
        s = torch.arange(ring, device=rows.device)
        latest = rows[:, None] - 1 - (rows[:, None] - 1 - s) % max(ring, 1)  # [B, R]
        held = [torch.where(latest >= 0, latest, -1)]
        if n_global:
            glob = self._global_slot_positions(n_global, rows.device)
            held.append(torch.where(glob < (rows[:, None] - ring), glob, -1))
        return torch.cat(held, 1)

    def _global_slot_positions(self, n_global: int, device) -> torch.Tensor:
        """int64 [G]: the i-th global position (global slot i's), made once per size."""
        glob = self._global_slots
        if glob is None or glob.shape[0] != n_global or glob.device != device:
            f, every = self.cfg["global_first"], self.cfg["global_every"]
            i = torch.arange(n_global, device=device)
            glob = torch.where(i < f, i, (f // every) * every + every - 1 + (i - f) * every) if every else i
            self._global_slots = glob
        return glob

    def _globals_below(self, pos: torch.Tensor) -> torch.Tensor:
        """int64, like pos: how many global positions are below each (its global slot index)."""
        f, every = self.cfg["global_first"], self.cfg["global_every"]
        below = pos.clamp(min=0, max=f)
        return below + (pos // every - f // every).clamp(min=0) if every else below

    def _is_global(self, pos: torch.Tensor) -> torch.Tensor:
        """bool, like pos: global positions (SA.is_global's definition, for these only)."""
        c = self.cfg
        out = pos < c["global_first"]
        if c["global_every"]:
            out = out | (pos % c["global_every"] == c["global_every"] - 1)
        return out & (pos >= 0)

    def _topk_reads(self, q_t, keys, pos, rows):
        """[B, H, n] keys row b reads at p_b: its own block up to p_b and its top-k earlier
        complete blocks (here every position j sits in slot j, so blocks are slot ranges;
        blocks not yet complete score -inf and are never chosen)."""
        bsz, h, d = q_t.shape
        b = self.cfg["block_size"]
        blocks = (keys.shape[2] - 1) // b  # whole blocks among the slots (the last key: p_b's own)
        own = (pos // b == rows[:, None] // b) & (pos >= 0)
        if blocks == 0:
            return own[:, None].expand(bsz, h, -1)
        dtype = torch.promote_types(q_t.dtype, torch.float32)
        kbar = keys[:, :, : blocks * b].to(dtype).view(bsz, self.n_kv_heads, blocks, b, d).mean(-2)
        gate = (q_t.to(dtype).view(bsz, self.n_kv_heads, h // self.n_kv_heads, d)
                @ kbar.transpose(-1, -2)).view(bsz, h, blocks)
        complete = torch.arange(blocks, device=q_t.device) < (rows // b)[:, None]  # [B, blocks]
        gate = gate.masked_fill(~complete[:, None], float("-inf"))
        idx = gate.topk(min(self.cfg["topk"], blocks), dim=-1).indices
        chosen = torch.zeros(bsz, h, blocks + 1, dtype=torch.bool, device=q_t.device).scatter_(-1, idx, True)
        chosen[..., :blocks] &= complete[:, None]
        block_of = torch.where(pos >= 0, pos // b, blocks).clamp(max=blocks)  # [B, n]
        return own[:, None] | chosen.gather(-1, block_of[:, None].expand(bsz, h, -1))


@dataclass
class SparseKV(SlotsKV):
    """sparse_attention's decoding state: K and V [B, H_kv, R + G, hd] (the slots:
    SparseAttentionModule.slots)."""
