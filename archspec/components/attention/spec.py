"""Causal multi-head self-attention with grouped-query heads (GQA/MQA) and rotary positions.

    x: [B, T, d]
    q = x W_q^T: [B, T, H, hd];   k = x W_k^T, v = x W_v^T: [B, T, H_kv, hd]
    q, k <- RoPE(q), RoPE(k)            (rotate-half form, base rope_theta)
    o_h = softmax(q_h k_g^T / sqrt(hd) + causal mask) v_g,   g = h // (H / H_kv)
    y = concat_h(o_h) W_o^T: [B, T, d]

An optional `window` keeps only the last `window` keys of each query (sliding window). The
reference path is torch's scaled_dot_product_attention (SDPA).

FLOPs for one sequence: projections 2 T d hd (2H + 2H_kv); scores and values 4 hd H P, where
P is the number of query-key pairs (see FlopConvention: T(T+1)/2 causal by default);
elementwise: softmax 5 per pair and head, RoPE 3 per rotated element.
Inference state: the KV cache, 2 H_kv hd min(T, window) elements per sequence.
Activation memory (saved for backward) per token: (d + 2 (H + H_kv) hd) elements (input; q, k
after RoPE, v; the attention output) plus a float32 log-sum-exp per head.
"""
from __future__ import annotations

from ...costs import ROPE_FLOPS_PER_ELEMENT, SOFTMAX_FLOPS_PER_ELEMENT
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


def projection_shapes(cfg: dict, model: ModelConfig) -> dict:
    """W_q [H hd, d], W_k, W_v [H_kv hd, d], W_o [d, H hd] (and their biases)."""
    d, hd = model.d_model, cfg["head_dim"]
    q, kv = cfg["n_heads"] * hd, cfg["n_kv_heads"] * hd
    shapes = {"q_proj.weight": (q, d), "k_proj.weight": (kv, d), "v_proj.weight": (kv, d),
              "o_proj.weight": (d, q)}
    if cfg["bias"]:
        shapes.update({"q_proj.bias": (q,), "k_proj.bias": (kv,), "v_proj.bias": (kv,),
                       "o_proj.bias": (d,)})
    return shapes


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
    if cfg["rope"] and head_dim_known and cfg["head_dim"] % 2:
        issues.append(CheckIssue("head_dim", f"RoPE needs an even head_dim, got {cfg['head_dim']}",
                                 "use an even head_dim or set `rope: false`"))
    return issues


@register
class Attention(Component):
    type = "attention"
    module = "archspec.components.attention.module:AttentionModule"
    summary = "causal self-attention, GQA/MQA, RoPE, optional sliding window"
    schema = {
        "properties": {
            **HEADS_SCHEMA,
            "window": {"type": ["integer", "null"], "minimum": 1, **L.SEQ_LEN.schema(), "default": None,
                       "description": "sliding window in tokens (null = full causal)"},
        },
        "required": ["n_heads"],
    }
    example = {"n_heads": 4, "n_kv_heads": 2}

    def derive(self, cfg, model):
        return derive_heads(cfg, model)

    def check(self, cfg, model, written=frozenset()):
        issues = check_heads(cfg, model, written)
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
        if cfg["rope"]:
            other += ROPE_FLOPS_PER_ELEMENT * seq_len * (h + hkv) * hd
        if cfg["bias"]:
            other += seq_len * ((h + 2 * hkv) * hd + d)
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
        elems = model.d_model + 2 * (h + hkv) * hd
        return seq_len * (elems * model.dtype_bytes + 4 * h)
