"""A transformers config.json to an archspec spec, family by family (`archspec import-hf`).

    spec = spec_from_config(json.load(open("config.json")))   # {"model": ..., "components": ..., "layout": ...}
    text = spec_text(spec, "llama", source="config.json")      # YAML, with a header saying where it came from

Plain dicts in, plain dicts out: no torch and no transformers here (the family is the config's
`model_type`). Every key of the config is accounted for: read into the spec, checked to hold a
value archspec computes the same way, or listed as not changing the model's forward pass
(metadata, token ids, initialisation ranges, dropout, kernel choices). Any other key, or a known
key with a value archspec cannot express (RoPE scaling, biases a family's spec has no place for,
another activation), is an HFImportError naming the family, the key and its value: an import is
the same model or an error, never a silently different one.

Dropout (attention_dropout, resid_pdrop, ...) is ignored: it is the identity at inference, so the
logits are the same; a model trained on from the import trains without it (archspec has none).
"""
from __future__ import annotations

import math

import yaml


class HFImportError(ValueError):
    """A config (or checkpoint) archspec cannot take as the same model; the message says what
    and how to proceed."""


# keys that do not change a forward pass in float32: metadata, generation and token ids,
# initialisation, dropout (identity at inference), kernel choices, training-only losses
IGNORED = {
    "architectures", "output_hidden_states", "output_attentions", "return_dict", "chunk_size_feed_forward",
    "is_encoder_decoder", "id2label", "label2id", "problem_type", "_name_or_path", "model_type",
    "transformers_version", "initializer_range", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id",
    "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params",
    "finetuning_task", "torchscript", "tf_legacy_loss", "pruned_heads", "tie_encoder_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "is_decoder", "use_bfloat16", "num_labels", "auto_map",
    "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "summary_type",
    "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "output_router_logits", "router_jitter_noise", "router_z_loss_coef", "z_loss_coefficient",
    "use_mamba_kernels", "use_mambapy", "use_associative_scan", "use_mem_eff_path", "residual_in_fp32",
    "rescale_prenorm_residual", "num_logits_to_keep", "reorder_and_upcast_attn",
    "attn_implementation", "_attn_implementation_autoset", "cache_implementation",
    "calc_logits_for_entire_prompt",
}

ATTENTION = ("llama", "mistral", "qwen2", "phi3", "gemma2", "gpt2")
MOE = ("mixtral", "qwen2_moe", "olmoe")
SSM = ("mamba", "falcon_mamba", "mamba2")
HYBRID = ("jamba", "bamba", "zamba2")
FAMILIES = ATTENTION + MOE + SSM + HYBRID


# the families whose modeling code rotates only part of each head (the others ignore the factor
# or fail on it)
PARTIAL_ROTARY = ("phi3", "bamba")


# where a family's config class defaults differ from the value the code below assumes (a
# config.json written by hand, or by an old version, may leave them out; transformers then
# takes the class default, and so does the import)
CLASS_DEFAULTS = {
    "llama": {"rms_norm_eps": 1e-6}, "mistral": {"rms_norm_eps": 1e-6, "sliding_window": 4096},
    "mixtral": {"rms_norm_eps": 1e-5, "rope_theta": 1e6, "router_aux_loss_coef": 0.001},
    "qwen2": {"rms_norm_eps": 1e-6}, "qwen2_moe": {"rms_norm_eps": 1e-6, "router_aux_loss_coef": 0.001,
                                                   "sliding_window": 4096},
    "olmoe": {"rms_norm_eps": 1e-5, "router_aux_loss_coef": 0.01}, "gemma2": {"rms_norm_eps": 1e-6,
                                                                              "sliding_window": 4096},
    "phi3": {"rms_norm_eps": 1e-5}, "jamba": {"rms_norm_eps": 1e-6, "router_aux_loss_coef": 0.001},
    "bamba": {"rms_norm_eps": 1e-5}, "zamba2": {"rms_norm_eps": 1e-5},
}


