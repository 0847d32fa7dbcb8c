"""An archspec model whose architecture a transformers family has, as that family's checkpoint
(`archspec export-hf`): config.json + model.safetensors that AutoModelForCausalLM loads.

    family, config = family_of(spec)                 # or HFImportError naming why none fits
    export_hf(model, "out/")                         # model: a build (or load_saved's)

A spec matches a family when that family's config, written from the spec, imports back
(families.spec_from_config) to the same resolved spec: the same components with the same
settings in the same order, the same model-wide options. Settings that only shape training or
initialisation (init_std, MoE z-loss and router dtype, Mamba2's A_init_range, backends) are not
compared: a transformers config has no place for them. A spec no family covers (Hydra, MoM,
PKM, parallel sublayers...) is an error that points to the generic wrapper, hfwrap's
ArchspecForCausalLM (archspec/hf/model.py), which runs any spec as a transformers model.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from .families import HFImportError, spec_from_config

# compared nowhere: training / initialisation only, or how a module runs
_NOT_COMPARED = {"backend", "z_loss_scale", "router_dtype", "A_init_range"}
_NOT_COMPARED_MODEL = {"name", "init_std", "n_sublayers"}
GENERIC = ("use the generic wrapper instead: archspec.hf.model's ArchspecConfig / ArchspecForCausalLM "
           "run any spec as a transformers model (save_pretrained / from_pretrained)")


def canonical(spec) -> tuple:
    """What a transformers config must reproduce of a ResolvedSpec. Share groups compare by
    which uses they join (numbered in order of first use), not by name."""
    model = {k: _value(v) for k, v in asdict(spec.model).items() if k not in _NOT_COMPARED_MODEL}
    norm = (spec.norm.type, _settings(spec.norm.config, {}))
    groups: dict = {}
    subs = [tuple((m.type, _settings(m.config, groups)) for m in sub.members) for sub in spec.sublayers]
    return model, norm, subs


def _settings(config: dict, groups: dict) -> tuple:
    out = {k: _value(v) for k, v in config.items() if k not in _NOT_COMPARED}
    if config.get("share") is not None:
        out["share"] = groups.setdefault(config["share"], len(groups))
    return tuple(sorted(out.items()))


def _value(v):
    """Numbers compare by value (10000 == 10000.0), lists as tuples."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return tuple(_value(x) for x in v)
    return repr(v)


# --- reading a spec's structure -----------------------------------------------------------------

def _members(spec) -> list | None:
    """Each sublayer's single member, or None when some sublayer is a parallel group."""
    if any(len(sub.members) != 1 for sub in spec.sublayers):
        return None
    return [sub.members[0] for sub in spec.sublayers]


def _pairs(spec, mixers=("attention",), ffns=("mlp",)) -> list | None:
    """[(mixer, feed-forward)] per layer, when the sublayers alternate so."""
    members = _members(spec)
    if members is None or len(members) % 2:
        return None
    pairs = list(zip(members[0::2], members[1::2]))
    if all(a.type in mixers and f.type in ffns for a, f in pairs):
        return pairs
    return None


def _base(spec, model_type: str, architecture: str) -> dict:
    m = spec.model
    return {"model_type": model_type, "architectures": [architecture], "vocab_size": m.vocab_size,
            "hidden_size": m.d_model, "max_position_embeddings": m.max_seq_len,
            "tie_word_embeddings": m.tie_embeddings, "dtype": m.dtype}


def _attention_keys(spec, attn: dict) -> dict:
    d, heads = spec.model.d_model, attn["n_heads"]
    head_dim = attn.get("head_dim") or d // heads
    rope = {"rope_type": "default", "rope_theta": float(attn["rope_theta"])}
    if attn.get("rope_dims") is not None:
        rope["partial_rotary_factor"] = attn["rope_dims"] / head_dim
    return {"num_attention_heads": heads, "num_key_value_heads": attn.get("n_kv_heads") or heads,
            "head_dim": head_dim, "rope_parameters": rope, "rope_theta": float(attn["rope_theta"])}


def _layer_types(spec, pairs) -> tuple[list[str], int | None]:
    windows = [a.config.get("window") for a, _ in pairs]
    distinct = {w for w in windows if w is not None}
    if len(distinct) > 1:
        raise _NoMatch
    return (["sliding_attention" if w else "full_attention" for w in windows], next(iter(distinct), None))


class _NoMatch(Exception):
    pass


ACT = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh"}


