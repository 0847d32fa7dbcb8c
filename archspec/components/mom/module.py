"""The mom module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...ops import linear_attention as LA
from ...ops.conv import causal_conv1d, causal_conv1d_step
from ...ops.dispatch import Dispatch, combine_rows, gather_rows, plan_dispatch, row_map
from ...ops.linear_attention import triton_chunk_rule
from ...ops.moe import capacity_limit, load_balancing_loss, token_choice
from ...ops.norm import gated_rmsnorm, l2_normalise
from ..base import ModelConfig
from ..modules import ComponentModule, at_least_float32, fresh, init_dt_bias, state_device_dtype
from .spec import GLA_GATE_NORMALIZER


class MoMModule(ComponentModule):
    # "fast": the chunked rule over the packed memories; "reference": the token-by-token
    # recurrence (the ground truth). With `triton`, the dispatch (archspec/ops/dispatch), the
    # chunked rule (ops/linear_attention) and the gated output norm (ops/norm) run as Triton
    # kernels; the projections and short convolutions stay PyTorch (cuBLAS / cuDNN run them well)
    forms = ("fast", "reference")
    backends = ("reference", "triton")

    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        d = model.d_model
        self.rule, self.h, self.dk, self.dv = cfg["rule"], cfg["n_heads"], cfg["head_dim"], cfg["head_v_dim"]
        kd, vd, m = cfg["key_dim"], cfg["value_dim"], cfg["n_memories"]
        self.n_memories, self.topk, self.shared = m, cfg["topk"], cfg["shared_memory"]
        self.capacity, self.aux_scale = cfg["capacity_factor"], float(cfg["aux_loss_scale"])
        self.chunk_size, self.eps = cfg["chunk_size"], float(cfg["norm_eps"])
        self.std, self.out_std = model.init_std, model.out_proj_std
        self.q_proj = nn.Linear(d, kd, bias=False)
        self.router = nn.Linear(d, m, bias=False)
        self.kinds = {"k": kd, "v": vd}
        if self.rule in ("gated_delta", "delta"):
            self.kinds["b"] = self.h
        if self.rule in ("gated_delta", "gla"):
            self.kinds["a"] = self.h if self.rule == "gated_delta" else kd
        for kind, rows in self.kinds.items():
            setattr(self, f"{kind}_proj", nn.ModuleList(nn.Linear(d, rows, bias=False) for _ in range(m)))
            if self.shared:
                setattr(self, f"shared_{kind}", nn.Linear(d, rows, bias=False))
        if self.rule == "gated_delta":
            self.A_log = nn.Parameter(torch.empty(self.h))
            self.dt_bias = nn.Parameter(torch.empty(self.h))
        c = cfg["d_conv"]
        self.q_conv1d = nn.Conv1d(kd, kd, c, groups=kd, bias=False)
        self.k_conv1d = nn.Conv1d(kd, kd, c, groups=kd, bias=False)
        self.v_conv1d = nn.Conv1d(vd, vd, c, groups=vd, bias=False)
        self.g_proj = nn.Linear(d, vd, bias=False) if cfg["output_gate"] else None
        self.o_norm = nn.Module()
        self.o_norm.weight = nn.Parameter(torch.empty(self.dv))
        self.o_proj = nn.Linear(vd, d, bias=False)

    @torch.no_grad()
    def reset_parameters(self):
        for lin in self._projections():
            nn.init.normal_(lin.weight, std=self.std)
        nn.init.normal_(self.o_proj.weight, std=self.out_std)
        for conv in (self.q_conv1d, self.k_conv1d, self.v_conv1d):
            bound = 1 / math.sqrt(conv.weight.shape[-1])
            nn.init.uniform_(conv.weight, -bound, bound)
        nn.init.ones_(self.o_norm.weight)
        if self.rule == "gated_delta":
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0, 16).clamp_min(1e-4).log())
            init_dt_bias(self.dt_bias, dt_min=1e-3, dt_max=0.1, floor=1e-4)  # fla's fixed range

    def _projections(self):
        yield self.q_proj
        yield self.router
        if self.g_proj is not None:
            yield self.g_proj
        for kind in self.kinds:
            yield from getattr(self, f"{kind}_proj")
            if self.shared:
                yield getattr(self, f"shared_{kind}")

    def bank(self, kind: str, j: int) -> nn.Linear:
        """Projection `kind` of memory j (j = n_memories is the shared memory)."""
        return getattr(self, f"shared_{kind}") if j == self.n_memories else getattr(self, f"{kind}_proj")[j]

    def plan(self, x: torch.Tensor, capacity_len: int | None = None):
        """Route the tokens of x [B, T, d]: (probs, weights, idx, Dispatch)."""
        b, t, d = x.shape
        logits = at_least_float32(self.router(x).reshape(b * t, -1))
        probs, weights, idx = token_choice(logits, self.topk, renormalize=True)
        dispatch = plan_dispatch(idx, weights, b, t, self.n_memories, self.shared, self.capacity,
                                 capacity_len)
        return probs, weights, idx, dispatch

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        return self._run(x, ctx)[0]

    def prefill(self, x: torch.Tensor, state: "MemoryState", ctx=None) -> torch.Tensor:
        """Prompts x [B, T, d] in the training form (the chunk kernels with `triton`):
        y [B, T, d], filling the fresh `state` as T `step` calls would: every (memory,
        sequence) group's final state, conv window and token count. The capacity counts the
        state's max_len, the whole decoded length (as forward over it would)."""
        fresh(state)
        if state.max_len < x.shape[1]:
            raise ValueError(f"this state was made for {state.max_len} tokens (init_state's max_len), "
                             f"shorter than the prompt ({x.shape[1]} tokens)")
        y, _ = self._run(x, None, state)
        return y

    def _run(self, x: torch.Tensor, ctx, state: "MemoryState | None" = None):
        """(y [B, T, d], plan); with a decoding `state`, fills it after x (see prefill)."""
        b, t, d = x.shape
        cache_len = None if state is None else state.max_len
        probs, _, idx, plan = self.plan(x, cache_len)
        if ctx is not None:
            ctx.add_aux_loss("mom_load_balance",
                             self.aux_scale * load_balancing_loss(probs, idx, self.n_memories,
                                                                  fraction_of="tokens").to(x.dtype))
        flat = x.reshape(b * t, d)
        fused = self.backend == "triton"
        if fused:  # one map token -> packed rows serves the gathers and the combine
            rows = row_map(plan.token, b * t)
            packed = gather_rows(flat, rows, backend="triton")
            q = gather_rows(self.q_proj(flat), rows, backend="triton")
        else:
            packed = flat[plan.token]                              # [P, d]
            q = self.q_proj(flat)[plan.token]                      # one q per token, gathered
        k, v, beta, g = self._memory_projections(packed, plan.memory_rows)
        cu = plan.cu_seqlens
        conv_inputs = None if cache_len is None else torch.cat([q, k, v], -1)
        q = causal_conv1d(q[None], self.q_conv1d.weight, None, "silu", cu)[0]
        k = causal_conv1d(k[None], self.k_conv1d.weight, None, "silu", cu)[0]
        v = causal_conv1d(v[None], self.v_conv1d.weight, None, "silu", cu)[0]
        p = q.shape[0]
        q = l2_normalise(q.view(p, self.h, self.dk))
        k = l2_normalise(k.view(p, self.h, self.dk))
        v = v.view(p, self.h, self.dv)
        if self.form == "reference":
            run, kwargs = LA.recurrent_rule, {}
        else:
            run, kwargs = (triton_chunk_rule if fused else LA.chunk_rule), {"chunk_size": self.chunk_size}
        o, final = run(self.rule, q[None], k[None], v[None], g=None if g is None else g[None],
                       beta=None if beta is None else beta[None], cu_seqlens=cu,
                       output_final_state=cache_len is not None, **kwargs)
        if fused:
            out = combine_rows(o[0].reshape(p, -1), plan.weight.to(o.dtype), rows, backend="triton")
        else:
            o = o[0] * plan.weight.to(o.dtype)[:, None, None]
            out = torch.zeros(b * t, self.h, self.dv, dtype=o.dtype, device=o.device).index_add_(0, plan.token, o)
        y = self._output(out.view(b, t, self.h, self.dv), x)
        if state is not None:
            self._fill(state, plan, conv_inputs, final, b, t)
        return y, plan

    def _fill(self, state: "MemoryState", plan: Dispatch, conv_inputs: torch.Tensor,
              final: torch.Tensor, batch: int, t: int) -> None:
        """The decoding state after the prompt: every (memory, sequence) group's final state,
        its last c - 1 convolution inputs [q | k | v] (oldest first, zeros before the group's
        first token) and its token count."""
        banks, _, width, window = state.conv.shape
        starts, ends = plan.cu_seqlens[:-1], plan.cu_seqlens[1:]
        pos = ends[:, None] - window + torch.arange(window, device=ends.device)  # [G, c - 1]
        pos = torch.where(pos >= starts[:, None], pos, conv_inputs.shape[0])  # the zero row
        rows = torch.cat([conv_inputs, conv_inputs.new_zeros(1, width)])
        state.conv.copy_(rows[pos].transpose(1, 2).reshape(banks, batch, width, window))
        state.state.copy_(final.reshape(state.state.shape))
        if state.taken is not None:
            state.taken.copy_((ends - starts).view(banks, batch)[: self.n_memories].T)
        state.pos = t

    def _memory_projections(self, packed: torch.Tensor, rows: list[int]):
        """k, v, beta, log-decay of every packed row, each memory's rows by its own weights."""
        parts = {kind: [] for kind in self.kinds}
        for j, chunk in enumerate(packed.split(rows)):
            for kind in self.kinds:
                parts[kind].append(self.bank(kind, j)(chunk))
        cat = {kind: torch.cat(p) for kind, p in parts.items()}
        f32 = at_least_float32
        beta = f32(cat["b"]).sigmoid() if "b" in cat else None
        g = None
        if self.rule == "gated_delta":
            g = -f32(self.A_log).exp() * nn.functional.softplus(f32(cat["a"]) + f32(self.dt_bias))
        elif self.rule == "gla":
            g = (nn.functional.logsigmoid(f32(cat["a"])) / GLA_GATE_NORMALIZER).view(-1, self.h, self.dk)
        return cat["k"], cat["v"], beta, g

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        if self.g_proj is not None:
            gate = self.g_proj(x).view(b, t, self.h, self.dv)
            o = gated_rmsnorm(o, gate, self.o_norm.weight, self.eps, norm_before_gate=True,
                              backend=self.backend)
        else:
            f32 = at_least_float32
            o = nn.functional.rms_norm(f32(o), (self.dv,), f32(self.o_norm.weight), self.eps).to(o.dtype)
        return self.o_proj(o.reshape(b, t, -1).to(x.dtype))

    # --- decoding: the token-by-token ground truth (modules.py gives the contract) -----
    def init_state(self, batch: int, max_len: int, device=None, dtype=None) -> "MemoryState":
        """Every memory's (and the shared one's) conv window [n_b, B, 2K + V, c - 1] in the
        model dtype and recurrent state [n_b, B, H, dk, dv] float32 (float64 for float64),
        and with a capacity the tokens each memory took [B, M] int64, against the limit of a
        max_len-token sequence (as forward over max_len tokens counts it)."""
        device, dtype = state_device_dtype(self, device, dtype)
        banks = self.n_memories + (1 if self.shared else 0)
        width = 2 * self.h * self.dk + self.h * self.dv
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        limit = None if self.capacity is None else capacity_limit(self.capacity, self.topk, max_len, self.n_memories)
        return MemoryState(
            conv=torch.zeros(banks, batch, width, self.q_conv1d.weight.shape[-1] - 1, dtype=dtype, device=device),
            state=torch.zeros(banks, batch, self.h, self.dk, self.dv, dtype=state_dtype, device=device),
            taken=None if limit is None else torch.zeros(batch, self.n_memories, dtype=torch.int64, device=device),
            limit=limit, max_len=max_len)

    def step(self, x_t: torch.Tensor, state: "MemoryState", ctx=None) -> torch.Tensor:
        """One token per sequence: x_t [B, d] -> y_t [B, d]; updates `state` in place. Each
        memory's recurrence advances only on the tokens routed to it."""
        b = x_t.shape[0]
        _, weights, idx = token_choice(at_least_float32(self.router(x_t)), self.topk, renormalize=True)
        chosen = torch.zeros(b, self.n_memories, dtype=torch.bool, device=x_t.device).scatter_(1, idx, True)
        weight = torch.zeros(b, self.n_memories, dtype=weights.dtype, device=x_t.device).scatter_(1, idx, weights)
        if state.taken is not None:
            chosen &= state.taken < state.limit
            state.taken += chosen.long()
        state.pos += 1
        conv_w = torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight])
        q = self.q_proj(x_t)
        kd = self.h * self.dk
        out = torch.zeros(b, self.h, self.dv, dtype=state.state.dtype, device=x_t.device)
        for j in range(state.conv.shape[0]):
            k, v, beta, g = self._memory_projections(x_t, [0] * j + [b])
            mixed, conv = causal_conv1d_step(torch.cat([q, k, v], -1), state.conv[j], conv_w, None, "silu")
            qj = l2_normalise(mixed[:, :kd].view(b, self.h, self.dk))
            kj = l2_normalise(mixed[:, kd:2 * kd].view(b, self.h, self.dk))
            vj = mixed[:, 2 * kd:].view(b, self.h, self.dv)
            o, s_j = LA.recurrent_step(self.rule, qj, kj, vj, state.state[j], g_t=g, beta_t=beta)
            take = chosen[:, j] if j < self.n_memories else torch.ones(b, dtype=torch.bool, device=x_t.device)
            state.conv[j] = torch.where(take[:, None, None], conv, state.conv[j])
            state.state[j] = torch.where(take[:, None, None, None], s_j, state.state[j])
            w = weight[:, j] * take if j < self.n_memories else take.to(weight.dtype)
            out = out + w[:, None, None].to(out.dtype) * o.to(out.dtype)
        return self._output(out[:, None].to(x_t.dtype), x_t[:, None])[:, 0]


@dataclass
class MemoryState:
    """mom's decoding state (init_state says what each tensor holds); `limit` (tokens per
    memory and sequence, None: no capacity), `max_len` and `pos` are plain numbers."""
    batch_axes: ClassVar[dict] = {"conv": 1, "state": 1}  # [banks, B, ...] (cat_states)
    conv: torch.Tensor
    state: torch.Tensor
    taken: torch.Tensor | None
    limit: int | None
    max_len: int
    pos: int = 0
