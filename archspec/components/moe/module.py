"""The moe module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ...ops import moe as O
from ..base import ModelConfig, get
from ..mlp.module import TORCH_ACTIVATIONS
from ..modules import ComponentModule, build_child
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

    def assignments(self, x: torch.Tensor, routing: dict | None = None) -> O.Assignments:
        """The kept (token, expert, weight) assignments, sorted expert-major."""
        b, t, _ = x.shape
        routing = routing or self.route(x)
        if self.router_kind == "expert_choice":
            return O.expert_choice_assignments(routing["sel"], routing["vals"], t)
        return O.sort_assignments(routing["idx"], routing["weights"], self.n_experts, b, t, self._limit(t))

    def combine(self, x: torch.Tensor, routing: dict) -> torch.Tensor:
        """The routing as a dense [B T, E] weight matrix (zero = not computed)."""
        b, t, _ = x.shape
        if self.router_kind == "expert_choice":
            return O.dense_combine_expert_choice(routing["sel"], routing["vals"], t)
        return O.dense_combine(routing["idx"], routing["weights"], b, t, self.n_experts, self._limit(t))

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        b, t, d = x.shape
        routing = self.route(x)
        if ctx is not None:
            self._aux_losses(routing, ctx, x.dtype)
        flat = x.reshape(b * t, d)
        if self.form == "reference":
            y = O.dense_experts(flat, self.combine(x, routing), *self._weights(), self.act)
        else:
            y = O.grouped_experts(flat, self.assignments(x, routing), *self._weights(), self.act)
        y = y.view(b, t, d)
        if self.shared is not None:
            y = y + self.shared(x)
        return y

    def _aux_losses(self, routing: dict, ctx, dtype) -> None:
        if self.aux_scale and self.router_kind != "expert_choice":
            lb = O.load_balancing_loss(routing["probs"], routing["idx"], self.n_experts)
            ctx.add_aux_loss("moe_load_balance", (self.aux_scale * lb).to(dtype))
        if self.z_scale:
            ctx.add_aux_loss("moe_z_loss", (self.z_scale * O.z_loss(routing["logits"])).to(dtype))

    # --- decoding: one token at a time (token and chunk routers) ------------------------
    def init_cache(self, batch: int, seq_len: int, device=None) -> dict:
        """Per-sequence decoding state. `seq_len` fixes the capacity limit (as in forward)."""
        if self.router_kind == "expert_choice":
            raise ValueError("expert_choice routing is not causal: it has no token-by-token form")
        device = device or self.router.weight.device
        # "sum": the current chunk's running sum, float32 (float64 for float64 inputs),
        # created at the first step
        return {"pos": 0, "sum": None,
                "idx": None, "weights": None, "limit": self._limit(seq_len),
                "taken": torch.zeros(batch, self.n_experts, dtype=torch.int64, device=device)}

    def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """x_t [B, d] -> y_t [B, d]; updates `cache`. A chunk router decides at each chunk's
        first token from the running sum of the previous chunk, then accumulates x_t."""
        if self.router_kind == "chunk":
            acc = torch.promote_types(x_t.dtype, torch.float32)
            if cache["pos"] % self.chunk_size == 0:
                if cache["pos"] == 0:
                    summary = self.router_start.expand(x_t.shape[0], -1)
                else:
                    summary = cache["sum"] / self.chunk_size
                r = summary.to(acc if self.router_f32 else x_t.dtype)
                _, cache["weights"], cache["idx"] = O.token_choice(self._logits(r), self.topk, self.renormalize)
                cache["sum"] = torch.zeros(x_t.shape, dtype=acc, device=x_t.device)
            cache["sum"] = cache["sum"] + x_t.to(acc)
            weights, idx = cache["weights"], cache["idx"]
        else:
            _, weights, idx = O.token_choice(self._logits(x_t), self.topk, self.renormalize)
        cache["pos"] += 1
        chosen = torch.zeros_like(cache["taken"], dtype=torch.bool).scatter_(1, idx, True)
        if cache["limit"] is not None:
            chosen &= cache["taken"] < cache["limit"]
        cache["taken"] += chosen.long()
        combine = torch.zeros(chosen.shape, dtype=weights.dtype, device=x_t.device).scatter_(1, idx, weights)
        y = O.dense_experts(x_t, combine * chosen, *self._weights(), self.act)
        if self.shared is not None:
            y = y + self.shared(x_t)
        return y