def _decoder(spec, family: str, architecture: str) -> dict | None:
    moe = family in ("mixtral", "olmoe", "qwen2_moe")
    pairs = _pairs(spec, ffns=("moe", "mlp") if family == "qwen2_moe" else ("moe",) if moe else ("mlp",))
    if pairs is None:
        return None
    attn, ffn = pairs[0][0].config, next((f for _, f in pairs if f.type == ("moe" if moe else "mlp")), pairs[0][1]).config
    config = _base(spec, family, architecture)
    config.update(_attention_keys(spec, attn), num_hidden_layers=len(pairs),
                  rms_norm_eps=float(spec.norm.config.get("eps", 1e-5)))
    types, window = _layer_types(spec, pairs)
    if family == "gemma2":
        config.update(layer_types=types, sliding_window=window or spec.model.max_seq_len,
                      query_pre_attn_scalar=config["head_dim"], attn_logit_softcapping=attn.get("logit_softcap"),
                      final_logit_softcapping=spec.model.logit_softcap, hidden_activation=ACT.get(ffn["activation"]),
                      intermediate_size=ffn["d_ff"], attention_bias=False)
        return config
    if family in ("mistral", "mixtral", "phi3"):
        if window is not None and not all(t == "sliding_attention" for t in types):
            raise _NoMatch
        config["sliding_window"] = window
    elif family in ("qwen2", "qwen2_moe"):
        config.update(layer_types=types, use_sliding_window=window is not None, sliding_window=window)
    if family == "llama":
        config.update(attention_bias=bool(attn.get("bias")), mlp_bias=False)
    if family == "phi3":  # Phi3Config's default token ids (32000) lie outside small vocabularies
        config.update(pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if family == "olmoe":
        config.update(attention_bias=bool(attn.get("bias")))
    if family == "qwen2_moe":
        config["qkv_bias"] = attn.get("bias") == "qkv"
    config["hidden_act"] = ACT.get(ffn.get("activation"))
    if not moe:
        config["intermediate_size"] = ffn["d_ff"]
        return config
    config.update(num_experts_per_tok=ffn["topk"], router_aux_loss_coef=ffn["aux_loss_scale"])
    if family == "mixtral":
        config.update(num_local_experts=ffn["n_experts"], intermediate_size=ffn["d_ff"])
    else:
        config.update(num_experts=ffn["n_experts"], norm_topk_prob=ffn["renormalize"])
    if family == "olmoe":
        config["intermediate_size"] = ffn["d_ff"]
    if family == "qwen2_moe":
        dense = [i for i, (_, f) in enumerate(pairs) if f.type == "mlp"]
        config.update(moe_intermediate_size=ffn["d_ff"], mlp_only_layers=dense,
                      intermediate_size=pairs[dense[0]][1].config["d_ff"] if dense else ffn["d_ff"] * 4,
                      shared_expert_intermediate_size=(ffn.get("shared_d_ff") or ffn["d_ff"])
                      if ffn.get("n_shared_experts") else 0)
    return config


def _gpt2(spec) -> dict | None:
    pairs = _pairs(spec)
    if pairs is None:
        return None
    m, (attn, mlp) = spec.model, (pairs[0][0].config, pairs[0][1].config)
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}.get(mlp["activation"])
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": m.vocab_size,
            "n_positions": m.max_seq_len, "n_embd": m.d_model, "n_layer": len(pairs), "n_head": attn["n_heads"],
            "n_inner": mlp["d_ff"], "activation_function": act, "layer_norm_epsilon": float(spec.norm.config["eps"]),
            "tie_word_embeddings": m.tie_embeddings, "dtype": m.dtype}


