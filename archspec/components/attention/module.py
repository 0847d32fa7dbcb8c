"""The attention module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..base import ModelConfig
from ..modules import ComponentModule, at_least_float32, fresh, state_device_dtype


class AttentionProjections(ComponentModule):
    """The q/k/v/o projections and RoPE tables of the attention components (attention,
    sparse_attention): q = x W_q^T [B, H, T, hd]; k = x W_k^T, v = x W_v^T [B, H_kv, T, hd];
    RoPE rotates q and k at their absolute positions; out = o W_o^T with o [B, T, H hd].
    With `qk_norm` (attention's option; spec.py), q and k are RMS-normalised per head or over
    the projection before RoPE; with `rope_dims` RoPE rotates only the first rope_dims values of
    each head. Initialisation: W_q, W_k, W_v ~ N(0, init_std), W_o ~ N(0, out_proj_std), biases
    0, QK-norm weights 1."""

    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        d, hd = model.d_model, cfg["head_dim"]
        self.n_heads, self.n_kv_heads, self.head_dim = cfg["n_heads"], cfg["n_kv_heads"], hd
        self.use_rope, self.theta = cfg["rope"], float(cfg["rope_theta"])
        self.rope_dims = cfg.get("rope_dims") or hd
        self.max_seq_len = model.max_seq_len
        self.std, self.out_std = model.init_std, model.out_proj_std
        qkv_bias = bool(cfg["bias"])  # true or "qkv"
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=cfg["bias"] is True)
        self.qk_norm = cfg.get("qk_norm")
        if self.qk_norm is not None:
            self.qk_norm_eps = float(cfg["qk_norm_eps"])
            per_head = self.qk_norm == "head"
            self.q_norm = _NormWeight(hd if per_head else self.n_heads * hd)
            self.k_norm = _NormWeight(hd if per_head else self.n_kv_heads * hd)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)

    def reset_parameters(self):
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.normal_(lin.weight, std=self.std)
        nn.init.normal_(self.o_proj.weight, std=self.out_std)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        if self.qk_norm is not None:
            nn.init.ones_(self.q_norm.weight)
            nn.init.ones_(self.k_norm.weight)
        self.rope_cos, self.rope_sin = rope_tables(self.max_seq_len, self.rope_dims, self.theta,
                                                   self.q_proj.weight.device)

    def rope_tables_for(self, device, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [>= t, hd], rebuilt when stale: float32 on the input's device, since
        `model.to(torch.bfloat16)` casts buffers too and bf16 angles (8-bit mantissa) are
        visibly wrong at positions in the thousands."""
        cos = self.rope_cos
        if not (cos.dtype == torch.float32 and cos.device == device and cos.shape[0] >= t):
            self.rope_cos, self.rope_sin = rope_tables(max(self.max_seq_len, t), self.rope_dims,
                                                       self.theta, device)
        return self.rope_cos, self.rope_sin

    def qkv(self, x: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None):
        """q [B, H, T, hd], k, v [B, H_kv, T, hd] for positions start .. start + T - 1; or
        with `positions` (int64 [B], each < start + T), one token per row at its own position."""
        b, t, _ = x.shape
        q, k = self.q_proj(x), self.k_proj(x)
        if self.qk_norm == "projection":
            q, k = self._norm(q, self.q_norm), self._norm(k, self.k_norm)
        q = q.view(b, t, self.n_heads, self.head_dim)
        k = k.view(b, t, self.n_kv_heads, self.head_dim)
        if self.qk_norm == "head":
            q, k = self._norm(q, self.q_norm), self._norm(k, self.k_norm)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = rotate(q, k, *self.rope_tables_for(x.device, start + t), start, positions)
        return q, k, v

    def _norm(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """RMSNorm over the last dimension in float32 (float64 stays), cast back (OLMoE, Qwen3)."""
        y = nn.functional.rms_norm(at_least_float32(x), (x.shape[-1],), at_least_float32(norm.weight),
                                   self.qk_norm_eps)
        return y.to(x.dtype)


class _NormWeight(nn.Module):
    """Holds a QK-norm's weight under the published name ('q_norm.weight')."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))


def rope_tables(max_len: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [max_len, head_dim] (float32) for the rotate-half RoPE form."""
    if str(device) == "meta":
        empty = torch.empty(max_len, head_dim, device=device)
        return empty, empty
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, device=device, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, hd] -> x cos + rotate_half(x) sin, positions 0..T-1."""
    t = x.shape[-2]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos[:t].to(x.dtype) + rotated * sin[:t].to(x.dtype))


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the first cos.shape[-1] values of each head of x [B, H, T, hd]; the rest pass."""
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return apply_rope(x, cos, sin)
    return torch.cat([apply_rope(x[..., :r], cos, sin), x[..., r:]], dim=-1)


def rotate(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int,
           positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of q [B, H, T, hd] and k [B, H_kv, T, hd] at positions start .. start + T - 1, or
    with `positions` (int64 [B], T = 1) each row at its own position; tables (cos, sin) narrower
    than hd rotate the first values of each head only (partial rotary)."""
    if positions is not None:  # rows take the time axis' place
        cos, sin = cos[positions], sin[positions]
        return tuple(apply_partial_rope(y.transpose(0, 2), cos, sin).transpose(0, 2) for y in (q, k))
    t = q.shape[-2]
    cos, sin = cos[start:start + t], sin[start:start + t]
    return apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)


def softcapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cap: float,
                         mask: torch.Tensor | None) -> torch.Tensor:
    """Gemma-2's eager attention: s = q k^T / sqrt(hd), s <- cap tanh(s / cap), masked (mask:
    bool [Tq, Tk], True = kept; None: all kept), softmax in float32 (float64 stays), times v. q [B, H, Tq, hd],
    k, v [B, H_kv, Tk, hd] (each key/value head serves H / H_kv query heads)."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = torch.tanh(scores / cap) * cap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    return torch.matmul(probs, v)


def sliding_window_mask(t: int, window: int, device) -> torch.Tensor:
    """[T, T] bool: query i sees keys j with i - window < j <= i."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(t, device=device)[None, :]
    return (j <= i) & (j > i - window)


class AttentionModule(AttentionProjections):
    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__(cfg, model)
        self.window = cfg["window"]
        self.softcap = None if cfg["logit_softcap"] is None else float(cfg["logit_softcap"])

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        b, t, _ = x.shape
        o = self._attend(*self.qkv(x), t)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    # --- decoding: a KV cache (modules.py gives the contract) ---------------------------
    def init_state(self, batch: int, max_len: int, device=None, dtype=None) -> "KVCache":
        """K and V [B, H_kv, L, hd] zeros: L = max_len positions, or with a window a ring of
        L = min(window, max_len) slots (position p in slot p mod L)."""
        device, dtype = state_device_dtype(self, device, dtype)
        slots = max_len if self.window is None else min(self.window, max_len)
        k = torch.zeros(batch, self.n_kv_heads, slots, self.head_dim, device=device, dtype=dtype)
        return KVCache(k, torch.zeros_like(k), max_len)

    def prefill(self, x: torch.Tensor, state: "KVCache", ctx=None) -> torch.Tensor:
        """The forward over the prompt x [B, T, d], keeping its last L positions' K and V."""
        fresh(state)
        b, t, _ = x.shape
        q, k, v = self.qkv(x)
        state.write(k, v, 0)
        state.pos = t
        return self.o_proj(self._attend(q, k, v, t).transpose(1, 2).reshape(b, t, -1))

    def step(self, x_t: torch.Tensor, state: "KVCache", ctx=None) -> torch.Tensor:
        """x_t [B, d] at position p = state.pos: its K, V go to slot p mod L, then its query
        reads the min(p + 1, L) filled slots (every key it may see: slot order does not matter
        to softmax, and RoPE already rotated each key at its own position)."""
        if state.lag is not None:
            return self._step_rows(x_t, state)
        b, p = x_t.shape[0], state.pos
        q, k, v = self.qkv(x_t[:, None], start=p)
        state.write(k, v, p)
        state.pos = p + 1
        n = min(p + 1, state.k.shape[2])
        if self.softcap is not None:
            o = softcapped_attention(q, state.k[:, :, :n], state.v[:, :, :n], self.softcap, None)
            return self.o_proj(o.reshape(b, self.n_heads * self.head_dim))
        o = nn.functional.scaled_dot_product_attention(
            q, state.k[:, :, :n], state.v[:, :, :n], enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(o.reshape(b, self.n_heads * self.head_dim))

    def _step_rows(self, x_t: torch.Tensor, state: "KVCache") -> torch.Tensor:
        """step with rows at their own positions p_b = state.pos - lag_b (modules.py): RoPE at
        p_b, K and V to slot p_b mod L, and row b reads the slots it has filled (j <= p_b; all
        of a ring once p_b >= L - 1) among the first min(pos + 1, L)."""
        b, p = x_t.shape[0], state.pos
        rows = p - state.lag
        q, k, v = self.qkv(x_t[:, None], start=p, positions=rows)
        seen = state.write_rows(k, v, rows)  # [B, 1, 1, n]
        state.pos = p + 1
        n = seen.shape[-1]
        if self.softcap is not None:
            o = softcapped_attention(q, state.k[:, :, :n], state.v[:, :, :n], self.softcap, seen)
            return self.o_proj(o.reshape(b, self.n_heads * self.head_dim))
        o = nn.functional.scaled_dot_product_attention(
            q, state.k[:, :, :n], state.v[:, :, :n], attn_mask=seen,
            enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(o.reshape(b, self.n_heads * self.head_dim))

    def _attend(self, q, k, v, t: int) -> torch.Tensor:
        """SDPA over q [B, H, T, hd], k, v [B, H_kv, T, hd], causal and windowed."""
        gqa = self.n_kv_heads != self.n_heads
        if self.softcap is not None:
            window = t if self.window is None else self.window
            return softcapped_attention(q, k, v, self.softcap, sliding_window_mask(t, window, q.device))
        if self.window is None or self.window >= t:
            return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=sliding_window_mask(t, self.window, q.device), enable_gqa=gqa)


@dataclass
class SlotsKV:
    """Keys and values in slots, k, v [B, H_kv, slots, hd] in the model dtype, made for
    `max_len` tokens; `pos`, the tokens consumed so far, and `lag`, the rows' offsets behind pos
    (None: none; components/modules.py). The attention layers' states build on it."""
    k: torch.Tensor
    v: torch.Tensor
    max_len: int
    pos: int = 0
    lag: torch.Tensor | None = None

    def check(self, t: int) -> None:
        if t > self.max_len:
            raise ValueError(f"this decoding state was made for {self.max_len} tokens (init_state's "
                             f"max_len); writing positions up to {t - 1} needs a larger max_len")


@dataclass
class KVCache(SlotsKV):
    """An attention layer's decoding state: position p in slot p mod L (L = max_len, or a
    window's ring)."""

    def write(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Store k, v [B, H_kv, T, hd] of positions start .. start + T - 1 (the last L of
        them, each in slot p mod L)."""
        slots, t = self.k.shape[2], k.shape[2]
        self.check(start + t)
        if t > slots:  # a window's ring keeps the last L
            k, v, start = k[:, :, t - slots:], v[:, :, t - slots:], start + t - slots
        first, t = start % slots, k.shape[2]
        if first + t <= slots:  # one run of slots (every step): a slice, no index tensor
            self.k[:, :, first:first + t] = k.to(self.k.dtype)
            self.v[:, :, first:first + t] = v.to(self.v.dtype)
            return
        idx = torch.arange(start, start + t, device=k.device) % slots
        self.k[:, :, idx] = k.to(self.k.dtype)
        self.v[:, :, idx] = v.to(self.v.dtype)

    def write_rows(self, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Store one token per row, k, v [B, H_kv, 1, hd], row b's at its own position rows[b]
        (slot rows[b] mod L), and give which of the first min(pos + 1, L) slots each row has
        filled (j <= rows[b]; all of a ring once rows[b] >= L - 1): bool [B, 1, 1, n], the mask
        its query reads under."""
        self.check(self.pos + 1)
        slots = self.k.shape[2]
        batch = torch.arange(k.shape[0], device=k.device)
        self.k[batch, :, rows % slots] = k[:, :, 0].to(self.k.dtype)
        self.v[batch, :, rows % slots] = v[:, :, 0].to(self.v.dtype)
        n = min(self.pos + 1, slots)
        return (torch.arange(n, device=k.device) <= rows[:, None])[:, None, None]