class Config:
    """A config dict that remembers which keys were read, so that `finish` can name the rest."""

    def __init__(self, family: str, data: dict):
        self.family, self.data, self.read = family, data, set()

    def get(self, key: str, default=None):
        """The key's value; a missing key takes the family's class default (else `default`),
        an explicit null `default` (null sliding_window stays no window)."""
        self.read.add(key)
        if key not in self.data:
            return CLASS_DEFAULTS.get(self.family, {}).get(key, default)
        value = self.data[key]
        return default if value is None else value

    def need(self, key: str):
        self.read.add(key)
        if self.data.get(key) is None:
            raise HFImportError(f"{self.family} config: '{key}' is missing; a {self.family} config.json has it")
        return self.data[key]

    def expect(self, key: str, allowed, default, why: str = "") -> object:
        """The key must hold one of `allowed` (a missing key counts as `default`)."""
        value = self.get(key, default)
        allowed = allowed if isinstance(allowed, (tuple, list)) else (allowed,)
        if value not in allowed:
            raise self.unsupported(key, value, why or f"archspec's {self.family} import takes "
                                   + " or ".join(repr(a) for a in allowed))
        return value

    def unsupported(self, key: str, value, why: str) -> HFImportError:
        return HFImportError(f"{self.family} config: {key} = {value!r} is not expressible in archspec ({why}); "
                             "importing it would give a different model")

    def finish(self) -> None:
        rest = sorted(k for k in self.data if k not in self.read and k not in IGNORED)
        if rest:
            shown = ", ".join(f"{k} = {self.data[k]!r}"[:80] for k in rest[:6])
            raise HFImportError(f"{self.family} config: unknown key(s) {shown}{' ...' if len(rest) > 6 else ''}: "
                                "archspec does not know whether they change the model, so it does not guess; "
                                "if they do not (metadata, training-only settings), delete them from a copy "
                                "of config.json and import that")


def spec_from_config(config: dict) -> dict:
    """The archspec spec (a dict: model, components, layout) of a transformers config.json."""
    if not isinstance(config, dict):
        raise HFImportError("config.json must hold a JSON object (a transformers model config)")
    family = config.get("model_type")
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else "?"
        raise HFImportError(f"config.json has a quantization_config (quant_method {method}): the weights are "
                            "quantized, and archspec imports float weights; import the unquantized checkpoint")
    if family not in BUILDERS:
        raise HFImportError(f"model_type {family!r} is not a family archspec imports; it imports "
                            + ", ".join(FAMILIES))
    c = Config(family, config)
    spec = BUILDERS[family](c)
    c.finish()
    return spec


def spec_text(spec: dict, family: str, source: str = "config.json") -> str:
    """YAML of an imported spec, with a header naming its source."""
    return (f"# imported by `archspec import-hf` from {source} (transformers model_type {family}):\n"
            "# the same model, weight for weight (`archspec convert` loads the weights)\n"
            + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=110))


# --- the pieces every family shares -------------------------------------------------------------

def _model(c: Config, d: int, *, norm: dict, tie_default: bool, max_seq: int | None = None, **extra) -> dict:
    dtype = c.get("dtype") or c.get("torch_dtype") or "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise c.unsupported("dtype", dtype, "archspec builds float32, bfloat16 or float16")
    model = {"name": c.get("_name_or_path") or c.family, "vocab_size": c.need("vocab_size"), "d_model": d,
             "max_seq_len": max_seq if max_seq is not None else c.need("max_position_embeddings"),
             "dtype": dtype, "tie_embeddings": bool(c.get("tie_word_embeddings", tie_default)), "norm": norm}
    model.update(extra)
    return model


