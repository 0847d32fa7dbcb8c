"""The moe module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...ops import moe as O
from ..base import ModelConfig, get
from ..mlp.module import TORCH_ACTIVATIONS
from ..modules import ComponentModule, build_child, fresh, state_device_dtype
from .spec import GATED, MoE


class MoEModule(ComponentModule):
    # "fast": grouped experts on their sorted assignments; "reference": every expert on every
    # token, masked by the dense combine matrix (the ground truth)
    forms = ("fast", "reference")

    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        d, e, f = model.d_model, cfg["n_experts"], cfg["d_ff"]
        self.d, self.n_experts, self.topk = d, e, cfg["topk"]
        self.router_kind, self.chunk_size = cfg["router"], cfg["chunk_size"]
        self.renormalize, self.capacity_factor = cfg["renormalize"], cfg["capacity_factor"]
        self.aux_scale, self.z_scale = float(cfg["aux_loss_scale"]), float(cfg["z_loss_scale"])
        self.router_f32 = cfg["router_dtype"] == "float32"
        self.act_name = GATED[cfg["activation"]]
        self.act = TORCH_ACTIVATIONS[self.act_name]
        self.std, self.out_std = model.init_std, model.out_proj_std
        self.router = nn.Linear(d, e, bias=False)
        if self.router_kind == "chunk":
            self.router_start = nn.Parameter(torch.empty(d))
        self.experts = nn.Module()
        self.experts.gate_proj = nn.Parameter(torch.empty(e, f, d))
        self.experts.up_proj = nn.Parameter(torch.empty(e, f, d))
        self.experts.down_proj = nn.Parameter(torch.empty(e, d, f))
        self.shared = build_child(get(MoE.type).children(cfg, model).get("shared"), model)
        if cfg["shared_expert_gate"]:
            self.shared_expert_gate = nn.Linear(d, 1, bias=False)
        else:
            self.shared_expert_gate = None

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.router.weight, std=self.std)
        if self.router_kind == "chunk":
            nn.init.normal_(self.router_start, std=self.std)
        nn.init.normal_(self.experts.gate_proj, std=self.std)
        nn.init.normal_(self.experts.up_proj, std=self.std)
        nn.init.normal_(self.experts.down_proj, std=self.out_std)
        if self.shared is not None:
            self.shared.reset_parameters()
        if self.shared_expert_gate is not None:
            nn.init.normal_(self.shared_expert_gate.weight, std=self.std)

    def _weights(self):
        ex = self.experts
        return ex.gate_proj, ex.up_proj, ex.down_proj

    def _logits(self, r: torch.Tensor) -> torch.Tensor:
        w = self.router.weight
        if self.router_f32:
            dtype = torch.promote_types(r.dtype, torch.float32)
            r, w = r.to(dtype), w.to(dtype)
        return nn.functional.linear(r, w)

    def _limit(self, seq_len: int) -> int | None:
        if self.capacity_factor is None or self.router_kind == "expert_choice":
            return None
        return O.capacity_limit(self.capacity_factor, self.topk, seq_len, self.n_experts)

    def route(self, x: torch.Tensor) -> dict:
        """Routing of x [B, T, d]: per-token logits and probabilities [B T, E] (a chunk's
        values repeated for its tokens), and idx, weights [B T, k] (token and chunk routers)
        or sel, vals [B, C, E] (expert choice)."""
        b, t, d = x.shape
        if self.router_kind == "chunk":
            r = x.to(torch.promote_types(x.dtype, torch.float32)) if self.router_f32 else x
            summaries = O.chunk_summaries(r, self.router_start, self.chunk_size)  # [B, n_c, d]
            logits = self._logits(summaries)
            probs, weights, idx = O.token_choice(logits, self.topk, self.renormalize)
            out = {"logits": logits, "probs": probs, "weights": weights, "idx": idx}
            return {key: O.expand_chunks(v, self.chunk_size, t).reshape(b * t, -1) for key, v in out.items()}
        logits = self._logits(x).reshape(b * t, -1)
        if self.router_kind == "token":
            probs, weights, idx = O.token_choice(logits, self.topk, self.renormalize)
            return {"logits": logits, "probs": probs, "weights": weights, "idx": idx}
        probs = torch.softmax(logits, dim=-1)
        cap = O.expert_choice_capacity(self.capacity_factor, self.topk, t, self.n_experts)
        sel, vals = O.expert_choice(probs.view(b, t, -1), cap)
        return {"logits": logits, "probs": probs, "sel": sel, "vals": vals}

    def assignments(self, x: torch.Tensor, routing: dict | None = None, limit: int | None = -1) -> O.Assignments:
        """The kept (token, expert, weight) assignments, sorted expert-major. `limit`: the
        capacity per expert and sequence (default: that of T = x's length)."""
        b, t, _ = x.shape
        routing = routing or self.route(x)
        if self.router_kind == "expert_choice":
            return O.expert_choice_assignments(routing["sel"], routing["vals"], t)
        limit = self._limit(t) if limit == -1 else limit
        return O.sort_assignments(routing["idx"], routing["weights"], self.n_experts, b, t, limit)

    def combine(self, x: torch.Tensor, routing: dict, limit: int | None = -1) -> torch.Tensor:
        """The routing as a dense [B T, E] weight matrix (zero = not computed)."""
        b, t, _ = x.shape
        if self.router_kind == "expert_choice":
            return O.dense_combine_expert_choice(routing["sel"], routing["vals"], t)
        limit = self._limit(t) if limit == -1 else limit
        return O.dense_combine(routing["idx"], routing["weights"], b, t, self.n_experts, limit)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        routing = self.route(x)
        if ctx is not None:
            self._aux_losses(routing, ctx, x.dtype)
        return self._experts(x, routing)

    def _experts(self, x: torch.Tensor, routing: dict, limit: int | None = -1) -> torch.Tensor:
        """y [B, T, d]: the routed experts' weighted sum (and the shared experts)."""
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        if self.form == "reference":
            y = O.dense_experts(flat, self.combine(x, routing, limit), *self._weights(), self.act)
        else:
            y = O.grouped_experts(flat, self.assignments(x, routing, limit), *self._weights(), self.act)
        y = y.view(b, t, d)
        if self.shared is not None:
            y = y + self._shared(x)
        return y

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        """The shared experts on x [..., d], scaled by their sigmoid gate when there is one."""
        out = self.shared(x)
        if self.shared_expert_gate is not None:
            out = torch.sigmoid(self.shared_expert_gate(x)) * out
        return out

    def _aux_losses(self, routing: dict, ctx, dtype) -> None:
        if self.aux_scale and self.router_kind != "expert_choice":
            lb = O.load_balancing_loss(routing["probs"], routing["idx"], self.n_experts)
            ctx.add_aux_loss("moe_load_balance", (self.aux_scale * lb).to(dtype))
        if self.z_scale:
            ctx.add_aux_loss("moe_z_loss", (self.z_scale * O.z_loss(routing["logits"])).to(dtype))

    # --- decoding: token and chunk routers (modules.py gives the contract) --------------
    def init_state(self, batch: int, max_len: int, device=None, dtype=None) -> "RouterState":
        """taken [B, E] int64 (with a capacity: assignments each expert took, against the
        limit of a max_len-token sequence, as forward counts T); a chunk router's running sum
        of its current chunk [B, d] (float32, or the dtype if wider) and its decision, idx
        [B, k] int64 and weights [B, k] (the router's dtype)."""
        if self.router_kind == "expert_choice":
            raise ValueError("expert_choice routing is not causal (an expert picks among all of a "
                             "sequence's tokens): it cannot decode token by token")
        device, dtype = state_device_dtype(self, device, dtype)
        state = RouterState(limit=self._limit(max_len))
        if state.limit is not None:
            state.taken = torch.zeros(batch, self.n_experts, dtype=torch.int64, device=device)
        if self.router_kind == "chunk":
            acc = torch.promote_types(dtype, torch.float32)
            wdt = acc if self.router_f32 else dtype
            state.sum = torch.zeros(batch, self.d, dtype=acc, device=device)
            state.idx = torch.zeros(batch, self.topk, dtype=torch.int64, device=device)
            state.weights = torch.zeros(batch, self.topk, dtype=wdt, device=device)
        return state

    def prefill(self, x: torch.Tensor, state: "RouterState", ctx=None) -> torch.Tensor:
        """The forward over the prompt x [B, T, d]; then the state as T steps leave it: each
        expert's count (first come, first served: min(chosen, limit)) and, for a chunk router,
        the decision of the chunk holding token T - 1 and the sum of that chunk's tokens."""
        fresh(state)
        b, t, _ = x.shape
        routing = self.route(x)
        # the capacity of the whole max_len-token sequence, as its forward would apply it
        y = self._experts(x, routing, state.limit)
        if state.taken is not None:
            idx = routing["idx"].view(b, t * self.topk)
            chosen = torch.zeros(b, self.n_experts, dtype=torch.int64, device=x.device)
            chosen.scatter_add_(1, idx, torch.ones_like(idx))
            state.taken.copy_(chosen.clamp(max=state.limit))
        if self.router_kind == "chunk":
            start = (t - 1) // self.chunk_size * self.chunk_size
            state.sum.copy_(x[:, start:].to(state.sum.dtype).sum(1))
            state.idx.copy_(routing["idx"].view(b, t, -1)[:, -1])
            state.weights.copy_(routing["weights"].view(b, t, -1)[:, -1])
        state.pos = t
        return y

    def step(self, x_t: torch.Tensor, state: "RouterState", ctx=None) -> torch.Tensor:
        """x_t [B, d] -> y_t [B, d]. A chunk router decides at each chunk's first token from
        the mean of the previous chunk (router_start at the first), then accumulates x_t."""
        if self.router_kind == "chunk" and state.lag is not None:
            weights, idx = self._chunk_decision_rows(x_t, state)
        elif self.router_kind == "chunk":
            if state.pos % self.chunk_size == 0:
                if state.pos == 0:
                    summary = self.router_start.expand(x_t.shape[0], -1)
                else:
                    summary = state.sum / self.chunk_size
                r = summary.to(state.sum.dtype if self.router_f32 else x_t.dtype)
                _, weights, idx = O.token_choice(self._logits(r), self.topk, self.renormalize)
                state.weights.copy_(weights)
                state.idx.copy_(idx)
                state.sum.zero_()
            state.sum += x_t.to(state.sum.dtype)
            weights, idx = state.weights, state.idx
        else:
            _, weights, idx = O.token_choice(self._logits(x_t), self.topk, self.renormalize)
        state.pos += 1
        chosen = torch.zeros(x_t.shape[0], self.n_experts, dtype=torch.bool,
                             device=x_t.device).scatter_(1, idx, True)
        if state.taken is not None:
            chosen &= state.taken < state.limit
            state.taken += chosen.long()
        combine = torch.zeros(chosen.shape, dtype=weights.dtype, device=x_t.device).scatter_(1, idx, weights)
        y = O.dense_experts(x_t, combine * chosen, *self._weights(), self.act)
        if self.shared is not None:
            y = y + self._shared(x_t)
        return y

    def _chunk_decision_rows(self, x_t: torch.Tensor, state: "RouterState"):
        """The chunk router's step with rows at their own positions p_b = pos - lag_b
        (modules.py): a row at a chunk's first token takes a new decision (as step does),
        every other row keeps its own. (weights, idx) [B, k]."""
        rows = state.pos - state.lag
        first = (rows % self.chunk_size == 0)[:, None]
        summary = torch.where((rows == 0)[:, None], self.router_start.to(state.sum.dtype),
                              state.sum / self.chunk_size)
        r = summary.to(state.sum.dtype if self.router_f32 else x_t.dtype)
        _, weights, idx = O.token_choice(self._logits(r), self.topk, self.renormalize)
        state.weights.copy_(torch.where(first, weights.to(state.weights.dtype), state.weights))
        state.idx.copy_(torch.where(first, idx, state.idx))
        state.sum.copy_(torch.where(first, 0, state.sum) + x_t.to(state.sum.dtype))
        return state.weights, state.idx


@dataclass
class RouterState:
    """moe's decoding state (init_state says what each tensor holds); `limit` (tokens per
    expert and sequence, None: no capacity) and `pos` are plain numbers."""
    limit: int | None
    taken: torch.Tensor | None = None
    sum: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    pos: int = 0
    lag: torch.Tensor | None = None  # rows' offsets behind pos (components/modules.py)
