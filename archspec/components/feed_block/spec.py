"""Feed block: a transformer block (attention, then a gated MLP, no inner residuals) whose output
is added to the *next* sublayer's input, not to the residual stream; optionally reading the
model's embeddings beside the stream, with its weights shared across depths (`share`) and, per
use, LoRA adapters and an output projection. Zamba2's shared transformer block (Glorioso et al.,
2024, arXiv 2411.15242; transformers' Zamba2HybridLayer) is this block with `share`.

    x: the residual stream [B, T, d] as it enters the sublayer (not normed); e: the embedding
    output [B, T, d];  u = [x ; e]  (concat_embeddings, width D = 2d)  or  u = x  (D = d)
    u <- RMSNorm_D(u)                                    input_layernorm
    q = u W_q^T + A_q(u), k = u W_k^T + A_k(u), v = u W_v^T + A_v(u)   [B, T, H hd], [B, T, H_kv hd]
    q, k <- RoPE(q), RoPE(k)                             (rotate-half form, base rope_theta)
    o = concat_h softmax(s q_h k_g^T + causal mask) v_g  s = softmax_scale (1 / sqrt(hd) if null)
    a = o W_o^T                                          [B, T, d]
    h = RMSNorm_d(a)                                     pre_ff_layernorm
    [g ; p] = h W_gu^T + A_gu(h);  m = (act(g) * p) W_down^T       [B, T, d]   (d_ff wide)
    t = m W_lin^T  (out_proj)  or  t = m
    A_*(z) = (z L_down^T) L_up^T: a LoRA adapter of rank r (lora_rank) on each of lora_targets

The model adds t to the input of what follows: sublayer i + 1 computes
`x + f(norm(x + t))` (its residual is x, without t), or the final norm reads `x + t`. This is
Zamba2's hybrid layer, `x + mamba(norm(x + linear(block([x ; e]))))`. The block has no norm of
the model's before it and no residual of its own: it must stand alone in its sublayer.

Weights: with `share: G`, the norms, q/k/v/o and MLP weights are one module `shared.feed_block_G`
used by every feed block naming G (counted and saved once; FLOPs counted per use; the users must
agree on every size: a located error); the LoRA adapters and the output projection are always
per use (Zamba2's per-depth adapters and `linear`). With `share: null` the block is its own.

Parameters: block D + (H + 2 H_kv) hd D + H hd d + d + 3 d d_ff; per use r (in + out) per
adapter target (q: D -> H hd, k and v: D -> H_kv hd, gate_up: d -> 2 d_ff) [+ d^2 out_proj].

FLOPs for one sequence (1 FLOP = one multiply or one add):
    matmul: 2 T [D (H + 2 H_kv) hd + H hd d + 2 d d_ff + d_ff d] + 2 T r (in + out) per adapter
            [+ 2 T d^2 out_proj]
    attention: 4 hd H P (P query-key pairs, FlopConvention)
    other: the two RMSNorms (RMSNORM_FLOPS_PER_ELEMENT T (D + d) + 2 RMSNORM_FLOPS_PER_GROUP T),
           softmax 5 H P, RoPE 3 T (H + H_kv) hd, the adapters' adds T out each, the activation
           and gate T d_ff (ACTIVATION_FLOPS + 1), and the add of t into the next input T d.
Inference state: the KV cache, 2 H_kv hd T elements per sequence (per use: a shared block keeps
one cache at each depth, since each depth attends over its own inputs).
Activation memory per token, what autograd saves (measured, tests/test_zamba2.py): each RMSNorm
its input, its normalised input before and after the weight (3 D and 3 d) and a float32 rsqrt;
q, k, v as SDPA gets them and its output (2 H + 2 H_kv) hd, and a float32 log-sum-exp per head
(RoPE's multiplies keep only the cos/sin tables); [g ; p], act(g) and the product 4 d_ff; r per
adapter (its down projection's output); m d with out_proj.
"""
from __future__ import annotations

from ... import limits as L
from ...costs import (ACTIVATION_FLOPS, RMSNORM_FLOPS_PER_ELEMENT, RMSNORM_FLOPS_PER_GROUP,
                      ROPE_FLOPS_PER_ELEMENT, SOFTMAX_FLOPS_PER_ELEMENT)
from ..base import CheckIssue, Component, Flops, register
from ..pkm.spec import GROUP_PATTERN

ACTIVATIONS = {"geglu": "gelu", "swiglu": "silu"}  # gated: act(g) * p
LORA_TARGETS = ("q", "k", "v", "gate_up")


def in_width(cfg: dict, model) -> int:
    """D: the block's input width, [x ; e] or x."""
    return model.d_model * (2 if cfg["concat_embeddings"] else 1)


def shared_key(cfg: dict) -> str | None:
    """The shared-weight key of the block (None: the block is this instance's own)."""
    return None if cfg.get("share") is None else f"feed_block_{cfg['share']}"