def _rope(c: Config, head_dim: int) -> dict:
    """rope_theta and partial rotary from rope_parameters (transformers 5) or the top-level keys
    (4.x); any scaling is an error."""
    params = dict(c.get("rope_parameters") or {})
    scaling = c.get("rope_scaling")
    kind = params.pop("rope_type", "default")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", kind))
    if kind != "default":
        raise c.unsupported("rope_parameters.rope_type" if not scaling else "rope_scaling", kind,
                            "archspec's RoPE is the unscaled one; YaRN, linear, dynamic, llama3 and longrope "
                            "scaling are not modelled")
    theta = params.pop("rope_theta", c.get("rope_theta", 10000.0))
    partial = params.pop("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
    if partial != 1.0 and c.family not in PARTIAL_ROTARY:
        raise c.unsupported("partial_rotary_factor", partial, f"transformers' {c.family} rotates whole heads; "
                            "its model would not run this config")
    if params:
        raise c.unsupported("rope_parameters", sorted(params), "unknown RoPE settings")
    out = {"rope_theta": float(theta)}
    if partial != 1.0:
        dims = int(head_dim * partial)
        if dims % 2 or dims <= 0:
            raise c.unsupported("partial_rotary_factor", partial, f"{dims} rotary dimensions of {head_dim} "
                                "is not an even number")
        out["rope_dims"] = dims
    return out


def _attention(c: Config, d: int, *, bias=False, head_dim: int | None = None, **extra) -> dict:
    heads = c.need("num_attention_heads")
    kv = c.get("num_key_value_heads", heads)
    hd = head_dim or c.get("head_dim") or d // heads
    attn = {"type": "attention", "n_heads": heads}
    if kv != heads:
        attn["n_kv_heads"] = kv
    if hd * heads != d or d % heads:
        attn["head_dim"] = hd
    attn.update(_rope(c, hd))
    if bias:
        attn["bias"] = bias
    attn.update(extra)
    return attn


def _window(c: Config, window, max_seq: int):
    """A sliding window within max_seq_len (a longer one never drops a key: full attention)."""
    if window is None or window >= max_seq:
        return None
    if window <= 0:
        raise c.unsupported("sliding_window", window, "a window holds at least one token")
    return int(window)


GATED = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh",
         "gelu_new": "geglu_tanh"}
PLAIN = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
         "silu": "silu"}


def _activation(c: Config, key: str, table: dict, default: str) -> str:
    act = c.get(key, default)
    if table.get(act) is None:
        raise c.unsupported(key, act, "archspec's activations: " + ", ".join(k for k, v in table.items() if v))
    return table[act]


def layout(layers: list[tuple[str, ...]]) -> str:
    """The shortest periodic layout string of per-layer symbol tuples: '(attn mlp) x 24'."""
    n = len(layers)
    for p in range(1, n + 1):
        if n % p == 0 and all(layers[i] == layers[i % p] for i in range(n)):
            body = " ".join(s for layer in layers[:p] for s in layer)
            if n // p == 1:
                return body
            return f"({body}) x {n // p}" if len(layers[0]) > 1 or p > 1 else f"{body} x {n}"
    raise AssertionError("unreachable: p = n always matches")


def _layer_kinds(c: Config, n: int, max_seq: int) -> list[int | None]:
    """Each layer's sliding window (None: full attention), as the family's modeling code
    decides it: Qwen2, Qwen2-MoE and Gemma-2 by layer_types (derived as their config classes
    do when a 4.x config lacks it); Mistral, Mixtral and Phi-3 window every layer when
    sliding_window is set (their models do not read layer_types)."""
    window = c.get("sliding_window")
    types = c.get("layer_types")
    use = bool(c.get("use_sliding_window", c.family not in ("qwen2", "qwen2_moe")))
    below = c.get("max_window_layers", n)
    if c.family not in ("qwen2", "qwen2_moe", "gemma2"):
        return [_window(c, window, max_seq)] * n
    if not use or window is None:
        return [None] * n
    if types is None:
        if c.family == "qwen2":
            types = ["sliding_attention" if i >= below else "full_attention" for i in range(n)]
        elif c.family == "qwen2_moe":
            types = ["sliding_attention" if (i + 1) % 2 and i < below else "full_attention" for i in range(n)]
        else:
            types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    if len(types) != n or set(types) - {"full_attention", "sliding_attention"}:
        raise c.unsupported("layer_types", types, f"{n} entries of full_attention / sliding_attention")
    return [_window(c, window, max_seq) if t == "sliding_attention" else None for t in types]


