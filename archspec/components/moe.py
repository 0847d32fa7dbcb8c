"""Mixture of experts feed-forward (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral;
chunk-level routing after Hydra, arXiv 2508.15099, made causal; expert choice, Zhou et al. 2022).

    x: [B, T, d] -> y: [B, T, d];  E experts of hidden width f, top-k, n_s shared experts
    expert_e(x) = (act(x W_gate,e^T) * (x W_up,e^T)) W_down,e^T   act = SiLU (swiglu) | GeLU (geglu)
        W_gate, W_up: [E, f, d];  W_down: [E, d, f]
    router logits l = r W_r^T [., E] in float32 (router_dtype), p = softmax(l)
    y_t = sum_{e in S(t)} w_e(t) expert_e(x_t) + shared(x_t)
        shared = one gated MLP of width n_s f_s (n_s experts of width f_s side by side: the same
        function and parameters as n_s separate ones summed)

Routers (`router`):
  * token (default, causal): r = x_t; (w, S(t)) = top-k(p_t); renormalize: w <- w / sum w.
  * chunk (Hydra's chunk-level routing, causal): the sequence is cut into chunks of C tokens;
    chunk c is routed once, from s_c = mean(x over chunk c - 1) (a full chunk, entirely before
    chunk c), s_0 = a learned vector `router_start` [d]; every token of chunk c uses chunk c's
    top-k experts and weights. So the decision for chunk c depends on nothing at or after the
    chunk's first token. (Hydra's toy code routes a chunk by its own mean, which reads tokens
    that come after the early tokens of the chunk: a causality leak, not repeated here.)
  * expert_choice (Zhou et al. 2022; NOT causal): per sequence each expert takes the
    C = min(T, ceil(cf k T / E)) tokens with the largest p[t, e] (cf = capacity_factor, 1 when
    null), weight p[t, e]; a token may be taken by 0..E experts. Which tokens an expert takes
    depends on the whole sequence, so outputs depend on later tokens: for encoders and analysis,
    never for autoregressive decoding. The report says so.
Capacity (token and chunk routers): capacity_factor null = dropless (the default). With cf,
expert e keeps at most L = ceil(cf k T / E) assignments of each sequence, the earliest in time
(first come, first served), so whether a token is kept depends only on earlier tokens; a dropped
assignment contributes nothing (the kept weights are not renormalised; the residual carries x).

Reference path (`form = "grouped"`): the (token, expert) assignments are sorted expert-major
(stable sort by expert: token order within each expert), each expert runs one matmul chain on
its contiguous slice of gathered rows, the results are weighted and index_add_-ed back. No
expert ever sees a token not routed to it. Ground truth (`form = "dense"`, tests and the
benchmark baseline only): every expert on every token, multiplied by a dense [B T, E] combine
matrix built by a separate code path (archspec/ops/moe/naive.py: dense_combine).

Auxiliary losses (ctx.add_aux_loss, summed over layers; from the routing before capacity):
  moe_load_balance = aux_loss_scale * E sum_e f_e P_e   (Switch form; f_e = fraction of the
      N k assignments made to e, P_e = mean router probability of e over the batch's tokens;
      1 when balanced, E when collapsed. MoM's loss counts f per token and gives k instead.)
      Not added under expert choice, which balances by construction.
  moe_z_loss = z_loss_scale * mean_t logsumexp(l_t)^2   (ST-MoE; per token, a chunk's value
      counted for each of its tokens)

Parameters: E d (router) + [d (router_start, chunk router)] + 3 E d f + 3 d n_s f_s.
Active per token: router (+ start) + k experts (expert choice: cf k on average, at most E)
+ the shared experts.

FLOPs for one sequence (1 FLOP = one multiply or one add). matmul: the router 2 R d E with R = T
rows (token, expert choice) or n_c = ceil(T / C) chunk summaries; the experts 6 d f A, A the
kept assignments: k T (dropless token or chunk routing: exact for any routing), E C (expert
choice: exact), at most min(k T, E L) with capacity (the report assumes balanced routing, the
bounds are k min(T, L) .. min(k T, E L)); shared experts 6 d n_s f_s T. `other`: softmax 5 E per
router row; renormalisation 2k - 1 per router row; chunk summaries C d per summarised chunk (C - 1
adds and a divide per channel); per assignment f (act + 1) (activation as in mlp.py, SiLU 4,
GeLU 5, plus the gate multiply) and 2 d (weight, accumulate); shared n_s f_s (act + 1) + d per
token. Top-k selection (comparisons), casts and the auxiliary losses (training only) count 0.
Inference state per sequence: token routing none (with capacity, E int64 counts of tokens taken);
chunk routing the running float32 sum of the current chunk [d] and its routing (k int64 experts,
k float32 weights), plus the counts with capacity; expert choice has no incremental form.
Initialisation: router, W_gate, W_up, shared gate/up N(0, init_std); W_down and the shared
down projection N(0, init_std / sqrt(2 L)) (they write into the residual); router_start
N(0, init_std) (small: chunk 0 starts near uniform routing without exact ties).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..costs import ACTIVATION_FLOPS, SOFTMAX_FLOPS_PER_ELEMENT
from ..ops import moe as O
from .base import CheckIssue, Component, ComponentModule, Flops, ModelConfig, numel, register
from .mlp import _TORCH_ACT

GATED = {"swiglu": "silu", "geglu": "gelu"}
ROUTERS = ("token", "chunk", "expert_choice")


def default_d_ff(d_model: int, multiple_of: int) -> int:
    """The dense gated MLP's default width: 8d/3 rounded up to multiple_of (mlp.py)."""
    return multiple_of * math.ceil(int(8 * d_model / 3) / multiple_of)