def block_shapes(cfg: dict, model) -> dict[str, tuple[int, ...]]:
    """The block's weights (shared or own), by their names in the block module."""
    d, width, hd = model.d_model, in_width(cfg, model), cfg["head_dim"]
    q, kv, f = cfg["n_heads"] * hd, cfg["n_kv_heads"] * hd, cfg["d_ff"]
    return {"input_layernorm.weight": (width,),
            "self_attn.q_proj.weight": (q, width), "self_attn.k_proj.weight": (kv, width),
            "self_attn.v_proj.weight": (kv, width), "self_attn.o_proj.weight": (d, q),
            "pre_ff_layernorm.weight": (d,),
            "feed_forward.gate_up_proj.weight": (2 * f, d), "feed_forward.down_proj.weight": (d, f)}


def lora_dims(cfg: dict, model) -> dict[str, tuple[int, int]]:
    """{target: (in, out)} of the projections the adapters adapt (none at rank 0)."""
    if not cfg["lora_rank"]:
        return {}
    width, hd = in_width(cfg, model), cfg["head_dim"]
    dims = {"q": (width, cfg["n_heads"] * hd), "k": (width, cfg["n_kv_heads"] * hd),
            "v": (width, cfg["n_kv_heads"] * hd), "gate_up": (model.d_model, 2 * cfg["d_ff"])}
    return {t: dims[t] for t in LORA_TARGETS if t in cfg["lora_targets"]}