def _decoder(c: Config, d: int, attn: dict, ffn_of, n: int, max_seq: int) -> tuple[dict, str]:
    """Components and layout of a stack of (attention, feed-forward) layers. Layers whose
    windows differ (layer_types) get a component each: global (full) and local (windowed)."""
    windows = _layer_kinds(c, n, max_seq)
    distinct = sorted({w for w in windows if w is not None})

    def name(w):
        if len(set(windows)) == 1:
            return "attn"
        return "global" if w is None else "local" if len(distinct) == 1 else f"local{w}"
    components, layers = {}, []
    for i, w in enumerate(windows):
        components.setdefault(name(w), dict(attn, **({"window": w} if w is not None else {})))
        ffn_name, ffn = ffn_of(i)
        components.setdefault(ffn_name, ffn)
        layers.append((name(w), ffn_name))
    return components, layout(layers)


def _spec(model: dict, components: dict, layout_text: str) -> dict:
    return {"model": model, "components": components, "layout": layout_text}


# --- attention families -------------------------------------------------------------------------

def _llama_like(c: Config) -> dict:
    d, n = c.need("hidden_size"), c.need("num_hidden_layers")
    max_seq = c.need("max_position_embeddings")
    attention_bias = c.get("attention_bias", False)
    if c.family == "qwen2":
        attention_bias = "qkv"  # Qwen2 always has q, k, v biases and none on o
    elif attention_bias:
        attention_bias = True
    if c.family == "llama":
        c.expect("pretraining_tp", 1, 1, "a tensor-parallel split of the projections at pretraining")
        c.expect("mlp_bias", False, False, "archspec's llama import takes MLPs without biases")
    if c.family == "phi3":
        c.get("original_max_position_embeddings")
        c.get("partial_rotary_factor")
    attn = _attention(c, d, bias=attention_bias)
    mlp = {"type": "mlp", "activation": _activation(c, "hidden_act", GATED, "silu"), "d_ff": c.need("intermediate_size")}
    components, lay = _decoder(c, d, attn, lambda i: ("mlp", mlp), n, max_seq)
    model = _model(c, d, norm={"type": "rmsnorm", "eps": float(c.get("rms_norm_eps", 1e-6))}, tie_default=False)
    return _spec(model, components, lay)


def _gemma2(c: Config) -> dict:
    d, n = c.need("hidden_size"), c.need("num_hidden_layers")
    max_seq = c.need("max_position_embeddings")
    c.expect("attention_bias", False, False)
    c.expect("use_bidirectional_attention", (None, False), None, "Gemma-2's attention is causal in archspec")
    head_dim = c.get("head_dim", 256)
    scalar = c.get("query_pre_attn_scalar", 256)
    if scalar != head_dim:
        raise c.unsupported("query_pre_attn_scalar", scalar, f"archspec scales attention scores by "
                            f"head_dim^-1/2; this config scales by {scalar}^-1/2 with head_dim {head_dim}")
    extra = {}
    if c.get("attn_logit_softcapping") is not None:
        extra["logit_softcap"] = float(c.get("attn_logit_softcapping"))
    attn = _attention(c, d, head_dim=head_dim, **extra)
    if "head_dim" not in attn and head_dim * attn["n_heads"] != d:
        attn["head_dim"] = head_dim
    act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
    c.read.add("hidden_act")
    if GATED.get(act) is None:
        raise c.unsupported("hidden_activation", act, "archspec's gated activations: geglu, geglu_tanh, swiglu")
    mlp = {"type": "mlp", "activation": GATED[act], "d_ff": c.need("intermediate_size")}
    components, lay = _decoder(c, d, attn, lambda i: ("mlp", mlp), n, max_seq)
    extra_model = {"scale_embeddings": True, "post_norm": True}
    if c.get("final_logit_softcapping") is not None:
        extra_model["logit_softcap"] = float(c.get("final_logit_softcapping"))
    model = _model(c, d, norm={"type": "rmsnorm", "eps": float(c.get("rms_norm_eps", 1e-6)), "unit_offset": True},
                   tie_default=True, **extra_model)
    return _spec(model, components, lay)