def _ssm(spec, family: str) -> dict | None:
    members = _members(spec)
    kind = "mamba2" if family == "mamba2" else "mamba"
    if members is None or any(x.type != kind for x in members):
        return None
    c, m = members[0].config, spec.model
    config = {"model_type": family, "architectures": [{"mamba": "MambaForCausalLM", "falcon_mamba":
              "FalconMambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}[family]],
              "vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": len(members),
              "max_position_embeddings": m.max_seq_len, "tie_word_embeddings": m.tie_embeddings, "dtype": m.dtype,
              "layer_norm_epsilon": float(spec.norm.config.get("eps", 1e-5)), "state_size": c["d_state"],
              "conv_kernel": c["d_conv"], "expand": c["expand"], "use_conv_bias": c["conv_bias"],
              "use_bias": c["bias"], "hidden_act": "silu", "time_step_min": c["dt_min"], "time_step_max": c["dt_max"],
              "time_step_floor": c["dt_init_floor"]}
    if kind == "mamba":
        config.update(intermediate_size=int(c["expand"] * m.d_model), time_step_rank=c["dt_rank"],
                      time_step_scale=c["dt_scale"], time_step_init_scheme=c["dt_init"])
        if family == "falcon_mamba":
            config["mixer_rms_eps"] = c["inner_norm_eps"]
        return config
    inner = int(c["expand"] * m.d_model)
    if c["norm_eps"] != config["layer_norm_epsilon"]:
        raise _NoMatch
    config.update(num_heads=inner // c["head_dim"], head_dim=c["head_dim"], n_groups=c["n_groups"],
                  chunk_size=c["chunk_size"], time_step_limit=list(c["dt_limit"] or (0.0, float("inf"))))
    return config


def _period(flags: list[bool]) -> tuple[int, int] | None:
    """(period, offset) such that flags[i] == (i % period == offset), if any."""
    n = len(flags)
    for period in range(1, n + 1):
        for offset in range(period):
            if all(f == (i % period == offset) for i, f in enumerate(flags)):
                return period, offset
    return None


def _jamba(spec) -> dict | None:
    pairs = _pairs(spec, mixers=("mamba", "attention"), ffns=("mlp", "moe"))
    if pairs is None:
        return None
    attn = next((a.config for a, _ in pairs if a.type == "attention"), None)
    mamba = next((a.config for a, _ in pairs if a.type == "mamba"), None)
    moe = next((f.config for _, f in pairs if f.type == "moe"), None)
    ffn = moe or pairs[0][1].config
    attn_at = _period([a.type == "attention" for a, _ in pairs])
    experts_at = _period([f.type == "moe" for _, f in pairs]) if moe else (2, 1)
    if attn_at is None or experts_at is None or attn is None or mamba is None:
        raise _NoMatch
    config = _base(spec, "jamba", "JambaForCausalLM")
    config.update(num_hidden_layers=len(pairs), num_attention_heads=attn["n_heads"],
                  num_key_value_heads=attn.get("n_kv_heads") or attn["n_heads"], hidden_act="silu",
                  rms_norm_eps=float(spec.norm.config.get("eps", 1e-6)), intermediate_size=ffn["d_ff"],
                  attn_layer_period=attn_at[0], attn_layer_offset=attn_at[1], expert_layer_period=experts_at[0],
                  expert_layer_offset=experts_at[1], num_experts=moe["n_experts"] if moe else 1,
                  num_experts_per_tok=moe["topk"] if moe else 1,
                  router_aux_loss_coef=moe["aux_loss_scale"] if moe else 0.001,
                  mamba_d_state=mamba["d_state"], mamba_d_conv=mamba["d_conv"], mamba_expand=mamba["expand"],
                  mamba_dt_rank=mamba["dt_rank"], mamba_conv_bias=mamba["conv_bias"], mamba_proj_bias=mamba["bias"],
                  use_mamba_kernels=False)
    return config


def _bamba(spec) -> dict | None:
    pairs = _pairs(spec, mixers=("mamba2", "attention"), ffns=("mlp",))
    if pairs is None:
        return None
    attn = next((a.config for a, _ in pairs if a.type == "attention"), None)
    ssm = next((a.config for a, _ in pairs if a.type == "mamba2"), None)
    if attn is None or ssm is None:
        raise _NoMatch
    config = _base(spec, "bamba", "BambaForCausalLM")
    keys = _attention_keys(spec, attn)
    keys.pop("head_dim")
    inner = int(ssm["expand"] * spec.model.d_model)
    config.update(keys, num_hidden_layers=len(pairs), hidden_act=ACT.get(pairs[0][1].config["activation"]),
                  intermediate_size=pairs[0][1].config["d_ff"], rms_norm_eps=float(spec.norm.config.get("eps", 1e-5)),
                  attn_layer_indices=[i for i, (a, _) in enumerate(pairs) if a.type == "attention"],
                  attention_bias=bool(attn.get("bias")), mlp_bias=False, mamba_n_heads=inner // ssm["head_dim"],
                  mamba_d_head=ssm["head_dim"], mamba_n_groups=ssm["n_groups"], mamba_d_state=ssm["d_state"],
                  mamba_d_conv=ssm["d_conv"], mamba_expand=ssm["expand"], mamba_chunk_size=ssm["chunk_size"],
                  mamba_conv_bias=ssm["conv_bias"], mamba_proj_bias=ssm["bias"],
                  time_step_limit=list(ssm["dt_limit"] or (0.0, float("inf"))))
    return config


def _zamba2(spec) -> dict | None:
    """Mamba2 layers, each hybrid one preceded by a use of a shared block (feed_block): block b
    at every use u with u % num_mem_blocks == b."""
    members = _members(spec)
    if members is None or not members or members[-1].type != "mamba2":
        return None
    types, blocks, uses = [], [], []
    for i, m in enumerate(members):
        if m.type == "feed_block":
            if members[i + 1].type != "mamba2":
                raise _NoMatch
            uses.append(m.name)
            if m.name not in blocks:
                blocks.append(m.name)
        elif m.type == "mamba2":
            types.append("hybrid" if i and members[i - 1].type == "feed_block" else "mamba")
        else:
            return None
    if not blocks or any(u != blocks[k % len(blocks)] for k, u in enumerate(uses)):
        raise _NoMatch
    ssm = next(m.config for m in members if m.type == "mamba2")
    block = next(m.config for m in members if m.type == "feed_block")
    m = spec.model
    heads = block["n_heads"]
    config = _base(spec, "zamba2", "Zamba2ForCausalLM")
    config.update(num_hidden_layers=len(types), layers_block_type=types, mamba_d_state=ssm["d_state"],
                  mamba_d_conv=ssm["d_conv"], mamba_expand=ssm["expand"], mamba_ngroups=ssm["n_groups"],
                  n_mamba_heads=int(ssm["expand"] * m.d_model) // ssm["head_dim"], chunk_size=ssm["chunk_size"],
                  use_conv_bias=ssm["conv_bias"], add_bias_linear=False, intermediate_size=block["d_ff"],
                  hidden_act={"geglu": "gelu", "swiglu": "silu"}[block["activation"]], num_attention_heads=heads,
                  num_key_value_heads=block.get("n_kv_heads") or heads, num_mem_blocks=len(blocks),
                  use_shared_attention_adapter="q" in block["lora_targets"], adapter_rank=block["lora_rank"],
                  use_mem_rope=block["rope"], rms_norm_eps=float(spec.norm.config.get("eps", 1e-5)),
                  time_step_min=ssm["dt_min"], time_step_max=ssm["dt_max"], time_step_floor=ssm["dt_init_floor"],
                  use_long_context=False, use_mamba_kernels=False)
    if block["rope"]:
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": float(block["rope_theta"])}
    return config


WRITERS = {
    "llama": lambda s: _decoder(s, "llama", "LlamaForCausalLM"),
    "mistral": lambda s: _decoder(s, "mistral", "MistralForCausalLM"),
    "qwen2": lambda s: _decoder(s, "qwen2", "Qwen2ForCausalLM"),
    "gemma2": lambda s: _decoder(s, "gemma2", "Gemma2ForCausalLM"),
    "gpt2": _gpt2,
    "mixtral": lambda s: _decoder(s, "mixtral", "MixtralForCausalLM"),
    "olmoe": lambda s: _decoder(s, "olmoe", "OlmoeForCausalLM"),
    "qwen2_moe": lambda s: _decoder(s, "qwen2_moe", "Qwen2MoeForCausalLM"),
    "mamba": lambda s: _ssm(s, "mamba"),
    "falcon_mamba": lambda s: _ssm(s, "falcon_mamba"),
    "mamba2": lambda s: _ssm(s, "mamba2"),
    "phi3": lambda s: _decoder(s, "phi3", "Phi3ForCausalLM"),
    "jamba": _jamba,
    "bamba": _bamba,
    "zamba2": _zamba2,
}


def config_from_spec(spec, family: str) -> dict | None:
    """`family`'s config.json for the spec, or None when the spec is not of that family (the
    config, imported back, would be another model)."""
    from ..spec import loads
    from .families import spec_text
    try:
        config = WRITERS[family](spec)
    except (_NoMatch, KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if config is None:
        return None
    try:
        back = loads(spec_text(spec_from_config(json.loads(_dumps(config))), family), "<export>")
    except Exception:  # HFImportError or SpecError: the family cannot say this
        return None
    return config if canonical(back) == canonical(spec) else None


def family_of(spec, family: str | None = None) -> tuple[str, dict]:
    """The first family (or `family`) whose config reproduces the spec, and that config."""
    if family is not None and family not in WRITERS:
        raise HFImportError(f"export-hf writes the families {', '.join(WRITERS)}; not {family!r}")
    for name in [family] if family else WRITERS:
        config = config_from_spec(spec, name)
        if config is not None:
            return name, config
    which = f"the {family} family" if family else "any transformers family archspec exports (" + ", ".join(WRITERS) + ")"
    raise HFImportError(f"spec {spec.model.name!r} is not {which}: a config of it would import back as another "
                        f"model; {GENERIC}")


def _dumps(config: dict) -> str:
    # JSON has no infinity: transformers 5 writes it as {"__float__": "Infinity"}
    def fix(v):
        if isinstance(v, float) and v == float("inf"):
            return {"__float__": "Infinity"}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return json.dumps({k: fix(v) for k, v in config.items()}, indent=2) + "\n"


def export_hf(model, out: str | os.PathLike, family: str | None = None) -> Path:
    """Write `model` (an archspec build with its spec) as `family`'s transformers checkpoint:
    out/config.json and out/model.safetensors (a tied head is not stored: transformers ties
    it on load). `out` must not exist or be empty."""
    from safetensors.torch import save_file

    from .weights import export_tensors, mapping
    name, config = family_of(model.spec, family)
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HFImportError(f"{target}: exists and is not an empty directory; export-hf writes a new one")
    tensors = export_tensors(model, mapping(name, model))
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in tensors.items()}, str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "config.json").write_text(_dumps(config), encoding="utf-8")
    return target
