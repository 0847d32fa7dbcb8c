"""Causal multi-head self-attention with grouped-query heads (GQA/MQA) and rotary positions.

    x: [B, T, d]
    q = x W_q^T: [B, T, H, hd];   k = x W_k^T, v = x W_v^T: [B, T, H_kv, hd]
    q, k <- RoPE(q), RoPE(k)            (rotate-half form, base rope_theta)
    o_h = softmax(q_h k_g^T / sqrt(hd) + causal mask) v_g,   g = h // (H / H_kv)
    y = concat_h(o_h) W_o^T: [B, T, d]

An optional `window` keeps only the last `window` keys of each query (sliding window). The
reference path is torch's scaled_dot_product_attention (SDPA).

Options of the published models (attention only; sparse_attention shares the projections):
  * `bias: qkv`: biases on q, k, v but not on the output projection (Qwen2/2.5, Qwen1.5-MoE);
    `bias: true` puts one on all four.
  * `qk_norm: head` (Qwen3, Gemma3): q, k <- RMSNorm over each head's hd values, weights
    q_norm.weight, k_norm.weight [hd]; `qk_norm: projection` (OLMoE, OLMo-2): over the whole
    projection before the split into heads, weights [H hd] and [H_kv hd]. Float32, eps
    `qk_norm_eps`, weights init 1.
  * `rope_dims: r` (partial rotary, even, <= hd): RoPE rotates the first r values of each head
    (rotate-half within them, frequencies theta^(-2i/r)) and passes the rest through.
  * `logit_softcap: c` (Gemma-2): scores s = q k^T / sqrt(hd) <- c tanh(s / c) before the mask
    and the softmax (float32). SDPA has no such hook, so this path computes the two matmuls
    itself (the same count FlopCounterMode gives SDPA: 4 hd H T^2 for T queries).

FLOPs for one sequence: projections 2 T d hd (2H + 2H_kv); scores and values 4 hd H P, where
P is the number of query-key pairs (see FlopConvention: T(T+1)/2 causal by default);
elementwise: softmax 5 per pair and head, RoPE 3 per rotated element, soft-capping 3 per pair
and head (divide, tanh, multiply), QK-norm 4 per element + 2 per normalised group.
Inference state: the KV cache, 2 H_kv hd min(T, window) elements per sequence.
Activation memory (saved for backward) per token: (d + 2 (H + H_kv) hd) elements (input; q, k
after RoPE, v; the attention output) plus a float32 log-sum-exp per head.
"""
from __future__ import annotations

from ...costs import (RMSNORM_FLOPS_PER_ELEMENT, RMSNORM_FLOPS_PER_GROUP, ROPE_FLOPS_PER_ELEMENT,
                      SOFTCAP_FLOPS_PER_ELEMENT, SOFTMAX_FLOPS_PER_ELEMENT)
from ... import limits as L
from ..base import CheckIssue, Component, Flops, ModelConfig, register


HEADS_SCHEMA = {
    "n_heads": {"type": "integer", "minimum": 1, **L.HEADS.schema(), "description": "query heads"},
    "n_kv_heads": {"type": "integer", "minimum": 1, **L.HEADS.schema(),
                   "description": "key/value heads (default n_heads; 1 is MQA)"},
    "head_dim": {"type": "integer", "minimum": 1, **L.HEAD_DIM.schema(), "description": "default d_model / n_heads"},
    "rope": {"type": "boolean", "default": True, "description": "rotary position embedding"},
    "rope_theta": {"type": "number", "exclusiveMinimum": 0, **L.ROPE_THETA.schema(), "default": 10000.0,
                   "description": "RoPE base"},
    "bias": {"type": "boolean", "default": False, "description": "biases on q/k/v/o"},
}


def derive_heads(cfg: dict, model: ModelConfig) -> dict:
    """n_kv_heads defaults to n_heads (MHA), head_dim to d_model / n_heads."""
    if cfg.get("n_kv_heads") is None:
        cfg["n_kv_heads"] = cfg["n_heads"]
    if cfg.get("head_dim") is None:
        cfg["head_dim"] = model.d_model // cfg["n_heads"]
    return cfg


