"""The feed_block module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..attention.module import KVCache, rope_tables, rotate
from ..base import ModelConfig
from ..modules import ComponentModule, at_least_float32, fresh, state_device_dtype
from .spec import ACTIVATIONS, in_width, lora_dims, shared_key


class RMSNormWeight(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, computed in float32 (at least) and cast back."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = at_least_float32(x)
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class FeedBlockCore(ComponentModule):
    """The block's weights (shared by a group, or one instance's own): the two norms, q/k/v/o
    and the gated MLP, named as transformers' Zamba2AttentionDecoderLayer names them."""

    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        d, width, hd = model.d_model, in_width(cfg, model), cfg["head_dim"]
        q, kv, f = cfg["n_heads"] * hd, cfg["n_kv_heads"] * hd, cfg["d_ff"]
        self.std, self.out_std = model.init_std, model.out_proj_std
        self.input_layernorm = RMSNormWeight(width, cfg["norm_eps"])
        self.self_attn = nn.Module()
        for name, (n_out, n_in) in {"q_proj": (q, width), "k_proj": (kv, width), "v_proj": (kv, width),
                                    "o_proj": (d, q)}.items():
            setattr(self.self_attn, name, nn.Linear(n_in, n_out, bias=False))
        self.pre_ff_layernorm = RMSNormWeight(d, cfg["norm_eps"])
        self.feed_forward = nn.Module()
        self.feed_forward.gate_up_proj = nn.Linear(d, 2 * f, bias=False)
        self.feed_forward.down_proj = nn.Linear(f, d, bias=False)

    def reset_parameters(self):
        nn.init.ones_(self.input_layernorm.weight)
        nn.init.ones_(self.pre_ff_layernorm.weight)
        a = self.self_attn
        for lin in (a.q_proj, a.k_proj, a.v_proj, self.feed_forward.gate_up_proj):
            nn.init.normal_(lin.weight, std=self.std)
        for lin in (a.o_proj, self.feed_forward.down_proj):
            nn.init.normal_(lin.weight, std=self.out_std)


class LoRA(nn.Module):
    """z -> (z L_down^T) L_up^T, rank r; L_up starts at zero, so an adapter starts as no change."""

    def __init__(self, n_in: int, n_out: int, rank: int):
        super().__init__()
        self.down = nn.Linear(n_in, rank, bias=False)
        self.up = nn.Linear(rank, n_out, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(z))