def _gpt2(c: Config) -> dict:
    d, n = c.need("n_embd"), c.need("n_layer")
    c.expect("scale_attn_weights", True, True, "archspec scales attention scores by head_dim^-1/2")
    c.expect("scale_attn_by_inverse_layer_idx", False, False, "a per-layer 1/(i+1) score scale")
    attn = {"type": "attention", "n_heads": c.need("n_head"), "rope": False, "bias": True}
    if d % attn["n_heads"]:
        raise c.unsupported("n_head", attn["n_heads"], f"it must divide n_embd {d}")
    mlp = {"type": "mlp", "activation": _activation(c, "activation_function", PLAIN, "gelu_new"),
           "d_ff": c.get("n_inner") or 4 * d, "bias": True}
    model = _model(c, d, norm={"type": "layernorm", "eps": float(c.get("layer_norm_epsilon", 1e-5))},
                   tie_default=True, max_seq=c.need("n_positions"), learned_positions=True)
    return _spec(model, {"attn": attn, "mlp": mlp}, layout([("attn", "mlp")] * n))


# --- mixture-of-experts families ----------------------------------------------------------------

def _moe_family(c: Config) -> dict:
    d, n = c.need("hidden_size"), c.need("num_hidden_layers")
    max_seq = c.need("max_position_embeddings")
    if _activation(c, "hidden_act", GATED, "silu") != "swiglu":
        raise c.unsupported("hidden_act", c.data.get("hidden_act"), "archspec's experts are SwiGLU or GeGLU")
    moe = {"type": "moe", "topk": c.need("num_experts_per_tok")}
    bias, extra = False, {}
    if c.family == "mixtral":
        moe.update(n_experts=c.need("num_local_experts"), d_ff=c.need("intermediate_size"), renormalize=True)
    else:
        moe.update(n_experts=c.need("num_experts"), renormalize=bool(c.get("norm_topk_prob", False)))
    if c.family == "olmoe":
        moe["d_ff"] = c.need("intermediate_size")
        c.expect("clip_qkv", None, None, "clamping q, k, v")
        bias = bool(c.get("attention_bias", False))
        extra = {"qk_norm": "projection", "qk_norm_eps": float(c.get("rms_norm_eps", 1e-5))}
    if c.family == "qwen2_moe":
        bias = "qkv" if c.get("qkv_bias", True) else False
        moe["d_ff"] = c.need("moe_intermediate_size")
        shared = c.get("shared_expert_intermediate_size", 0)
        if shared:
            moe.update(n_shared_experts=1, shared_d_ff=shared, shared_expert_gate=True)
    moe["aux_loss_scale"] = float(c.get("router_aux_loss_coef", 0.01))
    if moe["topk"] == 1 and moe["renormalize"]:  # every routing weight 1: archspec refuses that router
        raise c.unsupported("num_experts_per_tok", 1, "top-1 routing renormalised gives every token's expert "
                            "weight 1, which archspec's moe refuses (its router would learn only from the "
                            "auxiliary losses)")
    dense_layers = set()
    if c.family == "qwen2_moe":
        step = c.get("decoder_sparse_step", 1)
        only = set(c.get("mlp_only_layers") or [])
        dense_layers = {i for i in range(n) if i in only or (i + 1) % step != 0}
    mlp = {"type": "mlp", "activation": "swiglu", "d_ff": c.get("intermediate_size")}
    attn = _attention(c, d, bias=bias, **extra)
    components, lay = _decoder(c, d, attn, lambda i: ("mlp", mlp) if i in dense_layers else ("moe", moe), n, max_seq)
    model = _model(c, d, norm={"type": "rmsnorm", "eps": float(c.get("rms_norm_eps", 1e-6))}, tie_default=False)
    return _spec(model, components, lay)


# --- state-space families -----------------------------------------------------------------------

def _mamba(c: Config) -> dict:
    d, n = c.need("hidden_size"), c.need("num_hidden_layers")
    c.expect("hidden_act", "silu", "silu")
    expand = c.get("expand", 2)
    inner = c.get("intermediate_size", int(expand * d))
    if inner != int(expand * d):
        raise c.unsupported("intermediate_size", inner, f"archspec's inner width is expand * d_model = {int(expand * d)}")
    rank = c.get("time_step_rank", "auto")
    rank = math.ceil(d / 16) if rank == "auto" else rank
    m = {"type": "mamba", "d_state": c.get("state_size", 16), "d_conv": c.get("conv_kernel", 4), "expand": expand,
         "conv_bias": bool(c.get("use_conv_bias", True)), "bias": bool(c.get("use_bias", False)), "dt_rank": rank,
         "dt_min": float(c.get("time_step_min", 1e-3)), "dt_max": float(c.get("time_step_max", 0.1)),
         "dt_init_floor": float(c.get("time_step_floor", 1e-4)), "dt_scale": float(c.get("time_step_scale", 1.0)),
         "dt_init": c.expect("time_step_init_scheme", ("random", "constant"), "random")}
    if c.family == "falcon_mamba":
        m.update(inner_norms=True, inner_norm_weights=False, inner_norm_eps=float(c.get("mixer_rms_eps", 1e-6)))
    model = _model(c, d, norm={"type": "rmsnorm", "eps": float(c.get("layer_norm_epsilon", 1e-5))},
                   tie_default=True, max_seq=_ssm_max_seq(c))
    return _spec(model, {"ssm": m}, layout([("ssm",)] * n))


