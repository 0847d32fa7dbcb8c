"""Mixture of experts feed-forward (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral;
chunk-level routing after Hydra, arXiv 2508.15099, made causal; expert choice, Zhou et al. 2022).

    x: [B, T, d] -> y: [B, T, d];  E experts of hidden width f, top-k, n_s shared experts
    expert_e(x) = (act(x W_gate,e^T) * (x W_up,e^T)) W_down,e^T   act = SiLU (swiglu) | GeLU (geglu)
        W_gate, W_up: [E, f, d];  W_down: [E, d, f]
    router logits l = r W_r^T [., E] in float32 (router_dtype), p = softmax(l)
    y_t = sum_{e in S(t)} w_e(t) expert_e(x_t) + shared(x_t)
        shared = one gated MLP of width n_s f_s (n_s experts of width f_s side by side: the same
        function and parameters as n_s separate ones summed)
    shared_expert_gate (Qwen1.5/2-MoE): shared(x_t) <- sigmoid(x_t W_sg^T) shared(x_t), W_sg [1, d]

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

Parameters: E d (router) + [d (router_start, chunk router)] + 3 E d f + 3 d n_s f_s
[+ d (shared_expert_gate)].
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
token; the shared expert gate 2 d matmul and 3 + d other per token (the sigmoid: exp, add,
divide; scaling the shared output: d multiplies). Top-k selection (comparisons), casts and the auxiliary losses (training only) count 0.
Inference state per sequence: token routing none (with capacity, E int64 counts of tokens taken);
chunk routing the running sum of the current chunk [d] (float32, or the dtype if wider) and its
routing (k int64 experts, k weights in the router's dtype), plus the counts with capacity; expert choice has no incremental form.
Initialisation: router, W_gate, W_up, shared gate/up N(0, init_std); W_down and the shared
down projection N(0, init_std / sqrt(2 L)) (they write into the residual); router_start
N(0, init_std) (small: chunk 0 starts near uniform routing without exact ties).
"""
from __future__ import annotations

import math

from ...costs import ACTIVATION_FLOPS, SOFTMAX_FLOPS_PER_ELEMENT
from ...ops import moe as O
from ... import limits as L
from ..base import CheckIssue, Component, Flops, child, numel, register

GATED = {"swiglu": "silu", "geglu": "gelu"}
ROUTERS = ("token", "chunk", "expert_choice")


def default_d_ff(d_model: int, multiple_of: int) -> int:
    """The dense gated MLP's default width: 8d/3 rounded up to multiple_of (mlp.py)."""
    return multiple_of * math.ceil(int(8 * d_model / 3) / multiple_of)