# attention's own options beside HEADS_SCHEMA (module docstring)
OPTIONS_SCHEMA = {
    "bias": {"enum": [True, False, "qkv"], "default": False,
             "description": "biases on q/k/v/o (true), on q/k/v only (qkv: Qwen2), or none"},
    "qk_norm": {"enum": [None, "head", "projection"], "default": None,
                "description": "RMSNorm on q and k: per head (Qwen3, Gemma3) or over the whole "
                               "projection (OLMoE); null: none"},
    "qk_norm_eps": {"type": "number", "exclusiveMinimum": 0, **L.EPS.schema(), "default": 1e-5,
                    "description": "eps of the QK-norms"},
    "rope_dims": {"type": ["integer", "null"], "minimum": 2, **L.HEAD_DIM.schema(), "default": None,
                  "description": "partial rotary: RoPE on the first rope_dims values of each head "
                                 "(even, <= head_dim); null: all of them"},
    "logit_softcap": {"type": ["number", "null"], "exclusiveMinimum": 0, **L.SOFTCAP.schema(),
                      "default": None,
                      "description": "soft-cap the attention scores: c tanh(s / c) (Gemma-2: 50); "
                                     "null: none"},
}


def projection_shapes(cfg: dict, model: ModelConfig) -> dict:
    """W_q [H hd, d], W_k, W_v [H_kv hd, d], W_o [d, H hd] (and their biases: all four with
    `bias: true`, q/k/v with `bias: qkv`), and the QK-norm weights."""
    d, hd = model.d_model, cfg["head_dim"]
    q, kv = cfg["n_heads"] * hd, cfg["n_kv_heads"] * hd
    shapes = {"q_proj.weight": (q, d), "k_proj.weight": (kv, d), "v_proj.weight": (kv, d),
              "o_proj.weight": (d, q)}
    if cfg["bias"]:
        shapes.update({"q_proj.bias": (q,), "k_proj.bias": (kv,), "v_proj.bias": (kv,)})
    if cfg["bias"] is True:
        shapes["o_proj.bias"] = (d,)
    qk_norm = cfg.get("qk_norm")
    if qk_norm is not None:
        shapes.update({"q_norm.weight": (hd if qk_norm == "head" else q,),
                       "k_norm.weight": (hd if qk_norm == "head" else kv,)})
    return shapes


def rope_width(cfg: dict) -> int:
    """How many values of each head RoPE rotates (0 without RoPE)."""
    if not cfg["rope"]:
        return 0
    return cfg.get("rope_dims") or cfg["head_dim"]


def check_heads(cfg: dict, model: ModelConfig, written: frozenset) -> list[CheckIssue]:
    """Head arithmetic shared by the attention components: n_heads divides d_model (unless
    head_dim is written), n_kv_heads divides n_heads, and RoPE has an even head_dim."""
    issues = []
    h, hkv = cfg["n_heads"], cfg["n_kv_heads"]
    if "head_dim" not in written and model.d_model % h:
        divisors = [n for n in range(1, min(model.d_model, 256) + 1) if model.d_model % n == 0]
        near = sorted(divisors, key=lambda n: abs(n - h))[:3]
        issues.append(CheckIssue("n_heads", f"n_heads={h} does not divide d_model={model.d_model}",
                                 f"use a divisor such as {', '.join(map(str, sorted(near)))}, "
                                 "or set head_dim explicitly"))
    if h % hkv:
        issues.append(CheckIssue("n_kv_heads", f"n_kv_heads={hkv} does not divide n_heads={h}",
                                 "each key/value head serves n_heads / n_kv_heads query heads; "
                                 "pick a divisor of n_heads"))
    head_dim_known = "head_dim" in written or model.d_model % h == 0
    if cfg["rope"] and head_dim_known and cfg["head_dim"] % 2 and cfg.get("rope_dims") is None:
        issues.append(CheckIssue("head_dim", f"RoPE needs an even head_dim, got {cfg['head_dim']}",
                                 "use an even head_dim or set `rope: false`"))
    return issues


def check_options(cfg: dict, model: ModelConfig, written: frozenset) -> list[CheckIssue]:
    """Partial rotary dims even and within the head, and only with RoPE."""
    issues = []
    r = cfg["rope_dims"]
    if r is None:
        return issues
    if not cfg["rope"]:
        issues.append(CheckIssue("rope_dims", "rope_dims is set but `rope: false`",
                                 "drop rope_dims, or set `rope: true`"))
    if r % 2:
        issues.append(CheckIssue("rope_dims", f"rope_dims={r} is odd: RoPE rotates pairs of values",
                                 f"use an even number, e.g. {r - 1}"))
    if r > cfg["head_dim"]:
        issues.append(CheckIssue("rope_dims", f"rope_dims={r} exceeds head_dim={cfg['head_dim']}",
                                 f"rotate at most the whole head: rope_dims <= {cfg['head_dim']}, or "
                                 "null for all of it"))
    return issues