@register
class MoE(Component):
    type = "moe"
    summary = "mixture of experts: token / causal chunk / expert-choice routing, SwiGLU experts"
    schema = {
        "properties": {
            "n_experts": {"type": "integer", "minimum": 1, "default": 8, "description": "routed experts E"},
            "topk": {"type": "integer", "minimum": 1, "default": 2,
                     "description": "experts per token (expert choice: average experts per token)"},
            "d_ff": {"type": "integer", "minimum": 1,
                     "description": "hidden width f of each expert; default the dense gated MLP's, "
                                    "8d/3 rounded up to multiple_of (each expert the size of the "
                                    "MLP it replaces, as in Mixtral)"},
            "multiple_of": {"type": "integer", "minimum": 1, "default": 256,
                            "description": "rounding of the default d_ff"},
            "activation": {"enum": sorted(GATED), "default": "swiglu",
                           "description": "gated expert activation: swiglu (SiLU) or geglu (GeLU)"},
            "router": {"enum": list(ROUTERS), "default": "token",
                       "description": "token: top-k per token; chunk: one causal decision per chunk "
                                      "of chunk_size tokens, from the previous chunk's mean (Hydra); "
                                      "expert_choice: each expert picks its tokens (NOT causal)"},
            "chunk_size": {"type": "integer", "minimum": 1, "default": 32,
                           "description": "tokens per routing decision with router: chunk"},
            "renormalize": {"type": "boolean", "default": True,
                            "description": "rescale the k chosen probabilities to sum to 1 "
                                           "(token and chunk routers)"},
            "capacity_factor": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                                "description": "null = dropless; cf keeps at most ceil(cf k T / E) "
                                               "assignments per expert and sequence, first come first "
                                               "served in time order (expert choice: C = ceil(cf k T / E) "
                                               "tokens per expert, cf 1 when null)"},
            "n_shared_experts": {"type": "integer", "minimum": 0, "default": 0,
                                 "description": "experts every token uses, beside the routed ones"},
            "shared_d_ff": {"type": "integer", "minimum": 1,
                            "description": "hidden width of each shared expert (default d_ff)"},
            "aux_loss_scale": {"type": "number", "minimum": 0, "default": 0.01,
                               "description": "coefficient of the load-balancing loss E sum f_e P_e"},
            "z_loss_scale": {"type": "number", "minimum": 0, "default": 1e-3,
                             "description": "coefficient of the router z-loss mean(logsumexp(logits)^2)"},
            "router_dtype": {"enum": ["float32", "model"], "default": "float32",
                             "description": "router matmul and softmax in float32 (at least), or in "
                                            "the model's dtype"},
        },
    }
    example = {"n_experts": 4, "topk": 2, "d_ff": 32, "n_shared_experts": 1}

    # --- configuration -------------------------------------------------------------------
    def derive(self, cfg, model):
        if cfg.get("d_ff") is None:
            cfg["d_ff"] = default_d_ff(model.d_model, cfg["multiple_of"])
        if cfg.get("shared_d_ff") is None:
            cfg["shared_d_ff"] = cfg["d_ff"]
        return cfg

    def check(self, cfg, model, written=frozenset()):
        issues = []
        e, k, router = cfg["n_experts"], cfg["topk"], cfg["router"]
        if k > e:
            issues.append(CheckIssue("topk", f"topk={k} exceeds n_experts={e}",
                                     f"route each token to at most n_experts; use topk <= {e}"))
        if router != "expert_choice" and k == 1 and cfg["renormalize"]:
            key = "renormalize" if "renormalize" in written else "topk"
            issues.append(CheckIssue(key, "topk 1 with renormalize: every routing weight becomes 1, so "
                                     "the router learns only from the auxiliary losses",
                                     "set renormalize: false (Switch's top-1 form) or use topk >= 2"))
        if cfg["d_ff"] > 64 * model.d_model:
            issues.append(CheckIssue("d_ff", f"d_ff={cfg['d_ff']} is over 64 x d_model={model.d_model}",
                                     "did you mean a multiplier, e.g. `${d_model} * 2`?"))
        if cfg["n_shared_experts"] == 0 and "shared_d_ff" in written:
            issues.append(CheckIssue("shared_d_ff", "shared_d_ff is set but n_shared_experts is 0",
                                     "set n_shared_experts >= 1, or drop shared_d_ff"))
        if router != "chunk" and "chunk_size" in written:
            issues.append(CheckIssue("chunk_size", f"chunk_size applies only to router: chunk (router is "
                                     f"'{router}')", "set router: chunk, or drop chunk_size"))
        if router == "chunk" and cfg["chunk_size"] >= model.max_seq_len:
            issues.append(CheckIssue("chunk_size", f"chunk_size={cfg['chunk_size']} >= max_seq_len="
                                     f"{model.max_seq_len}: every token would use chunk 0's learned routing",
                                     f"use a chunk_size well below {model.max_seq_len}"))
        cf = cfg["capacity_factor"]
        if router == "expert_choice" and cf is not None and cf * k > e:
            issues.append(CheckIssue("capacity_factor", f"expert choice with capacity_factor {cf:g}: each "
                                     f"expert would take cf k / E = {cf * k / e:g} of the tokens (more than all)",
                                     f"use capacity_factor <= n_experts / topk = {e / k:g}"))
        return issues

    # --- accounting ----------------------------------------------------------------------
    def param_shapes(self, cfg, model):
        d, e, f = model.d_model, cfg["n_experts"], cfg["d_ff"]
        shapes = {"router.weight": (e, d)}
        if cfg["router"] == "chunk":
            shapes["router_start"] = (d,)
        shapes.update({"experts.gate_proj": (e, f, d), "experts.up_proj": (e, f, d),
                       "experts.down_proj": (e, d, f)})
        if cfg["n_shared_experts"]:
            fs = cfg["n_shared_experts"] * cfg["shared_d_ff"]
            shapes.update({"shared.gate_proj.weight": (fs, d), "shared.up_proj.weight": (fs, d),
                           "shared.down_proj.weight": (d, fs)})
        return shapes

    def router_rows(self, cfg, seq_len: int) -> int:
        """Rows the router scores per sequence: tokens, or chunk summaries."""
        return -(-seq_len // cfg["chunk_size"]) if cfg["router"] == "chunk" else seq_len

    def balanced_assignments(self, cfg, seq_len: int) -> int:
        """Kept assignments of one sequence: exact for dropless token/chunk routing and for expert
        choice; with capacity, those of perfectly balanced routing."""
        e, k = cfg["n_experts"], cfg["topk"]
        if cfg["router"] == "expert_choice":
            return e * O.expert_choice_capacity(cfg["capacity_factor"], k, seq_len, e)
        if cfg["capacity_factor"] is None:
            return k * seq_len
        limit = O.capacity_limit(cfg["capacity_factor"], k, seq_len, e)
        base, extra = divmod(k * seq_len, e)
        return sum(min(base + (1 if j < extra else 0), limit) for j in range(e))

    def flops_for_assignments(self, cfg, model, seq_len: int, assignments: int) -> Flops:
        """FLOPs of one forward over `seq_len` tokens whose routing kept `assignments`."""
        d, e, f, k = model.d_model, cfg["n_experts"], cfg["d_ff"], cfg["topk"]
        fs = cfg["n_shared_experts"] * cfg["shared_d_ff"]
        act = ACTIVATION_FLOPS[GATED[cfg["activation"]]] + 1
        rows = self.router_rows(cfg, seq_len)
        matmul = 2 * rows * d * e + 6 * d * f * assignments + 6 * d * fs * seq_len
        other = rows * e * SOFTMAX_FLOPS_PER_ELEMENT + assignments * (f * act + 2 * d)
        if cfg["router"] != "expert_choice" and cfg["renormalize"]:
            other += rows * (2 * k - 1)
        if cfg["router"] == "chunk":
            other += (rows - 1) * cfg["chunk_size"] * d
        if fs:
            other += seq_len * (fs * act + d)
        return Flops(matmul=matmul, other=other)

    def flops(self, cfg, model, seq_len, conv):
        return self.flops_for_assignments(cfg, model, seq_len, self.balanced_assignments(cfg, seq_len))

    def flops_bounds(self, cfg, model, seq_len, conv):
        """Only capacity under token/chunk routing makes the work depend on the routing: the
        fewest kept assignments when every token picks the same k experts (k min(T, L)), the
        most min(k T, E L)."""
        if cfg["capacity_factor"] is None or cfg["router"] == "expert_choice":
            return None
        e, k = cfg["n_experts"], cfg["topk"]
        limit = O.capacity_limit(cfg["capacity_factor"], k, seq_len, e)
        lo, hi = k * min(seq_len, limit), min(k * seq_len, e * limit)
        f = self.flops_for_assignments
        return f(cfg, model, seq_len, lo).matmul, f(cfg, model, seq_len, hi).matmul

    def notes(self, cfg, model):
        notes = []
        if cfg["router"] == "expert_choice":
            notes.append("expert_choice routing is NOT causal: each expert picks its top-C tokens of the "
                          "whole sequence, so a token's output depends on later tokens (no autoregressive "
                          "decoding); FLOPs are exact (E C assignments per sequence)")
        elif cfg["capacity_factor"] is not None:
            notes.append(f"capacity factor {cfg['capacity_factor']:g}: each expert keeps at most "
                         "ceil(cf k T / E) assignments per sequence, first come first served in time order; "
                         "FLOPs assume balanced routing (fewer experts' work when routing is skewed)")
        if cfg["router"] == "chunk":
            notes.append(f"chunk routing: chunk c of {cfg['chunk_size']} tokens is routed by the mean of "
                         "chunk c - 1 (chunk 0 by a learned vector), so routing stays causal")
        return notes

    def state_bytes(self, cfg, model, seq_len):
        counts = 8 * cfg["n_experts"] if cfg["capacity_factor"] is not None else 0
        if cfg["router"] == "token":
            return counts
        if cfg["router"] == "chunk":
            return 4 * model.d_model + 12 * cfg["topk"] + counts
        return 0

    def activation_bytes(self, cfg, model, seq_len):
        # Estimate for the grouped path: per token the input and the float32 router logits and
        # probabilities; per kept assignment the gathered input, gate pre- and post-activation,
        # up projection, their product and the expert output (weighted afterwards); the shared
        # experts as a gated MLP (input shared).
        d, e, f, b = model.d_model, cfg["n_experts"], cfg["d_ff"], model.dtype_bytes
        fs = cfg["n_shared_experts"] * cfg["shared_d_ff"]
        rows = self.router_rows(cfg, seq_len)
        per_token = d * b + fs * 4 * b
        per_assignment = (2 * d + 4 * f) * b + 8 * 2
        return seq_len * per_token + rows * e * 8 + self.balanced_assignments(cfg, seq_len) * per_assignment

    def active_param_count(self, cfg, model):
        shapes = self.param_shapes(cfg, model)
        per_expert = 3 * model.d_model * cfg["d_ff"]
        routed = numel({n: s for n, s in shapes.items() if n.startswith("experts.")})
        k, e = cfg["topk"], cfg["n_experts"]
        if cfg["router"] == "expert_choice":
            used = min(e, (1.0 if cfg["capacity_factor"] is None else cfg["capacity_factor"]) * k)
        else:
            used = k
        return numel(shapes) - routed + round(used * per_expert)

    # --- module --------------------------------------------------------------------------
    class Module(ComponentModule):
        def __init__(self, cfg: dict, model: ModelConfig):
            super().__init__()
            d, e, f = model.d_model, cfg["n_experts"], cfg["d_ff"]
            self.d, self.n_experts, self.topk = d, e, cfg["topk"]
            self.router_kind, self.chunk_size = cfg["router"], cfg["chunk_size"]
            self.renormalize, self.capacity_factor = cfg["renormalize"], cfg["capacity_factor"]
            self.aux_scale, self.z_scale = float(cfg["aux_loss_scale"]), float(cfg["z_loss_scale"])
            self.router_f32 = cfg["router_dtype"] == "float32"
            self.act_name = GATED[cfg["activation"]]
            self.act = _TORCH_ACT[self.act_name]
            self.std, self.out_std = model.init_std, model.out_proj_std
            self.form = "grouped"  # "dense": every expert on every token, masked (ground truth)
            self.router = nn.Linear(d, e, bias=False)
            if self.router_kind == "chunk":
                self.router_start = nn.Parameter(torch.empty(d))
            self.experts = nn.Module()
            self.experts.gate_proj = nn.Parameter(torch.empty(e, f, d))
            self.experts.up_proj = nn.Parameter(torch.empty(e, f, d))
            self.experts.down_proj = nn.Parameter(torch.empty(e, d, f))
            self.shared = None
            if cfg["n_shared_experts"]:
                from .base import REGISTRY
                mlp_cfg = {"activation": cfg["activation"], "bias": False,
                           "d_ff": cfg["n_shared_experts"] * cfg["shared_d_ff"]}
                self.shared = REGISTRY["mlp"].build(mlp_cfg, model)

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
            if self.form == "dense":
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