@register
class MoE(Component):
    type = "moe"
    module = "archspec.components.moe.module:MoEModule"
    summary = "mixture of experts: token / causal chunk / expert-choice routing, SwiGLU experts"
    schema = {
        "properties": {
            "n_experts": {"type": "integer", "minimum": 1, **L.EXPERTS.schema(), "default": 8, "description": "routed experts E"},
            "topk": {"type": "integer", "minimum": 1, **L.EXPERTS.schema(), "default": 2,
                     "description": "experts per token (expert choice: average experts per token)"},
            "d_ff": {"type": "integer", "minimum": 1, **L.WIDTH.schema(),
                     "description": "hidden width f of each expert; default the dense gated MLP's, "
                                    "8d/3 rounded up to multiple_of (each expert the size of the "
                                    "MLP it replaces, as in Mixtral)"},
            "multiple_of": {"type": "integer", "minimum": 1, **L.WIDTH.schema(), "default": 256,
                            "description": "rounding of the default d_ff"},
            "activation": {"enum": sorted(GATED), "default": "swiglu",
                           "description": "gated expert activation: swiglu (SiLU) or geglu (GeLU)"},
            "router": {"enum": list(ROUTERS), "default": "token",
                       "description": "token: top-k per token; chunk: one causal decision per chunk "
                                      "of chunk_size tokens, from the previous chunk's mean (Hydra); "
                                      "expert_choice: each expert picks its tokens (NOT causal)"},
            "chunk_size": {"type": "integer", "minimum": 1, **L.SEQ_LEN.schema(), "default": 32,
                           "description": "tokens per routing decision with router: chunk"},
            "renormalize": {"type": "boolean", "default": True,
                            "description": "rescale the k chosen probabilities to sum to 1 "
                                           "(token and chunk routers)"},
            "capacity_factor": {"type": ["number", "null"], "exclusiveMinimum": 0, **L.CAPACITY.schema(), "default": None,
                                "description": "null = dropless; cf keeps at most ceil(cf k T / E) "
                                               "assignments per expert and sequence, first come first "
                                               "served in time order (expert choice: C = ceil(cf k T / E) "
                                               "tokens per expert, cf 1 when null)"},
            "n_shared_experts": {"type": "integer", "minimum": 0, **L.SHARED_EXPERTS.schema(), "default": 0,
                                 "description": "experts every token uses, beside the routed ones"},
            "shared_d_ff": {"type": "integer", "minimum": 1, **L.WIDTH.schema(),
                            "description": "hidden width of each shared expert (default d_ff)"},
            "shared_expert_gate": {"type": "boolean", "default": False,
                                   "description": "scale the shared experts' output by sigmoid(x W^T), "
                                                  "W [1, d] (Qwen1.5/2-MoE)"},
            "aux_loss_scale": {"type": "number", "minimum": 0, **L.LOSS_SCALE.schema(), "default": 0.01,
                               "description": "coefficient of the load-balancing loss E sum f_e P_e"},
            "z_loss_scale": {"type": "number", "minimum": 0, **L.LOSS_SCALE.schema(), "default": 1e-3,
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
        if cfg["n_shared_experts"] == 0 and cfg["shared_expert_gate"]:
            issues.append(CheckIssue("shared_expert_gate", "shared_expert_gate is set but n_shared_experts "
                                     "is 0: there is no shared expert to gate",
                                     "set n_shared_experts >= 1, or drop shared_expert_gate"))
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
    def own_param_shapes(self, cfg, model):
        d, e, f = model.d_model, cfg["n_experts"], cfg["d_ff"]
        shapes = {"router.weight": (e, d)}
        if cfg["router"] == "chunk":
            shapes["router_start"] = (d,)
        shapes.update({"experts.gate_proj": (e, f, d), "experts.up_proj": (e, f, d),
                       "experts.down_proj": (e, d, f)})
        if cfg["shared_expert_gate"]:
            shapes["shared_expert_gate.weight"] = (1, d)
        return shapes

    def children(self, cfg, model):
        """The shared experts: one gated MLP of width n_s f_s, `shared.*`."""
        if not cfg["n_shared_experts"]:
            return {}
        return {"shared": child("mlp", model, activation=cfg["activation"], bias=False,
                                d_ff=cfg["n_shared_experts"] * cfg["shared_d_ff"])}

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

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        """realized: {"assignments": kept (token, expert) assignments of the sequence} (the
        module's `last_assignments` after a forward); default: balanced_assignments."""
        kept = self.balanced_assignments(cfg, seq_len) if realized is None else realized["assignments"]
        d, e, f, k = model.d_model, cfg["n_experts"], cfg["d_ff"], cfg["topk"]
        act = ACTIVATION_FLOPS[GATED[cfg["activation"]]] + 1
        rows = self.router_rows(cfg, seq_len)
        matmul = 2 * rows * d * e + 6 * d * f * kept
        other = rows * e * SOFTMAX_FLOPS_PER_ELEMENT + kept * (f * act + 2 * d)
        if cfg["router"] != "expert_choice" and cfg["renormalize"]:
            other += rows * (2 * k - 1)
        if cfg["router"] == "chunk":
            other += (rows - 1) * cfg["chunk_size"] * d
        if cfg["n_shared_experts"]:
            other += seq_len * d  # adding the shared experts' output (their own work: children)
        if cfg["shared_expert_gate"]:
            matmul += 2 * seq_len * d
            other += seq_len * (3 + d)  # the sigmoid, and scaling the shared output
        return Flops(matmul=matmul, other=other)

    def own_flops_bounds(self, cfg, model, seq_len, conv):
        """Only capacity under token/chunk routing makes the work depend on the routing: the
        fewest kept assignments when every token picks the same k experts (k min(T, L)), the
        most min(k T, E L)."""
        if cfg["capacity_factor"] is None or cfg["router"] == "expert_choice":
            return None
        e, k = cfg["n_experts"], cfg["topk"]
        limit = O.capacity_limit(cfg["capacity_factor"], k, seq_len, e)
        lo, hi = k * min(seq_len, limit), min(k * seq_len, e * limit)
        return tuple(self.own_flops(cfg, model, seq_len, conv, {"assignments": n}).matmul for n in (lo, hi))

    def own_notes(self, cfg, model):
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

    def own_state_bytes(self, cfg, model, seq_len):
        counts = 8 * cfg["n_experts"] if cfg["capacity_factor"] is not None else 0
        if cfg["router"] == "token":
            return counts
        if cfg["router"] == "chunk":
            # the current chunk's running sum (float32, or the dtype if wider), its decision:
            # int64 expert indices and weights in the router's dtype
            acc = max(4, model.dtype_bytes)
            weight = acc if cfg["router_dtype"] == "float32" else model.dtype_bytes
            return acc * model.d_model + (8 + weight) * cfg["topk"] + counts
        return 0

    def own_activation_bytes(self, cfg, model, seq_len):
        # Estimate for the grouped path: per token the input and the float32 router logits and
        # probabilities; per kept assignment the gathered input, gate pre- and post-activation,
        # up projection, their product and the expert output (weighted afterwards). The shared
        # experts (a child mlp) count the input they share with the router: not twice.
        d, e, f, b = model.d_model, cfg["n_experts"], cfg["d_ff"], model.dtype_bytes
        rows = self.router_rows(cfg, seq_len)
        per_token = 0 if cfg["n_shared_experts"] else d * b
        per_assignment = (2 * d + 4 * f) * b + 8 * 2
        return seq_len * per_token + rows * e * 8 + self.balanced_assignments(cfg, seq_len) * per_assignment

    def own_active_param_count(self, cfg, model):
        shapes = self.own_param_shapes(cfg, model)
        per_expert = 3 * model.d_model * cfg["d_ff"]
        routed = numel({n: s for n, s in shapes.items() if n.startswith("experts.")})
        k, e = cfg["topk"], cfg["n_experts"]
        if cfg["router"] == "expert_choice":
            used = min(e, (1.0 if cfg["capacity_factor"] is None else cfg["capacity_factor"]) * k)
        else:
            used = k
        return numel(shapes) - routed + round(used * per_expert)