@register
class Attention(Component):
    type = "attention"
    module = "archspec.components.attention.module:AttentionModule"
    summary = "causal self-attention, GQA/MQA, RoPE, optional sliding window"
    schema = {
        "properties": {
            **HEADS_SCHEMA,
            **OPTIONS_SCHEMA,
            "window": {"type": ["integer", "null"], "minimum": 1, **L.SEQ_LEN.schema(), "default": None,
                       "description": "sliding window in tokens (null = full causal)"},
        },
        "required": ["n_heads"],
    }
    example = {"n_heads": 4, "n_kv_heads": 2}

    def derive(self, cfg, model):
        return derive_heads(cfg, model)

    def check(self, cfg, model, written=frozenset()):
        issues = check_heads(cfg, model, written) + check_options(cfg, model, written)
        if cfg["window"] is not None and cfg["window"] > model.max_seq_len:
            issues.append(CheckIssue("window", f"window={cfg['window']} exceeds max_seq_len="
                                     f"{model.max_seq_len}",
                                     "use a window up to max_seq_len, or null for full attention"))
        return issues

    def own_param_shapes(self, cfg, model):
        return projection_shapes(cfg, model)

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        d, hd, h, hkv = model.d_model, cfg["head_dim"], cfg["n_heads"], cfg["n_kv_heads"]
        pairs = conv.pairs(seq_len, cfg["window"])
        other = SOFTMAX_FLOPS_PER_ELEMENT * h * pairs
        other += ROPE_FLOPS_PER_ELEMENT * seq_len * (h + hkv) * rope_width(cfg)
        if cfg["bias"]:
            other += seq_len * (h + 2 * hkv) * hd
        if cfg["bias"] is True:
            other += seq_len * d
        if cfg["qk_norm"] is not None:
            groups = (h + hkv) if cfg["qk_norm"] == "head" else 2
            other += seq_len * (RMSNORM_FLOPS_PER_ELEMENT * (h + hkv) * hd + RMSNORM_FLOPS_PER_GROUP * groups)
        if cfg["logit_softcap"] is not None:
            other += SOFTCAP_FLOPS_PER_ELEMENT * h * pairs
        return Flops(matmul=2 * seq_len * d * hd * (2 * h + 2 * hkv),
                     attention=4 * hd * h * pairs, other=other)

    def own_state_bytes(self, cfg, model, seq_len):
        kept = seq_len if cfg["window"] is None else min(seq_len, cfg["window"])
        return 2 * cfg["n_kv_heads"] * cfg["head_dim"] * kept * model.dtype_bytes

    def own_activation_bytes(self, cfg, model, seq_len):
        hd, h, hkv = cfg["head_dim"], cfg["n_heads"], cfg["n_kv_heads"]
        # Measured with saved_tensors_hooks (tests/test_flops.py): the projections' input x [d];
        # q and k as SDPA gets them (after RoPE, whose multiplies save only the cos/sin tables,
        # not the un-rotated q, k) and v: (H + 2 H_kv) hd; SDPA's output, which is also
        # o_proj's input (one storage: the CPU kernel lays it out [B, T, H, hd], so the
        # transpose+reshape is a view): H hd; and SDPA's float32 log-sum-exp, one per head.
        # Not per sequence, so not counted: the sliding-window float mask [T, T] and, in low
        # precision, the cos/sin tables cast to the model dtype.
        nb, t = model.dtype_bytes, seq_len
        if cfg.get("logit_softcap") is not None:
            # The eager soft-capped path (measured as above): x; q, and k and v as the matmuls
            # get them (repeated to H heads under GQA; the un-repeated ones are not saved): 3 H hd;
            # o_proj's input, a contiguous copy of the attention output: H hd; per query-key pair
            # and head, all T^2 of them, 8 bytes: tanh's output and the float32 softmax output (in
            # low precision 4 + 2 for the cast probabilities matmul saves, and tanh's 2). Not per
            # sequence: the bool mask [T, T].
            total = t * (model.d_model + 4 * h * hd) * nb + 8 * h * t * t
        else:
            elems = model.d_model + 2 * (h + hkv) * hd
            total = t * (elems * nb + 4 * h)
            if rope_width(cfg) and rope_width(cfg) < hd:
                # partial rotary concatenates q: SDPA then lays its output out [B, H, T, hd], so
                # o_proj's input is a copy of it, saved beside it
                total += t * h * hd * nb
        if cfg.get("qk_norm") is not None:
            # each float32 RMSNorm saves its float32 input, x / rms and 1 / rms per group
            groups = (h + hkv) if cfg["qk_norm"] == "head" else 2
            total += t * 4 * (2 * (h + hkv) * hd + groups)
        return total