@register
class FeedBlock(Component):
    type = "feed_block"
    module = "archspec.components.feed_block.module:FeedBlockModule"
    feeds_next = True
    per_use_keys = ("lora_rank", "lora_targets", "out_proj")  # a shared block's uses may differ here
    summary = ("attention + gated MLP whose output feeds the next sublayer's input (Zamba2's shared "
               "block): optional embedding concat, weights shared by group, per-use LoRA and projection")
    schema = {
        "properties": {
            "n_heads": {"type": "integer", "minimum": 1, **L.HEADS.schema(), "description": "query heads"},
            "n_kv_heads": {"type": "integer", "minimum": 1, **L.HEADS.schema(),
                           "description": "key/value heads (default n_heads)"},
            "head_dim": {"type": "integer", "minimum": 1, **L.HEAD_DIM.schema(),
                         "description": "default: the input width (2 d_model with concat_embeddings) / n_heads"},
            "rope": {"type": "boolean", "default": True, "description": "rotary position embedding on q, k"},
            "rope_theta": {"type": "number", "exclusiveMinimum": 0, **L.ROPE_THETA.schema(),
                           "default": 10000.0, "description": "RoPE base"},
            "softmax_scale": {"type": ["number", "null"], "exclusiveMinimum": 0, **L.SOFTMAX_SCALE.schema(),
                              "default": None, "description": "scale of q k^T (null: 1 / sqrt(head_dim); "
                                                              "Zamba2: 1 / sqrt(head_dim / 2))"},
            "concat_embeddings": {"type": "boolean", "default": True,
                                  "description": "input [x ; embeddings] (width 2 d_model), as Zamba2; false: x"},
            "d_ff": {"type": "integer", "minimum": 1, **L.WIDTH.schema(),
                     "description": "the gated MLP's hidden width (default 4 d_model)"},
            "activation": {"enum": sorted(ACTIVATIONS), "default": "geglu",
                           "description": "gated MLP: act(g) * p with gelu (geglu, Zamba2) or silu (swiglu)"},
            "norm_eps": {"type": "number", "exclusiveMinimum": 0, **L.EPS.schema(), "default": 1e-5,
                         "description": "epsilon of the block's two RMSNorms"},
            "share": {"type": ["string", "null"], "pattern": GROUP_PATTERN, "default": None,
                      "description": "group name: feed blocks of one group share the block's weights "
                                     "(counted and saved once); null = own weights"},
            "lora_rank": {"type": "integer", "minimum": 0, **L.WIDTH.schema(), "default": 0,
                          "description": "rank of the per-use LoRA adapters (0: none)"},
            "lora_targets": {"type": "array", "items": {"enum": list(LORA_TARGETS)}, "uniqueItems": True,
                             "maxItems": len(LORA_TARGETS), "default": ["gate_up"],
                             "description": "projections the adapters adapt: q, k, v, gate_up"},
            "out_proj": {"type": "boolean", "default": True,
                         "description": "a per-use d x d projection of the output (Zamba2's `linear`)"},
        },
        "required": ["n_heads"],
    }
    example = {"n_heads": 4, "n_kv_heads": 2, "d_ff": 96, "concat_embeddings": False,
               "lora_rank": 4, "lora_targets": ["q", "v", "gate_up"]}

    def derive(self, cfg, model):
        if cfg.get("n_kv_heads") is None:
            cfg["n_kv_heads"] = cfg["n_heads"]
        if cfg.get("head_dim") is None:
            cfg["head_dim"] = max(1, in_width(cfg, model) // cfg["n_heads"])
        if cfg.get("d_ff") is None:
            cfg["d_ff"] = 4 * model.d_model
        return cfg

    def check(self, cfg, model, written=frozenset()):
        issues = []
        h, hkv, width = cfg["n_heads"], cfg["n_kv_heads"], in_width(cfg, model)
        if "head_dim" not in written and width % h:
            issues.append(CheckIssue("n_heads", f"n_heads={h} does not divide the block's input width {width}",
                                     "use a divisor of it, or set head_dim explicitly"))
        if h % hkv:
            issues.append(CheckIssue("n_kv_heads", f"n_kv_heads={hkv} does not divide n_heads={h}",
                                     "pick a divisor of n_heads"))
        if cfg["rope"] and cfg["head_dim"] % 2:
            issues.append(CheckIssue("head_dim", f"RoPE needs an even head_dim, got {cfg['head_dim']}",
                                     "use an even head_dim or set `rope: false`"))
        for target, (n_in, n_out) in lora_dims(cfg, model).items():
            if cfg["lora_rank"] > min(n_in, n_out):
                issues.append(CheckIssue(
                    "lora_rank", f"lora_rank={cfg['lora_rank']} is larger than the {target} projection "
                    f"it adapts ({n_in} -> {n_out})",
                    f"use a rank of at most {min(n_in, n_out)}: a larger one adds parameters, not rank"))
                break
        if cfg["lora_rank"] and not cfg["lora_targets"]:
            issues.append(CheckIssue("lora_targets", "lora_rank is set but lora_targets is empty",
                                     "name the projections to adapt (q, k, v, gate_up), or set lora_rank: 0"))
        return issues

    def own_param_shapes(self, cfg, model):
        shapes = {} if shared_key(cfg) else {f"block.{k}": s for k, s in block_shapes(cfg, model).items()}
        for target, (n_in, n_out) in lora_dims(cfg, model).items():
            shapes[f"lora.{target}.down.weight"] = (cfg["lora_rank"], n_in)
            shapes[f"lora.{target}.up.weight"] = (n_out, cfg["lora_rank"])
        if cfg["out_proj"]:
            shapes["linear.weight"] = (model.d_model, model.d_model)
        return shapes

    def shared_params(self, cfg, model):
        key = shared_key(cfg)
        return {} if key is None else {key: block_shapes(cfg, model)}

    def build_shared(self, key, cfg, model):
        from .module import FeedBlockCore
        return FeedBlockCore(cfg, model)

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        t, d, width, hd = seq_len, model.d_model, in_width(cfg, model), cfg["head_dim"]
        h, hkv, f, r = cfg["n_heads"], cfg["n_kv_heads"], cfg["d_ff"], cfg["lora_rank"]
        pairs = conv.pairs(seq_len)
        matmul = 2 * t * (width * (h + 2 * hkv) * hd + h * hd * d + 2 * d * f + f * d)
        other = (RMSNORM_FLOPS_PER_ELEMENT * t * (width + d) + 2 * RMSNORM_FLOPS_PER_GROUP * t
                 + SOFTMAX_FLOPS_PER_ELEMENT * h * pairs
                 + t * f * (ACTIVATION_FLOPS[ACTIVATIONS[cfg["activation"]]] + 1) + t * d)
        if cfg["rope"]:
            other += ROPE_FLOPS_PER_ELEMENT * t * (h + hkv) * hd
        for n_in, n_out in lora_dims(cfg, model).values():
            matmul += 2 * t * r * (n_in + n_out)
            other += t * n_out
        if cfg["out_proj"]:
            matmul += 2 * t * d * d
        return Flops(matmul=matmul, attention=4 * hd * h * pairs, other=other)

    def own_state_bytes(self, cfg, model, seq_len):
        return 2 * cfg["n_kv_heads"] * cfg["head_dim"] * seq_len * model.dtype_bytes

    def own_activation_bytes(self, cfg, model, seq_len):
        d, width, hd, h, hkv = model.d_model, in_width(cfg, model), cfg["head_dim"], cfg["n_heads"], cfg["n_kv_heads"]
        elems = 3 * width + (2 * h + 2 * hkv) * hd + 3 * d + 4 * cfg["d_ff"]
        elems += cfg["lora_rank"] * len(lora_dims(cfg, model)) + (d if cfg["out_proj"] else 0)
        return seq_len * (elems * model.dtype_bytes + 4 * (h + 2))  # + the two norms' rsqrt

    def own_notes(self, cfg, model):
        return ["a feed_block's output is added to the next sublayer's input (before its norm), not "
                "to the residual stream; a shared block's weights count once, its FLOPs and KV cache "
                "once per use"]
