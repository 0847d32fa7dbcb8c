"""MoM: mixture of memories (Du et al., 2025, arXiv 2502.13685), as parameterised by fla's
`MomAttention` (fla 0.6.0), with an unpadded dispatch.

    x: [B, T, d];  H heads, K = H dk (keys), V = K expand_v = H dv (values), M memories, top-k
    router:  p = softmax(x W_r^T) (float32) [B, T, M];  (w, m) = top-k(p), w <- w / sum(w)
    q = x W_q^T [B, T, K]  (one query projection shared by all memories)
    for each memory j (and a shared memory j = M that every token enters with weight 1):
        tokens routed to j, in time order per sequence:  x_j [n_j, d]
        k_j = x_j W_k,j^T [n_j, K],  v_j = x_j W_v,j^T [n_j, V]
        beta_j = sigmoid(x_j W_b,j^T) [n_j, H]                       (delta rules)
        g_j = -exp(A_log) softplus(x_j W_a,j^T + dt_bias) [n_j, H]   (gated_delta: log decay)
        g_j = logsigmoid(x_j W_a,j^T) / 16 [n_j, K]                  (gla: per-channel log decay)
        q_j, k_j, v_j <- SiLU(short causal conv_c(.)) over the memory's own token sequence
        q_j, k_j <- l2-normalised per head
        o_j = rule(q_j, k_j, v_j, g_j, beta_j) [n_j, H, dv]: a linear recurrence over the
              memory's tokens (gated_delta, delta, gla, linear; see archspec/ops/linear_attention)
    o[t] = sum_{j in top-k(t)} w_j(t) o_j[t] + o_shared[t]      [B, T, H, dv]
    y = (RMSNorm(o) * w_n * SiLU(x W_g^T)) W_o^T                 [B, T, d]  (gated norm per head)

Each memory holds its own state S_j [H, dk, dv] and only sees the tokens routed to it, so the
state is M (+1) times that of one linear-attention layer, at the cost of k (+1) key/value
projections per token. Dispatch packs every (memory, sequence) group back to back (varlen
offsets), padded only to the chunk size: never every memory to the longest group, as fla does.
With `capacity` c, memory j takes at most ceil(c k T / M) tokens of each sequence, first come
first served (so a token's fate depends only on earlier tokens: routing stays causal); dropped
assignments contribute nothing.

Auxiliary loss (Switch / Mixtral form, as fla's MoM): aux_loss_scale * M * sum_j f_j P_j with
f_j the fraction of tokens whose top-k includes j and P_j the mean router probability of j over
the batch's tokens; balanced routing gives k. Summed over layers.

Parameters: d K + d M + n_b (d K + d V + r) + a + c (2K + V) + d V + dv + V d, with n_b = M + 1
with the shared memory, else M; r = 2 d H (gated_delta), d H (delta), d K (gla), 0 (linear);
a = 2H (A_log, dt_bias; gated_delta only). fla's 340M MoM layer (d 1024, H 4, dk 256, M 4,
top-2, shared) has 13,689,096. Names map to fla's one to one, except router = fla's `gate`.

FLOPs for one sequence (1 FLOP = one multiply or one add): matmul = projections 2 T d (K + M +
2V) + 2 (k + s) T d (K + V + r / d) + the chunked rule's matmuls over the memories' token counts
(archspec.ops.linear_attention.chunk_flops; balanced routing, k T / M tokens per memory, is
assumed; the measured count varies with routing only through chunk padding, see flops_bounds).
Elementwise `other`: router softmax 5M per token, conv (2c - 1 + 4) per channel and routed token,
l2 norms 3 per element, beta/decay activations, the rule's elementwise work, the weighted
combine 2 V per assignment, the gated norm 9 per value.
Inference state per sequence: n_b float32 states H dk dv, and n_b conv windows (c - 1)(2K + V).
Decoding: `init_cache` then `step` per token (the recurrent form); or `prefill(prompt)`, which runs
the chunked form (the Triton kernels with backend triton) and returns the cache from every
group's final state, conv window and token count, for `step` to continue.
Initialisation: projections and router N(0, init_std), o_proj N(0, init_std / sqrt(2 L));
A_log = log U(0, 16); dt_bias = softplus^-1 of dt, log-uniform in [1e-3, 1e-1] floored at
1e-4 (fla); convs as nn.Conv1d (U(+-1/sqrt(c))); norm weight 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..costs import SOFTMAX_FLOPS_PER_ELEMENT
from ..ops import linear_attention as LA
from ..ops.conv import causal_conv1d, causal_conv1d_step, conv_flops
from ..ops.dispatch import Dispatch, combine_rows, gather_rows, plan_dispatch, row_map
from ..ops.linear_attention import (GATE_DTYPE_NAMES, KERNEL_DTYPE_NAMES, kernels_unsupported,
                                    triton_chunk_rule)
from ..ops.moe import load_balancing_loss, token_choice
from ..ops.norm import gated_rmsnorm, gated_rmsnorm_flops, l2_normalise
from ..ops.triton_support import add_triton_backend
from .base import (REGISTRY, CheckIssue, Component, ComponentModule, Flops, ModelConfig, init_dt_bias,
                   register)

L2NORM_FLOPS = 3        # per element: square, sum, scale
GLA_GATE_NORMALIZER = 16.0  # GLA's gate_logit_normalizer
# per head-step: sigmoid (4) for beta; softplus (3), add, exp(A) multiply, negate for the decay
BETA_FLOPS, DECAY_FLOPS, GLA_GATE_FLOPS = 4, 6, 5


def extra_rows(rule: str, h: int, k: int) -> int:
    """Rows of the per-memory projections besides k and v: beta (H), decay (H or K)."""
    return {"gated_delta": 2 * h, "delta": h, "gla": k, "linear": 0}[rule]


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@register
class MoM(Component):
    type = "mom"
    summary = "mixture of memories: routed linear-attention memories (+ a shared one)"
    schema = {
        "properties": {
            "rule": {"enum": list(LA.RULES), "default": "gated_delta",
                     "description": "each memory's update rule (MoM's default: gated_delta)"},
            "n_heads": {"type": "integer", "minimum": 1, "default": 4, "description": "heads H"},
            "head_dim": {"type": "integer", "minimum": 1, "default": 256,
                         "description": "key dimension per head dk (K = H dk)"},
            "expand_v": {"type": "number", "exclusiveMinimum": 0, "default": 1,
                         "description": "value dimension per head dv = head_dim * expand_v"},
            "n_memories": {"type": "integer", "minimum": 1, "default": 4,
                           "description": "routed memories M"},
            "topk": {"type": "integer", "minimum": 1, "default": 2,
                     "description": "memories each token is routed to"},
            "shared_memory": {"type": "boolean", "default": True,
                              "description": "an extra memory that sees every token"},
            "capacity": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                         "description": "null = dropless; c caps each memory at ceil(c k T / M) "
                                        "tokens per sequence (first come, first served)"},
            "aux_loss_scale": {"type": "number", "minimum": 0, "default": 0.01,
                               "description": "coefficient of the load-balancing loss"},
            "conv_size": {"type": "integer", "minimum": 1, "default": 4,
                          "description": "short causal convolution width on q, k, v"},
            "output_gate": {"type": "boolean", "default": True,
                            "description": "SiLU output gate g_proj into the gated RMSNorm"},
            "norm_eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-6,
                         "description": "eps of the output RMSNorm"},
            "chunk_size": {"type": "integer", "minimum": 1, "default": 64,
                           "description": "chunk length of the chunked training form"},
        },
    }
    example = {"n_heads": 2, "head_dim": 16, "n_memories": 4, "topk": 2, "chunk_size": 16}

    def derive(self, cfg, model):
        cfg["key_dim"] = cfg["n_heads"] * cfg["head_dim"]
        cfg["head_v_dim"] = int(cfg["head_dim"] * cfg["expand_v"])
        cfg["value_dim"] = cfg["n_heads"] * cfg["head_v_dim"]
        return cfg

    def check(self, cfg, model, written=frozenset()):
        issues = []
        if cfg["topk"] > cfg["n_memories"]:
            issues.append(CheckIssue("topk", f"topk={cfg['topk']} exceeds n_memories={cfg['n_memories']}",
                                     f"route each token to at most n_memories; use topk <= {cfg['n_memories']}"))
        dv = cfg["head_dim"] * cfg["expand_v"]
        if dv != int(dv) or dv < 1:
            issues.append(CheckIssue("expand_v", f"head_dim * expand_v = {dv:g} is not a whole number",
                                     "pick expand_v so that head_dim * expand_v is an integer"))
        if cfg["rule"] == "gla" and cfg["head_dim"] > 512:
            issues.append(CheckIssue("head_dim", f"gla keeps a decay per key channel; head_dim="
                                     f"{cfg['head_dim']} makes its chunked form very large",
                                     "use head_dim <= 512 with rule gla"))
        return issues

    # --- accounting ----------------------------------------------------------------------
    def param_shapes(self, cfg, model):
        d, h, kd, vd, m = model.d_model, cfg["n_heads"], cfg["key_dim"], cfg["value_dim"], cfg["n_memories"]
        c = cfg["conv_size"]
        rule = cfg["rule"]
        shapes = {"q_proj.weight": (kd, d), "router.weight": (m, d)}
        per_memory = {"k": (kd, d), "v": (vd, d)}
        if rule in ("gated_delta", "delta"):
            per_memory["b"] = (h, d)
        if rule == "gated_delta":
            per_memory["a"] = (h, d)
        if rule == "gla":
            per_memory["a"] = (kd, d)
        for name, shape in per_memory.items():
            for j in range(m):
                shapes[f"{name}_proj.{j}.weight"] = shape
        if cfg["shared_memory"]:
            for name, shape in per_memory.items():
                shapes[f"shared_{name}.weight"] = shape
        if rule == "gated_delta":
            shapes["A_log"] = (h,)
            shapes["dt_bias"] = (h,)
        shapes.update({"q_conv1d.weight": (kd, 1, c), "k_conv1d.weight": (kd, 1, c),
                       "v_conv1d.weight": (vd, 1, c)})
        if cfg["output_gate"]:
            shapes["g_proj.weight"] = (vd, d)
        shapes["o_norm.weight"] = (cfg["head_v_dim"],)
        shapes["o_proj.weight"] = (d, vd)
        return shapes

    def _n_banks(self, cfg) -> int:
        return cfg["n_memories"] + (1 if cfg["shared_memory"] else 0)

    def balanced_lengths(self, cfg, seq_len: int) -> list[int]:
        """Tokens per memory for one sequence under perfectly balanced routing (and capacity)."""
        m, k = cfg["n_memories"], cfg["topk"]
        assignments = k * seq_len
        if cfg["capacity"] is not None:
            assignments = min(assignments, m * math.ceil(cfg["capacity"] * k * seq_len / m))
        base, extra = divmod(assignments, m)
        lengths = [base + (1 if j < extra else 0) for j in range(m)]
        return lengths + ([seq_len] if cfg["shared_memory"] else [])

    def flops_for_lengths(self, cfg, model, seq_len: int, lengths: list[int]) -> Flops:
        """FLOPs of one forward whose routed groups (one per memory and sequence, the shared
        memory's last) have `lengths`; `seq_len` is the total of tokens entering the layer."""
        d, h, kd, vd, m = model.d_model, cfg["n_heads"], cfg["key_dim"], cfg["value_dim"], cfg["n_memories"]
        rule, t = cfg["rule"], seq_len
        rows = sum(lengths)  # routed + shared assignments
        gate = vd if cfg["output_gate"] else 0
        matmul = 2 * t * d * (kd + m + gate + vd) + 2 * rows * d * (kd + vd + extra_rows(rule, h, kd))
        core = LA.chunk_flops(rule, lengths, h, cfg["head_dim"], cfg["head_v_dim"], cfg["chunk_size"])
        other = t * m * SOFTMAX_FLOPS_PER_ELEMENT
        other += conv_flops(rows, 2 * kd + vd, cfg["conv_size"], False, "silu").other
        other += rows * L2NORM_FLOPS * 2 * kd
        if rule in ("gated_delta", "delta"):
            other += rows * h * BETA_FLOPS
        if rule == "gated_delta":
            other += rows * h * DECAY_FLOPS
        if rule == "gla":
            other += rows * kd * GLA_GATE_FLOPS
        other += 2 * rows * vd  # weight each memory's output and add it into the token's sum
        other += gated_rmsnorm_flops(t * vd, t * h).other if cfg["output_gate"] else t * (4 * vd + 2 * h)
        return Flops(matmul=matmul + core.matmul, other=other + core.other)

    def flops(self, cfg, model, seq_len, conv):
        return self.flops_for_lengths(cfg, model, seq_len, self.balanced_lengths(cfg, seq_len))

    def flops_bounds(self, cfg, model, seq_len, conv):
        """Matmul FLOPs vary with routing only through chunk padding (and capacity drops): the
        fewest when one memory gets every routed token, the most when each memory's group
        wastes a nearly empty last chunk."""
        k, m, c = cfg["topk"], cfg["n_memories"], cfg["chunk_size"]
        shared = [seq_len] if cfg["shared_memory"] else []
        assignments = sum(self.balanced_lengths(cfg, seq_len)[:m])
        least_tokens = 0 if cfg["capacity"] is not None else assignments
        fewest = self.flops_for_lengths(cfg, model, seq_len, [least_tokens] + [0] * (m - 1) + shared)
        # k T assignments over M groups: at most ceil(kT/c) + M - 1 chunks; spread so each of
        # the M groups but one is 1 token past a chunk boundary.
        spread = [c * (assignments // (c * m)) + 1] * (m - 1)
        spread.append(max(0, assignments - sum(spread)))
        most = self.flops_for_lengths(cfg, model, seq_len, spread + shared)
        return fewest.matmul, most.matmul

    def notes(self, cfg, model):
        notes = [f"FLOPs assume balanced routing ({cfg['topk']} of {cfg['n_memories']} memories, "
                 "k T / M tokens each); real routing changes only how far each memory's token group is "
                 "padded to a whole chunk"]
        if cfg["capacity"] is not None:
            notes.append(f"capacity {cfg['capacity']}: tokens past ceil(c k T / M) per memory and "
                         "sequence are dropped from that memory, first come first served")
        return notes

    def state_bytes(self, cfg, model, seq_len):
        banks = self._n_banks(cfg)
        recurrent = banks * cfg["n_heads"] * cfg["head_dim"] * cfg["head_v_dim"] * 4
        conv_window = banks * (cfg["conv_size"] - 1) * (2 * cfg["key_dim"] + cfg["value_dim"])
        return recurrent + conv_window * model.dtype_bytes

    def activation_bytes(self, cfg, model, seq_len):
        # Estimate: per token the input and q/g projections; per packed row the gathered input,
        # q/k/v before and after conv and normalisation, beta/decay and the rule's output; the
        # rule's chunk intermediates are left out (they depend on the rule and chunk size).
        d, kd, vd = model.d_model, cfg["key_dim"], cfg["value_dim"]
        rows = sum(self.balanced_lengths(cfg, seq_len))
        per_token = d + kd + 2 * vd + 4 * cfg["n_memories"]
        per_row = d + 3 * (2 * kd + vd) + 2 * vd
        return (seq_len * per_token + rows * per_row) * model.dtype_bytes

    def active_param_count(self, cfg, model):
        shapes = self.param_shapes(cfg, model)
        total = sum(math.prod(s) for s in shapes.values())
        per_memory = sum(math.prod(s) for n, s in shapes.items() if n.split(".")[0].endswith("_proj")
                         and n.count(".") == 2)
        m = cfg["n_memories"]
        return total - per_memory + per_memory * cfg["topk"] // m

    # --- kernels ---------------------------------------------------------------------------
    def kernel_launches(self, cfg, model, dtype):
        """The `triton` backend's launches, as Module._run makes them (forward and backward):
        the dispatch gathers of x (d_model columns) and of q (key_dim) from a training batch's
        tokens into k (+1 shared) packed rows each, and the weighted combine of the memories'
        outputs (value_dim); the chunked rule (training, and prefill's final states); the gated
        output norm over heads of head_v_dim (a batch's rows and one decoded token's heads)."""
        from ..ops.dispatch import kernel_launches as dispatch_launches
        from ..ops.linear_attention import kernel_launches as rule_launches
        from ..ops.norm import TRAIN_ROWS, kernel_launches as norm_launches
        h, dk, dv = cfg["n_heads"], cfg["head_dim"], cfg["head_v_dim"]
        tokens = TRAIN_ROWS
        rows = tokens * (cfg["topk"] + (1 if cfg["shared_memory"] else 0))
        found = dispatch_launches(model.d_model, dtype, tokens=tokens, rows=rows, combine=False)
        found += dispatch_launches(cfg["key_dim"], dtype, tokens=tokens, rows=rows, combine=False)
        found += dispatch_launches(cfg["value_dim"], dtype, tokens=tokens, rows=rows, gather=False)
        for final_state in (False, True):
            found += rule_launches(cfg["rule"], h, dk, dv, cfg["chunk_size"], dtype,
                                   final_state=final_state)
        if cfg["output_gate"]:
            for norm_rows in (tokens * h, h):  # training; one decoded token (`step`: forward only)
                found += norm_launches(dv, dtype, rows=norm_rows, gate=True, norm_before_gate=True,
                                       backward=norm_rows > h)
        return found

    # --- module --------------------------------------------------------------------------
    class Module(ComponentModule):
        def __init__(self, cfg: dict, model: ModelConfig):
            super().__init__()
            d = model.d_model
            self.rule, self.h, self.dk, self.dv = cfg["rule"], cfg["n_heads"], cfg["head_dim"], cfg["head_v_dim"]
            kd, vd, m = cfg["key_dim"], cfg["value_dim"], cfg["n_memories"]
            self.n_memories, self.topk, self.shared = m, cfg["topk"], cfg["shared_memory"]
            self.capacity, self.aux_scale = cfg["capacity"], float(cfg["aux_loss_scale"])
            self.chunk_size, self.eps = cfg["chunk_size"], float(cfg["norm_eps"])
            self.std, self.out_std = model.init_std, model.out_proj_std
            self.form = "chunk"  # "recurrent": the token-by-token ground truth (tests)
            self.kernels = "reference"  # "triton": the `triton` backend (same weights and math)
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
            c = cfg["conv_size"]
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

        def prefill(self, x: torch.Tensor, seq_len: int | None = None) -> tuple[torch.Tensor, dict]:
            """Prompts x [B, T, d] in the training form (the chunk kernels with `triton`):
            (y [B, T, d], the decoding cache after them, as `init_cache(B, seq_len)` followed by
            T `step` calls would leave it). seq_len (default T) is the total length, which the
            capacity counts."""
            t = x.shape[1]
            if seq_len is not None and seq_len < t:
                raise ValueError(f"seq_len {seq_len} is shorter than the prompt ({t} tokens)")
            return self._run(x, None, seq_len or t)

        def _run(self, x: torch.Tensor, ctx, cache_len: int | None = None):
            b, t, d = x.shape
            probs, _, idx, plan = self.plan(x, cache_len)
            if ctx is not None:
                ctx.add_aux_loss("mom_load_balance",
                                 self.aux_scale * load_balancing_loss(probs, idx, self.n_memories,
                                                                      fraction_of="tokens").to(x.dtype))
            flat = x.reshape(b * t, d)
            fused = self.kernels == "triton"
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
            if self.form == "recurrent":
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
            if cache_len is None:
                return y, None
            return y, self._cache_after(plan, conv_inputs, final, b, cache_len, x.dtype)

        def _cache_after(self, plan: Dispatch, conv_inputs: torch.Tensor, final: torch.Tensor,
                         batch: int, seq_len: int, dtype) -> dict:
            """The decoding cache after the prompt: every (memory, sequence) group's final state,
            its last c - 1 convolution inputs [q | k | v] (oldest first, zeros before the group's
            first token) and its token count."""
            cache = self.init_cache(batch, seq_len, device=conv_inputs.device, dtype=dtype)
            banks, _, width, window = cache["conv"].shape
            starts, ends = plan.cu_seqlens[:-1], plan.cu_seqlens[1:]
            pos = ends[:, None] - window + torch.arange(window, device=ends.device)  # [G, c - 1]
            pos = torch.where(pos >= starts[:, None], pos, conv_inputs.shape[0])  # the zero row
            rows = torch.cat([conv_inputs, conv_inputs.new_zeros(1, width)])
            cache["conv"] = rows[pos].transpose(1, 2).reshape(banks, batch, width, window).to(dtype)
            cache["state"] = final.reshape(cache["state"].shape).to(cache["state"].dtype)
            cache["taken"] = (ends - starts).view(banks, batch)[: self.n_memories].T.contiguous()
            return cache

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
                                  backend=self.kernels)
            else:
                f32 = at_least_float32
                o = nn.functional.rms_norm(f32(o), (self.dv,), f32(self.o_norm.weight), self.eps).to(o.dtype)
            return self.o_proj(o.reshape(b, t, -1).to(x.dtype))

        # --- decoding: the token-by-token ground truth --------------------------------------
        def init_cache(self, batch: int, seq_len: int, device=None, dtype=None) -> dict:
            """Per-sequence decoding state: every memory's conv window and recurrent state, and
            (with a capacity) how many tokens each memory took. `seq_len` fixes the capacity."""
            w = self.q_proj.weight
            device, dtype = device or w.device, dtype or w.dtype
            banks = self.n_memories + (1 if self.shared else 0)
            width = 2 * self.h * self.dk + self.h * self.dv
            state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            limit = None if self.capacity is None else math.ceil(self.capacity * self.topk * seq_len / self.n_memories)
            return {"conv": torch.zeros(banks, batch, width, self.q_conv1d.weight.shape[-1] - 1, dtype=dtype, device=device),
                    "state": torch.zeros(banks, batch, self.h, self.dk, self.dv, dtype=state_dtype, device=device),
                    "taken": torch.zeros(batch, self.n_memories, dtype=torch.int64, device=device),
                    "limit": limit}

        def step(self, x_t: torch.Tensor, cache: dict) -> torch.Tensor:
            """One token per sequence: x_t [B, d] -> y_t [B, d]; updates `cache` in place. Each
            memory's recurrence advances only on the tokens routed to it."""
            b = x_t.shape[0]
            _, weights, idx = token_choice(at_least_float32(self.router(x_t)), self.topk, renormalize=True)
            chosen = torch.zeros(b, self.n_memories, dtype=torch.bool, device=x_t.device).scatter_(1, idx, True)
            weight = torch.zeros(b, self.n_memories, dtype=weights.dtype, device=x_t.device).scatter_(1, idx, weights)
            if cache["limit"] is not None:
                chosen &= cache["taken"] < cache["limit"]
            cache["taken"] += chosen.long()
            conv_w = torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight])
            q = self.q_proj(x_t)
            kd = self.h * self.dk
            out = torch.zeros(b, self.h, self.dv, dtype=cache["state"].dtype, device=x_t.device)
            for j in range(cache["conv"].shape[0]):
                k, v, beta, g = self._memory_projections(x_t, [0] * j + [b])
                mixed, conv = causal_conv1d_step(torch.cat([q, k, v], -1), cache["conv"][j], conv_w, None, "silu")
                qj = l2_normalise(mixed[:, :kd].view(b, self.h, self.dk))
                kj = l2_normalise(mixed[:, kd:2 * kd].view(b, self.h, self.dk))
                vj = mixed[:, 2 * kd:].view(b, self.h, self.dv)
                o, state = LA.recurrent_step(self.rule, qj, kj, vj, cache["state"][j], g_t=g, beta_t=beta)
                take = chosen[:, j] if j < self.n_memories else torch.ones(b, dtype=torch.bool, device=x_t.device)
                cache["conv"][j] = torch.where(take[:, None, None], conv, cache["conv"][j])
                cache["state"][j] = torch.where(take[:, None, None, None], state, cache["state"][j])
                w = weight[:, j] * take if j < self.n_memories else take.to(weight.dtype)
                out = out + w[:, None, None].to(out.dtype) * o.to(out.dtype)
            return self._output(out[:, None].to(x_t.dtype), x_t[:, None])[:, 0]