def _ssm_max_seq(c: Config) -> int:
    """SSM configs name no context length: archspec needs one (it bounds generation, not the
    weights); 2048 unless the config has max_position_embeddings."""
    return int(c.get("max_position_embeddings") or 2048)


def _dt_limit(c: Config, key: str = "time_step_limit"):
    lim = c.get(key, (0.0, float("inf")))
    # transformers 5 writes infinity as {"__float__": "Infinity"} (JSON has no inf)
    lo, hi = (float(v["__float__"]) if isinstance(v, dict) and "__float__" in v else float(v) for v in lim)
    return None if lo == 0.0 and hi == float("inf") else [lo, hi]


def _mamba2_component(c: Config, d: int, *, heads: int, head_dim: int, state: int, groups: int, conv: int,
                      expand, chunk: int, conv_bias: bool, bias: bool, eps: float, heads_key: str) -> dict:
    if heads * head_dim != int(expand * d):
        raise c.unsupported(heads_key, heads, f"archspec's Mamba2 has expand * d_model / head_dim = "
                            f"{int(expand * d) // head_dim} heads")
    m = {"type": "mamba2", "d_state": state, "d_conv": conv, "expand": expand, "head_dim": head_dim,
         "n_groups": groups, "chunk_size": chunk, "conv_bias": conv_bias, "bias": bias, "norm_eps": eps,
         "dt_min": float(c.get("time_step_min", 1e-3)), "dt_max": float(c.get("time_step_max", 0.1)),
         "dt_init_floor": float(c.get("time_step_floor", 1e-4))}
    limit = _dt_limit(c)
    if limit is not None:
        m["dt_limit"] = limit
    return m


def _mamba2(c: Config) -> dict:
    d, n = c.need("hidden_size"), c.need("num_hidden_layers")
    c.expect("hidden_act", "silu", "silu")
    c.expect("norm_before_gate", (False,), False, "Mamba2 normalises y * silu(z)")
    c.expect("rms_norm", True, True, "Mamba2's gated RMSNorm")
    c.get("time_step_rank")  # unused by Mamba2's forward
    eps = float(c.get("layer_norm_epsilon", 1e-5))
    m = _mamba2_component(c, d, heads=c.need("num_heads"), head_dim=c.get("head_dim", 64), state=c.get("state_size", 128),
                          groups=c.get("n_groups", 1), conv=c.get("conv_kernel", 4), expand=c.get("expand", 2),
                          chunk=c.get("chunk_size", 256), conv_bias=bool(c.get("use_conv_bias", True)),
                          bias=bool(c.get("use_bias", False)), eps=eps, heads_key="num_heads")
    model = _model(c, d, norm={"type": "rmsnorm", "eps": eps}, tie_default=False, max_seq=_ssm_max_seq(c))
    return _spec(model, {"ssm": m}, layout([("ssm",)] * n))


# --- hybrid families ----------------------------------------------------------------------------

