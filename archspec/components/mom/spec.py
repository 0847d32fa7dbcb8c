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
With `capacity_factor` c, memory j takes at most ceil(c k T / M) tokens of each sequence, first come
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
Inference state per sequence: n_b float32 states H dk dv, n_b conv windows (c - 1)(2K + V), and
with a capacity M int64 counts. Decoding: `init_state` then `step` per token (the recurrent form);
`prefill(prompt, state)` runs the chunked form (the Triton kernels with backend triton) and fills
the state from every group's final state, conv window and token count, for `step` to continue.
Initialisation: projections and router N(0, init_std), o_proj N(0, init_std / sqrt(2 L));
A_log = log U(0, 16); dt_bias = softplus^-1 of dt, log-uniform in [1e-3, 1e-1] floored at
1e-4 (fla); convs as nn.Conv1d (U(+-1/sqrt(c))); norm weight 1.
"""
from __future__ import annotations

from ...costs import SOFTMAX_FLOPS_PER_ELEMENT
from ...ops import linear_attention as LA
from ...ops.conv import conv_flops
from ...ops.moe import capacity_limit
from ...ops.linear_attention import GATE_DTYPE_NAMES, KERNEL_DTYPE_NAMES, kernels_unsupported
from ...ops.norm import gated_rmsnorm_flops
from ... import limits as L
from ..base import CheckIssue, Component, Flops, numel, register

L2NORM_FLOPS = 3        # per element: square, sum, scale
GLA_GATE_NORMALIZER = 16.0  # GLA's gate_logit_normalizer
# per head-step: sigmoid (4) for beta; softplus (3), add, exp(A) multiply, negate for the decay
BETA_FLOPS, DECAY_FLOPS, GLA_GATE_FLOPS = 4, 6, 5


def extra_rows(rule: str, h: int, k: int) -> int:
    """Rows of the per-memory projections besides k and v: beta (H), decay (H or K)."""
    return {"gated_delta": 2 * h, "delta": h, "gla": k, "linear": 0}[rule]


@register
class MoM(Component):
    type = "mom"
    module = "archspec.components.mom.module:MoMModule"
    renamed = {"capacity": "capacity_factor", "conv_size": "d_conv"}
    has_kernels = True
    summary = "mixture of memories: routed linear-attention memories (+ a shared one)"
    schema = {
        "properties": {
            "rule": {"enum": list(LA.RULES), "default": "gated_delta",
                     "description": "each memory's update rule (MoM's default: gated_delta)"},
            "n_heads": {"type": "integer", "minimum": 1, **L.HEADS.schema(), "default": 4, "description": "heads H"},
            "head_dim": {"type": "integer", "minimum": 1, **L.HEAD_DIM.schema(), "default": 256,
                         "description": "key dimension per head dk (K = H dk)"},
            "expand_v": {"type": "number", "exclusiveMinimum": 0, **L.EXPAND.schema(), "default": 1,
                         "description": "value dimension per head dv = head_dim * expand_v"},
            "n_memories": {"type": "integer", "minimum": 1, **L.MEMORIES.schema(), "default": 4,
                           "description": "routed memories M"},
            "topk": {"type": "integer", "minimum": 1, **L.MEMORIES.schema(), "default": 2,
                     "description": "memories each token is routed to"},
            "shared_memory": {"type": "boolean", "default": True,
                              "description": "an extra memory that sees every token"},
            "capacity_factor": {"type": ["number", "null"], "exclusiveMinimum": 0, **L.CAPACITY.schema(), "default": None,
                                "description": "null = dropless; c caps each memory at ceil(c k T / M) "
                                               "tokens per sequence (first come, first served)"},
            "aux_loss_scale": {"type": "number", "minimum": 0, **L.LOSS_SCALE.schema(), "default": 0.01,
                               "description": "coefficient of the load-balancing loss"},
            "d_conv": {"type": "integer", "minimum": 1, **L.CONV.schema(), "default": 4,
                       "description": "short causal convolution width on q, k, v"},
            "output_gate": {"type": "boolean", "default": True,
                            "description": "SiLU output gate g_proj into the gated RMSNorm"},
            "norm_eps": {"type": "number", "exclusiveMinimum": 0, **L.EPS.schema(), "default": 1e-6,
                         "description": "eps of the output RMSNorm"},
            "chunk_size": {"type": "integer", "minimum": 1, **L.CHUNK.schema(), "default": 64,
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
    @staticmethod
    def _per_memory(cfg, model) -> dict[str, tuple[int, int]]:
        """The projections each memory has (routed ones as `<name>_proj.<j>`, the shared one as
        `shared_<name>`): keys and values, and beta and decay rows by rule."""
        d, h, kd, vd = model.d_model, cfg["n_heads"], cfg["key_dim"], cfg["value_dim"]
        per_memory = {"k": (kd, d), "v": (vd, d)}
        if cfg["rule"] in ("gated_delta", "delta"):
            per_memory["b"] = (h, d)
        if cfg["rule"] == "gated_delta":
            per_memory["a"] = (h, d)
        if cfg["rule"] == "gla":
            per_memory["a"] = (kd, d)
        return per_memory

    @staticmethod
    def _single(cfg, model) -> dict[str, tuple[int, ...]]:
        """The parameters that are not per memory (query, router, convs, gate, norm, output)."""
        d, h, kd, vd, m = model.d_model, cfg["n_heads"], cfg["key_dim"], cfg["value_dim"], cfg["n_memories"]
        c = cfg["d_conv"]
        shapes = {"q_proj.weight": (kd, d), "router.weight": (m, d)}
        if cfg["rule"] == "gated_delta":
            shapes["A_log"] = (h,)
            shapes["dt_bias"] = (h,)
        shapes.update({"q_conv1d.weight": (kd, 1, c), "k_conv1d.weight": (kd, 1, c),
                       "v_conv1d.weight": (vd, 1, c)})
        if cfg["output_gate"]:
            shapes["g_proj.weight"] = (vd, d)
        shapes["o_norm.weight"] = (cfg["head_v_dim"],)
        shapes["o_proj.weight"] = (d, vd)
        return shapes

    def own_param_shapes(self, cfg, model):
        single, per_memory = self._single(cfg, model), self._per_memory(cfg, model)
        shapes = {"q_proj.weight": single.pop("q_proj.weight"), "router.weight": single.pop("router.weight")}
        for name, shape in per_memory.items():
            for j in range(cfg["n_memories"]):
                shapes[f"{name}_proj.{j}.weight"] = shape
        if cfg["shared_memory"]:
            for name, shape in per_memory.items():
                shapes[f"shared_{name}.weight"] = shape
        shapes.update(single)
        return shapes

    def own_param_count(self, cfg, model):
        """numel(own_param_shapes) without listing a tensor per memory."""
        single, per_memory = self._counts(cfg, model)
        return single + self._n_banks(cfg) * per_memory

    _COUNTS: dict = {}  # (the sizes the shapes depend on) -> counts: configs differing in routing share

    def _counts(self, cfg, model) -> tuple[int, int]:
        """(parameters outside the memories, parameters of one memory)."""
        key = (model.d_model, cfg["n_heads"], cfg["key_dim"], cfg["value_dim"], cfg["head_v_dim"], cfg["n_memories"],
               cfg["rule"], cfg["d_conv"], cfg["output_gate"])
        found = self._COUNTS.get(key)
        if found is None:
            if len(self._COUNTS) > 4096:
                self._COUNTS.clear()
            found = self._COUNTS[key] = (numel(self._single(cfg, model)), numel(self._per_memory(cfg, model)))
        return found

    def _n_banks(self, cfg) -> int:
        return cfg["n_memories"] + (1 if cfg["shared_memory"] else 0)

    def balanced_lengths(self, cfg, seq_len: int) -> list[int]:
        """Tokens per memory for one sequence under perfectly balanced routing (and capacity)."""
        m, k = cfg["n_memories"], cfg["topk"]
        assignments = k * seq_len
        if cfg["capacity_factor"] is not None:
            assignments = min(assignments, m * capacity_limit(cfg["capacity_factor"], k, seq_len, m))
        base, extra = divmod(assignments, m)
        lengths = [base + 1] * extra + [base] * (m - extra)
        return lengths + ([seq_len] if cfg["shared_memory"] else [])

    def _flops_for_lengths(self, cfg, model, seq_len: int, lengths: list[int]) -> Flops:
        """FLOPs of one forward whose routed groups (one per memory and sequence, the shared
        memory's last) have `lengths`; `seq_len` is the total of tokens entering the layer."""
        d, h, kd, vd, m = model.d_model, cfg["n_heads"], cfg["key_dim"], cfg["value_dim"], cfg["n_memories"]
        rule, t = cfg["rule"], seq_len
        rows = sum(lengths)  # routed + shared assignments
        gate = vd if cfg["output_gate"] else 0
        matmul = 2 * t * d * (kd + m + gate + vd) + 2 * rows * d * (kd + vd + extra_rows(rule, h, kd))
        core = LA.chunk_flops(rule, lengths, h, cfg["head_dim"], cfg["head_v_dim"], cfg["chunk_size"])
        other = t * m * SOFTMAX_FLOPS_PER_ELEMENT
        other += conv_flops(rows, 2 * kd + vd, cfg["d_conv"], False, "silu").other
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

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        """realized: {"lengths": rows of each routed (memory, sequence) group, the shared
        memory's last}, with `seq_len` the tokens entering the layer (a batch's, when the
        lengths are the batch's); default: balanced_lengths."""
        lengths = self.balanced_lengths(cfg, seq_len) if realized is None else realized["lengths"]
        return self._flops_for_lengths(cfg, model, seq_len, lengths)

    def own_flops_bounds(self, cfg, model, seq_len, conv):
        """Matmul FLOPs vary with routing only through chunk padding (and capacity drops): the
        fewest when one memory gets every routed token, the most when each memory's group
        wastes a nearly empty last chunk."""
        m, c = cfg["n_memories"], cfg["chunk_size"]
        shared = [seq_len] if cfg["shared_memory"] else []
        assignments = sum(self.balanced_lengths(cfg, seq_len)[:m])
        least_tokens = 0 if cfg["capacity_factor"] is not None else assignments
        fewest = self._flops_for_lengths(cfg, model, seq_len, [least_tokens] + [0] * (m - 1) + shared)
        # k T assignments over M groups: at most ceil(kT/c) + M - 1 chunks; spread so each of
        # the M groups but one is 1 token past a chunk boundary.
        spread = [c * (assignments // (c * m)) + 1] * (m - 1)
        spread.append(max(0, assignments - sum(spread)))
        most = self._flops_for_lengths(cfg, model, seq_len, spread + shared)
        return fewest.matmul, most.matmul

    def own_notes(self, cfg, model):
        notes = [f"FLOPs assume balanced routing ({cfg['topk']} of {cfg['n_memories']} memories, "
                 "k T / M tokens each); real routing changes only how far each memory's token group is "
                 "padded to a whole chunk"]
        if cfg["capacity_factor"] is not None:
            notes.append(f"capacity factor {cfg['capacity_factor']:g}: tokens past ceil(c k T / M) per memory and "
                         "sequence are dropped from that memory, first come first served")
        return notes

    def own_state_bytes(self, cfg, model, seq_len):
        banks = self._n_banks(cfg)
        # float32 states (float64 in a float64 model), conv windows in the model dtype, and with
        # a capacity each memory's int64 count of the tokens it took
        recurrent = banks * cfg["n_heads"] * cfg["head_dim"] * cfg["head_v_dim"] * max(4, model.dtype_bytes)
        conv_window = banks * (cfg["d_conv"] - 1) * (2 * cfg["key_dim"] + cfg["value_dim"])
        counts = 8 * cfg["n_memories"] if cfg["capacity_factor"] is not None else 0
        return recurrent + conv_window * model.dtype_bytes + counts

    def own_activation_bytes(self, cfg, model, seq_len):
        # Estimate: per token the input and q/g projections; per packed row the gathered input,
        # q/k/v before and after conv and normalisation, beta/decay and the rule's output; the
        # rule's chunk intermediates are left out (they depend on the rule and chunk size).
        d, kd, vd = model.d_model, cfg["key_dim"], cfg["value_dim"]
        rows = sum(self.balanced_lengths(cfg, seq_len))
        per_token = d + kd + 2 * vd + 4 * cfg["n_memories"]
        per_row = d + 3 * (2 * kd + vd) + 2 * vd
        return (seq_len * per_token + rows * per_row) * model.dtype_bytes

    def own_active_param_count(self, cfg, model):
        """All of them but the routed memories' projections, of which topk of n_memories."""
        m = cfg["n_memories"]
        routed = m * self._counts(cfg, model)[1]
        return self.own_param_count(cfg, model) - routed + routed * cfg["topk"] // m

    # --- kernels ---------------------------------------------------------------------------
    def kernels_unsupported(self, cfg, model):
        reason = kernels_unsupported(cfg["rule"], cfg["head_dim"], cfg["head_v_dim"], cfg["chunk_size"])
        if reason is not None:
            return reason
        if model.dtype not in KERNEL_DTYPE_NAMES:
            return (f"the Triton kernels take {', '.join(KERNEL_DTYPE_NAMES)} models, got {model.dtype}; "
                    "use backend 'reference'")
        return None


    def kernels_auto_skips(self, cfg, model):
        if model.dtype not in GATE_DTYPE_NAMES:
            return (f"auto keeps the reference for {model.dtype} models: the kernels compute them right "
                    "but spill registers on sm_80 / sm_90 (`archspec kernels --compile sm_80,sm_90 "
                    f"--dtypes {model.dtype} --only linear_attention`); build in bfloat16, or force "
                    "backend 'triton'")
        return None

    def kernel_launches(self, cfg, model, dtype):
        """The `triton` backend's launches, as Module._run makes them (forward and backward):
        the dispatch gathers of x (d_model columns) and of q (key_dim) from a training batch's
        tokens into k (+1 shared) packed rows each, and the weighted combine of the memories'
        outputs (value_dim); the chunked rule (training, and prefill's final states); the gated
        output norm over heads of head_v_dim (a batch's rows and one decoded token's heads)."""
        from ...ops.dispatch import kernel_launches as dispatch_launches
        from ...ops.linear_attention import kernel_launches as rule_launches
        from ...ops.norm import TRAIN_ROWS, kernel_launches as norm_launches
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