def _triton_supports(cfg: dict, model: ModelConfig) -> str | None:
    reason = kernels_unsupported(cfg["rule"], cfg["head_dim"], cfg["head_v_dim"], cfg["chunk_size"])
    if reason is not None:
        return reason
    if model.dtype not in KERNEL_DTYPE_NAMES:
        return (f"the Triton kernels take {', '.join(KERNEL_DTYPE_NAMES)} models, got {model.dtype}; "
                "use backend 'reference'")
    return None


def _triton_auto_skips(cfg: dict, model: ModelConfig) -> str | None:
    if model.dtype not in GATE_DTYPE_NAMES:
        return (f"auto keeps the reference for {model.dtype} models: the kernels compute them right "
                "but spill registers on sm_80 / sm_90 (`archspec kernels --compile sm_80,sm_90 "
                f"--dtypes {model.dtype} --only linear_attention`); build in bfloat16, or force "
                "backend 'triton'")
    return None


def _triton_module(cfg: dict, model: ModelConfig) -> MoM.Module:
    """The `triton` backend: the same module (same parameters, same math), whose dispatch
    (archspec/ops/dispatch), chunked rule (ops/linear_attention/triton_chunk.py) and gated
    output norm (ops/norm) run as Triton kernels; the projections and short convolutions stay
    PyTorch (cuBLAS / cuDNN already run them well)."""
    module = MoM.Module(cfg, model)
    module.kernels = "triton"
    return module


add_triton_backend(REGISTRY["mom"], _triton_module, supports=_triton_supports,
                   auto_skips=_triton_auto_skips)