def _jamba(c: Config) -> dict:
    """Layer i: attention where i % attn_layer_period == attn_layer_offset (no positional
    encoding), else Mamba1 with RMSNorms on dt, B and C; then an MoE where
    i % expert_layer_period == expert_layer_offset (with more than one expert), else an MLP."""
    d, n = c.need("hidden_size"), c.need("num_hidden_layers")
    if _activation(c, "hidden_act", GATED, "silu") != "swiglu":
        raise c.unsupported("hidden_act", c.data.get("hidden_act"), "archspec's experts are SwiGLU or GeGLU")
    eps = float(c.get("rms_norm_eps", 1e-6))
    heads = c.need("num_attention_heads")
    attn = {"type": "attention", "n_heads": heads, "rope": False}
    if c.get("num_key_value_heads", heads) != heads:
        attn["n_kv_heads"] = c.get("num_key_value_heads")
    expand = c.get("mamba_expand", 2)
    rank = c.get("mamba_dt_rank", "auto")
    mamba = {"type": "mamba", "d_state": c.get("mamba_d_state", 16), "d_conv": c.get("mamba_d_conv", 4),
             "expand": expand, "dt_rank": math.ceil(d / 16) if rank == "auto" else rank,
             "conv_bias": bool(c.get("mamba_conv_bias", True)), "bias": bool(c.get("mamba_proj_bias", False)),
             "inner_norms": True, "inner_norm_eps": eps}
    f = c.need("intermediate_size")
    experts = c.get("num_experts", 16)
    moe = {"type": "moe", "n_experts": experts, "topk": c.need("num_experts_per_tok"), "d_ff": f,
           "renormalize": False, "aux_loss_scale": float(c.get("router_aux_loss_coef", 0.001))}
    mlp = {"type": "mlp", "activation": "swiglu", "d_ff": f}
    ap, ao = c.get("attn_layer_period", 8), c.get("attn_layer_offset", 4)
    ep, eo = c.get("expert_layer_period", 2), c.get("expert_layer_offset", 1)
    layers = [("attn" if i % ap == ao else "mamba", "moe" if experts > 1 and i % ep == eo else "mlp") for i in range(n)]
    components = {k: v for k, v in (("mamba", mamba), ("attn", attn), ("mlp", mlp), ("moe", moe))
                  if any(k in layer for layer in layers)}
    model = _model(c, d, norm={"type": "rmsnorm", "eps": eps}, tie_default=False)
    return _spec(model, components, layout(layers))


def _bamba(c: Config) -> dict:
    """Layer i: attention (partial RoPE) where i is in attn_layer_indices, else Mamba2; then a
    SwiGLU MLP."""
    d, n = c.need("hidden_size"), c.need("num_hidden_layers")
    eps = float(c.get("rms_norm_eps", 1e-5))
    c.expect("mlp_bias", False, False, "archspec's bamba import takes MLPs without biases")
    attn = _attention(c, d, bias=bool(c.get("attention_bias", False)))
    mlp = {"type": "mlp", "activation": _activation(c, "hidden_act", GATED, "silu"), "d_ff": c.need("intermediate_size")}
    ssm = _mamba2_component(c, d, heads=c.get("mamba_n_heads", 128), head_dim=c.get("mamba_d_head", 64),
                            state=c.get("mamba_d_state", 256), groups=c.get("mamba_n_groups", 1),
                            conv=c.get("mamba_d_conv", 4), expand=c.get("mamba_expand", 2),
                            chunk=c.get("mamba_chunk_size", 256), conv_bias=bool(c.get("mamba_conv_bias", True)),
                            bias=bool(c.get("mamba_proj_bias", False)), eps=eps, heads_key="mamba_n_heads")
    attn_at = set(c.get("attn_layer_indices") or [])
    layers = [("attn" if i in attn_at else "ssm", "mlp") for i in range(n)]
    components = {k: v for k, v in (("ssm", ssm), ("attn", attn), ("mlp", mlp)) if any(k in layer for layer in layers)}
    model = _model(c, d, norm={"type": "rmsnorm", "eps": eps}, tie_default=False)
    return _spec(model, components, layout(layers))


# Zamba2's Mamba2 clamps dt to (time_step_min, inf); a spec's numbers are finite, and a dt of
# 1e4 (softplus of 1e4) is far past any step a trained model takes: the clamp never binds
ZAMBA2_DT_MAX = 10000.0