class FeedBlockModule(ComponentModule):
    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        self.key = shared_key(cfg)
        self.block = FeedBlockCore(cfg, model) if self.key is None else None
        self.concat = cfg["concat_embeddings"]
        self.n_heads, self.n_kv_heads, self.head_dim = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
        self.scale = cfg["softmax_scale"] if cfg["softmax_scale"] is not None else 1 / math.sqrt(self.head_dim)
        self.use_rope, self.theta, self.max_seq_len = cfg["rope"], float(cfg["rope_theta"]), model.max_seq_len
        self.act = nn.functional.gelu if ACTIVATIONS[cfg["activation"]] == "gelu" else nn.functional.silu
        self.std, self.out_std = model.init_std, model.out_proj_std
        dims = lora_dims(cfg, model)
        self.lora = nn.ModuleDict({t: LoRA(i, o, cfg["lora_rank"]) for t, (i, o) in dims.items()}) if dims else None
        self.linear = nn.Linear(model.d_model, model.d_model, bias=False) if cfg["out_proj"] else None
        # float32 RoPE tables (buffers: they follow the module's device; rebuilt when stale)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)

    def reset_parameters(self):
        if self.block is not None:
            self.block.reset_parameters()
        for lora in (self.lora or {}).values():
            nn.init.normal_(lora.down.weight, std=self.std)
            nn.init.zeros_(lora.up.weight)
        if self.linear is not None:
            nn.init.normal_(self.linear.weight, std=self.out_std)
        if self.use_rope:
            self.rope_cos, self.rope_sin = rope_tables(self.max_seq_len, self.head_dim, self.theta,
                                                       self.rope_cos.device)

    def _core(self, ctx) -> FeedBlockCore:
        if self.key is None:
            return self.block
        if ctx is None or self.key not in ctx.shared:
            raise ValueError(f"this feed_block's weights are shared ({self.key}): run it inside the model, "
                             "or pass a ForwardContext holding them")
        return ctx.shared[self.key]

    def _adapted(self, target: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y if self.lora is None or target not in self.lora else y + self.lora[target](z)

    def _input(self, x: torch.Tensor, ctx) -> torch.Tensor:
        if not self.concat:
            return x
        e = None if ctx is None else ctx.embeddings
        if e is None:
            raise ValueError("this feed_block concatenates the model's embeddings (concat_embeddings): "
                             "run it inside the model, or set ctx.embeddings")
        return torch.cat([x, e], dim=-1)

    def _qkv(self, core: FeedBlockCore, u: torch.Tensor, start: int, positions: torch.Tensor | None = None):
        """q [B, H, T, hd], k, v [B, H_kv, T, hd] of u [B, T, D] (normed) at positions start...;
        or with `positions` (int64 [B]), one token per row at its own position."""
        b, t, _ = u.shape
        a = core.self_attn
        q = self._adapted("q", u, a.q_proj(u)).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self._adapted("k", u, a.k_proj(u)).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self._adapted("v", u, a.v_proj(u)).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = rotate(q, k, *self._rope(u.device, start + t), start, positions)
        return q, k, v

    def _rope(self, device, t: int):
        cos = self.rope_cos
        if not (cos.dtype == torch.float32 and cos.device == device and cos.shape[0] >= t):
            self.rope_cos, self.rope_sin = rope_tables(max(self.max_seq_len, t), self.head_dim, self.theta, device)
        return self.rope_cos, self.rope_sin

    def _after_attention(self, core: FeedBlockCore, o: torch.Tensor) -> torch.Tensor:
        """o [..., H hd] (the heads' outputs) -> t [..., d]: o_proj, norm, gated MLP, linear."""
        h = core.pre_ff_layernorm(core.self_attn.o_proj(o))
        ff = core.feed_forward
        g, p = self._adapted("gate_up", h, ff.gate_up_proj(h)).chunk(2, dim=-1)
        m = ff.down_proj(self.act(g) * p)
        return m if self.linear is None else self.linear(m)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        u, core = self._input(x, ctx), self._core(ctx)
        b, t, _ = x.shape
        q, k, v = self._qkv(core, core.input_layernorm(u), 0)
        o = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                                       enable_gqa=self.n_kv_heads != self.n_heads)
        return self._after_attention(core, o.transpose(1, 2).reshape(b, t, -1))

    # --- decoding: a KV cache per use (modules.py gives the contract) ----------------------
    def init_state(self, batch: int, max_len: int, device=None, dtype=None) -> KVCache:
        owner = next((m for m in (self.linear, self.block, self.lora) if m is not None), None)
        if owner is not None:
            device, dtype = state_device_dtype(owner, device, dtype)
        k = torch.zeros(batch, self.n_kv_heads, max_len, self.head_dim, device=device, dtype=dtype)
        return KVCache(k, torch.zeros_like(k), max_len)

    def prefill(self, x: torch.Tensor, state: KVCache, ctx=None) -> torch.Tensor:
        fresh(state)
        u, core = self._input(x, ctx), self._core(ctx)
        b, t, _ = x.shape
        q, k, v = self._qkv(core, core.input_layernorm(u), 0)
        state.write(k, v, 0)
        state.pos = t
        o = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                                       enable_gqa=self.n_kv_heads != self.n_heads)
        return self._after_attention(core, o.transpose(1, 2).reshape(b, t, -1))

    def step(self, x_t: torch.Tensor, state: KVCache, ctx=None) -> torch.Tensor:
        u, core = self._input(x_t, ctx), self._core(ctx)
        b, p = x_t.shape[0], state.pos
        rows = None if state.lag is None else p - state.lag  # each row's own position (modules.py)
        q, k, v = self._qkv(core, core.input_layernorm(u)[:, None], p, rows)
        if rows is None:
            state.write(k, v, p)
            seen = None
        else:  # row b writes slot p_b and reads the slots it has filled, j <= p_b
            seen = state.write_rows(k, v, rows)
        state.pos = p + 1
        o = nn.functional.scaled_dot_product_attention(q, state.k[:, :, :p + 1], state.v[:, :, :p + 1],
                                                       attn_mask=seen, scale=self.scale,
                                                       enable_gqa=self.n_kv_heads != self.n_heads)
        return self._after_attention(core, o.reshape(b, -1))