def _zamba2(c: Config) -> dict:
    """Mamba2 layers; a 'hybrid' layer runs a shared transformer block (feed_block, one of
    num_mem_blocks, alternating by use) on [x ; embeddings] first, feeding the Mamba2 layer."""
    d, n = c.need("hidden_size"), c.need("num_hidden_layers")
    types = c.need("layers_block_type")
    if len(types) != n or set(types) - {"mamba", "linear_attention", "hybrid"}:  # transformers 5: linear_attention
        raise c.unsupported("layers_block_type", types, f"{n} entries of mamba (linear_attention) / hybrid")
    c.expect("add_bias_linear", False, False, "archspec's Zamba2 blocks have no biases")
    c.expect("use_long_context", False, False, "a rescaled rope_theta for long contexts")
    c.expect("hidden_act", ("gelu", "silu"), "gelu")
    heads, kv = c.need("num_attention_heads"), c.get("num_key_value_heads", c.data.get("num_attention_heads"))
    expand, mamba_heads = c.get("mamba_expand", 2), c.need("n_mamba_heads")
    derived = {"attention_hidden_size": 2 * d, "attention_head_dim": 2 * d // heads,
               "mamba_headdim": int(expand * d) // mamba_heads, "kv_channels": d // heads, "num_query_groups": kv,
               "hybrid_layer_ids": [i for i, t in enumerate(types) if t == "hybrid"]}
    for key, value in derived.items():
        if c.get(key, value) != value:
            raise c.unsupported(key, c.data[key], f"Zamba2 derives it: {value}")
    head_dim = derived["mamba_headdim"]
    ssm = {"type": "mamba2", "d_state": c.get("mamba_d_state", 64), "d_conv": c.get("mamba_d_conv", 4),
           "expand": expand, "head_dim": head_dim, "n_groups": c.get("mamba_ngroups", 1),
           "chunk_size": c.get("chunk_size", 256), "conv_bias": bool(c.get("use_conv_bias", True)),
           "norm_eps": 1e-5,  # Zamba2's gated norm has a fixed eps
           "dt_min": float(c.get("time_step_min", 1e-3)), "dt_max": float(c.get("time_step_max", 0.1)),
           "dt_init_floor": float(c.get("time_step_floor", 1e-4)),
           "dt_limit": [float(c.get("time_step_min", 1e-3)), ZAMBA2_DT_MAX]}
    if ssm["expand"] * d % head_dim:
        raise c.unsupported("n_mamba_heads", mamba_heads, "it must divide expand * hidden_size")
    c.get("rope_parameters"), c.get("rope_theta")  # read below only with use_mem_rope
    blocks = c.get("num_mem_blocks", 1)
    adapters = c.get("use_shared_attention_adapter", False)
    rank = c.get("adapter_rank", 128)
    components = {"M": ssm}
    n_uses = len(derived["hybrid_layer_ids"])
    for b in range(blocks):
        uses = len(range(b, n_uses, blocks))
        block = {"type": "feed_block", "share": f"block{b}" if uses > 1 else None, "n_heads": heads, "d_ff": c.need("intermediate_size"),
                 "activation": "geglu" if c.data.get("hidden_act", "gelu") == "gelu" else "swiglu",
                 "softmax_scale": (derived["attention_head_dim"] / 2) ** -0.5, "norm_eps": float(c.get("rms_norm_eps", 1e-5)),
                 "lora_rank": rank, "lora_targets": ["q", "k", "v", "gate_up"] if adapters else ["gate_up"]}
        if kv != heads:
            block["n_kv_heads"] = kv
        if c.get("use_mem_rope", False):
            block.update(_rope(c, derived["attention_head_dim"]))
        else:
            block["rope"] = False
        components[f"T{b}"] = block
    layers, use = [], 0
    for t in types:
        if t == "hybrid":
            layers.append((f"T{use % blocks}", "M"))
            use += 1
        else:
            layers.append(("M",))
    model = _model(c, d, norm={"type": "rmsnorm", "eps": float(c.get("rms_norm_eps", 1e-5))}, tie_default=True)
    return _spec(model, components, layout(layers))


BUILDERS = {"jamba": _jamba, "bamba": _bamba, "zamba2": _zamba2, **{f: _llama_like for f in ("llama", "mistral", "qwen2", "phi3")}, "gemma2": _gemma2, "gpt2": _gpt2,
            **{f: _moe_family for f in MOE}, "mamba": _mamba, "falcon_mamba": _mamba, "mamba2": _mamba2}
