"""Issue 20, import: a transformers checkpoint of each family -> `archspec import-hf` (the spec)
and `from_hf` (the weights) -> the same logits and the same parameter count.

No downloads: each test builds a tiny random model of the family in-process from its config
class (float32, every weight perturbed so that norms and biases matter), saves it with
save_pretrained into a temporary directory, and imports that directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import archspec

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from archspec.hf import HFImportError, from_hf, spec_from_config, spec_text  # noqa: E402
from test_published_specs import _tiny_hf  # noqa: E402  (one tiny random transformers model builder)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SPECS = Path(__file__).resolve().parent.parent / "specs"
V = 97
ATTN = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)
FAMILIES = {
    "llama": dict(ATTN, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "llama-tied-headdim": dict(ATTN, model_type="llama", head_dim=16, tie_word_embeddings=True, attention_bias=True),
    "mistral": dict(ATTN, sliding_window=5),
    "qwen2": dict(ATTN, tie_word_embeddings=True),
    "qwen2-sliding": dict(ATTN, model_type="qwen2", num_hidden_layers=4, use_sliding_window=True, sliding_window=5,
                          layer_types=["sliding_attention", "full_attention"] * 2),
    "phi3": dict(ATTN, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "phi3-sliding": dict(ATTN, model_type="phi3", pad_token_id=0, bos_token_id=1, eos_token_id=2, sliding_window=5),
    "phi3-partial": dict(ATTN, model_type="phi3", pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    "gemma2": dict(ATTN, num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=16, sliding_window=5,
                   attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
    "gpt2": dict(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4),
    "mixtral": dict(ATTN, num_local_experts=4, num_experts_per_tok=2, intermediate_size=16),
    "qwen2_moe-sliding-dense": dict(ATTN, model_type="qwen2_moe", num_hidden_layers=4, moe_intermediate_size=16,
                                    shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2,
                                    norm_topk_prob=True, use_sliding_window=True, sliding_window=5, max_window_layers=3,
                                    mlp_only_layers=[2]),
    "qwen2_moe": dict(ATTN, moe_intermediate_size=16, shared_expert_intermediate_size=48, num_experts=4,
                      num_experts_per_tok=2),
    "olmoe": dict(ATTN, intermediate_size=16, num_experts=4, num_experts_per_tok=2, eos_token_id=1, pad_token_id=0),
    "mamba": dict(vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=2, time_step_rank=4,
                  pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "falcon_mamba": dict(vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=2, time_step_rank=4,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "mamba2": dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, n_groups=2,
                   state_size=8, chunk_size=8, pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "jamba": dict(ATTN, num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                  expert_layer_offset=0, num_experts=4, num_experts_per_tok=2, mamba_d_state=8, mamba_dt_rank=4,
                  use_mamba_kernels=False),
    "bamba": dict(ATTN, num_hidden_layers=3, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16,
                  mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=8,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    "zamba2": dict(vocab_size=V, hidden_size=32, num_hidden_layers=5, max_position_embeddings=64,
                   layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid"], intermediate_size=64,
                   num_attention_heads=4, num_key_value_heads=4, mamba_d_state=8, n_mamba_heads=4, mamba_ngroups=1,
                   num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=4, use_mem_rope=True,
                   chunk_size=8, use_mamba_kernels=False),
}


def _tiny(name: str):
    hyper = dict(FAMILIES[name])
    return _tiny_hf(hyper.pop("model_type", name), **hyper)


def _saved(name: str, tmp_path):
    hf = _tiny(name)
    hf.save_pretrained(tmp_path)
    return hf


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_import_gives_transformers_logits(name, tmp_path):
    hf = _saved(name, tmp_path)
    model, spec = from_hf(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())
    assert archspec.account(spec).total().params == sum(p.numel() for p in hf.parameters())
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    # float32: the same math in another order (eager vs SDPA attention, fused vs split
    # projections, the SSM scans) differs by ~1e-6 on logits of size ~1; a misplaced weight,
    # norm or option moves them by 1e-2 or more
    err = (_logits(model, tokens) - _logits(hf, tokens)).abs().max().item()
    assert err < 1e-4, err


def test_a_sharded_checkpoint_loads(tmp_path):
    hf = _tiny("llama")
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    model, _ = from_hf(tmp_path)
    tokens = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(2))
    assert (_logits(model, tokens) - _logits(hf, tokens)).abs().max().item() < 1e-4  # as above


# --- the published configs import as the shipped specs -------------------------------------------

def _same_spec(config: dict, spec_file: str) -> None:
    from archspec.hf.export import canonical
    from archspec.hf.families import spec_text
    imported = archspec.loads(spec_text(spec_from_config(config), config["model_type"]))
    assert canonical(imported) == canonical(archspec.load(SPECS / spec_file))


PUBLISHED = {  # the published config.json's values (no download): model_type, keys, shipped spec
    "llama-2-7b.yaml": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                                      rms_norm_eps=1e-5, tie_word_embeddings=False, dtype="bfloat16")),
    "qwen2.5-0.5b.yaml": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                        dtype="bfloat16")),
    "olmoe-1b-7b.yaml": ("olmoe", dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                                       num_attention_heads=16, num_key_value_heads=16, num_experts=64,
                                       num_experts_per_tok=8, max_position_embeddings=4096, rms_norm_eps=1e-5,
                                       tie_word_embeddings=False, dtype="bfloat16")),
    "gemma-2-2b.yaml": ("gemma2", dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                       num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                                       max_position_embeddings=8192, tie_word_embeddings=True, dtype="bfloat16")),
    "gpt2.yaml": ("gpt2", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)),
    # the spec keeps archspec's aux-loss coefficient (0.01; Jamba's is 0.001): training only
    "jamba-v0.1.yaml": ("jamba", dict(dtype="bfloat16", router_aux_loss_coef=0.01)),
    "mamba-130m.yaml": ("mamba", dict(vocab_size=50280, hidden_size=768, num_hidden_layers=24, state_size=16,
                                      max_position_embeddings=2048)),
}


@pytest.mark.parametrize("spec_file", sorted(PUBLISHED))
def test_published_configs_import_as_the_shipped_specs(spec_file):
    """The import of each published config (transformers' own to_dict, every key it writes)
    is the shipped spec, setting for setting (archspec.hf.export.canonical: all but names,
    backends and initialisation)."""
    model_type, hyper = PUBLISHED[spec_file]
    config = transformers.AutoConfig.for_model(model_type, **hyper).to_dict()
    _same_spec(config, spec_file)


# --- what cannot be imported is an error naming it -----------------------------------------------

def _llama_config(**changes) -> dict:
    config = transformers.AutoConfig.for_model("llama", **FAMILIES["llama"]).to_dict()
    config.update(changes)
    return config


@pytest.mark.parametrize("changes, words", [
    (dict(model_type="t5"), "model_type 't5' is not a family archspec imports"),
    (dict(model_type=None), "model_type None is not a family"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}),
     "rope_parameters.rope_type = 'llama3' is not expressible"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling = 'linear' is not expressible"),
    (dict(hidden_act="relu"), "hidden_act = 'relu' is not expressible"),
    (dict(mlp_bias=True), "mlp_bias = True is not expressible"),
    (dict(pretraining_tp=2), "pretraining_tp = 2"),
    (dict(some_new_switch=True), "unknown key(s) some_new_switch = True"),
    (dict(vocab_size=None), "'vocab_size' is missing"),
    (dict(quantization_config={"quant_method": "gptq", "bits": 4}), "quantization_config (quant_method gptq)"),
])
def test_what_archspec_cannot_express_is_an_error_naming_it(changes, words):
    with pytest.raises(HFImportError) as e:
        spec_from_config(_llama_config(**changes))
    assert words in str(e.value)


@pytest.mark.parametrize("model_type, hyper, words", [
    ("gemma2", dict(head_dim=16, query_pre_attn_scalar=8), "query_pre_attn_scalar = 8"),
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx = True"),
    ("olmoe", dict(clip_qkv=8.0), "clip_qkv = 8.0"),
    ("mamba2", dict(num_heads=3), "num_heads = 3"),
    ("zamba2", dict(add_bias_linear=True), "add_bias_linear = True"),
    ("mixtral", dict(num_experts_per_tok=1), "num_experts_per_tok = 1"),
    ("llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "partial_rotary_factor = 0.5"),
])
def test_a_family_option_archspec_lacks_is_an_error(model_type, hyper, words):
    config = transformers.AutoConfig.for_model(model_type).to_dict()
    config.update(hyper)
    with pytest.raises(HFImportError, match="not expressible") as e:
        spec_from_config(config)
    assert words in str(e.value)


def _rewrite(directory, edit) -> None:
    """Load a saved checkpoint's tensors, edit the dict, write it back."""
    from safetensors.torch import load_file, save_file
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_a_tensor_of_the_wrong_shape_names_it_and_both_shapes(tmp_path):
    _saved("llama", tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(48, 32)}))
    with pytest.raises(HFImportError, match=r"model\.layers\.1\.mlp\.up_proj\.weight has shape \[48, 32\] but .* "
                                            r"needs \[64, 32\]"):
        from_hf(tmp_path)


def test_a_fused_tensor_of_the_wrong_size_is_refused(tmp_path):
    _saved("phi3", tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.0.self_attn.qkv_proj.weight": torch.zeros(60, 32)}))
    with pytest.raises(HFImportError, match=r"qkv_proj\.weight has shape \[60, 32\] .* needs \[64, 32\]"):
        from_hf(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    _saved("mixtral", tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.block_sparse_moe.experts.3.w2.weight"))
    with pytest.raises(HFImportError, match=r"lacks 1 tensor\(s\) .*: model\.layers\.1\.block_sparse_moe\.experts\.3\.w2"):
        from_hf(tmp_path)
    _saved("mixtral", tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(3)}))
    with pytest.raises(HFImportError, match=r"no place for: model\.layers\.0\.extra\.weight"):
        from_hf(tmp_path)


def test_a_tied_head_is_ignored_only_when_it_is_the_embedding(tmp_path):
    hf = _saved("qwen2", tmp_path)  # tied: transformers saves no lm_head
    emb = hf.get_input_embeddings().weight.detach().clone()
    _rewrite(tmp_path, lambda t: t.update({"lm_head.weight": emb}))
    from_hf(tmp_path)  # a kept copy of the embedding: fine
    _rewrite(tmp_path, lambda t: t.update({"lm_head.weight": emb + 1}))
    with pytest.raises(HFImportError, match="lm_head.weight differs from model.embed_tokens.weight"):
        from_hf(tmp_path)


def test_pickled_weights_are_not_loaded(tmp_path):
    _saved("llama", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(HFImportError, match="only pytorch_model.bin: pickled weights"):
        from_hf(tmp_path)


# --- the CLI ------------------------------------------------------------------------------------

def test_cli_import_convert_report_and_generate(tmp_path, capsys):
    from archspec.cli import main
    hyper = dict(FAMILIES["llama"], vocab_size=300)  # byte-level generation needs ids 0-255
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hyper)).eval()
    hf.save_pretrained(tmp_path / "llama")
    assert main(["import-hf", str(tmp_path / "llama"), "-o", str(tmp_path / "llama.yaml")]) == 0
    assert main(["validate", str(tmp_path / "llama.yaml")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "llama.yaml"), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["params"] == sum(p.numel() for p in hf.parameters())
    assert main(["convert", str(tmp_path / "llama"), "-o", str(tmp_path / "saved")]) == 0
    model, spec = archspec.load_saved(tmp_path / "saved")
    assert spec.model.name == "llama"
    tokens = torch.tensor([list(b"hello")])
    assert (_logits(model, tokens) - _logits(hf, tokens)).abs().max().item() < 1e-4  # as above
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "saved"), "--prompt", "hi", "--max-new-tokens", "4"]) == 0
    ours = archspec.generate(model, [list(b"hi")], max_new_tokens=4)
    theirs = hf.generate(torch.tensor([list(b"hi")]), max_new_tokens=4, do_sample=False)[0, 2:].tolist()
    assert list(ours[0]) == theirs  # greedy: the same tokens as transformers' own generate


def test_cli_errors_exit_cleanly(tmp_path, capsys):
    from archspec.cli import main
    assert main(["import-hf", str(tmp_path / "missing")]) == 2
    (tmp_path / "config.json").write_text(json.dumps(_llama_config(rope_scaling={"rope_type": "yarn", "factor": 4.0})))
    assert main(["import-hf", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "rope_scaling = 'yarn' is not expressible" in err and "Traceback" not in err
    (tmp_path / "config.json").write_text(json.dumps(_llama_config(max_position_embeddings=10**12)))
    assert main(["import-hf", str(tmp_path)]) == 1  # archspec's own limits, located in the imported spec
    err = capsys.readouterr().err
    assert "<spec imported from" in err and "error at model.max_seq_len: must be <= 16,777,216" in err
    (tmp_path / "config.json").write_text("{not json")
    assert main(["import-hf", str(tmp_path / "config.json")]) == 1
    assert "not a readable JSON config" in capsys.readouterr().err


def test_import_hf_runs_without_torch(tmp_path):
    """`archspec import-hf` reads JSON and writes YAML: it runs in an interpreter that cannot
    import torch (tests/test_layering.py's), as validate and report do."""
    from test_layering import RUN_COMMAND, _run
    (tmp_path / "config.json").write_text(json.dumps(_llama_config()))
    result = _run("-c", RUN_COMMAND, "import-hf", str(tmp_path), "-o", str(tmp_path / "spec.yaml"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layout: (attn mlp) x 2" in (tmp_path / "spec.yaml").read_text()


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "olmoe", "jamba"])
def test_fused_experts_load_too(name, tmp_path):
    """transformers 5 holds experts fused in memory (experts.gate_up_proj [E, 2f, d], gate
    first; experts.down_proj [E, d, f]) and writes them per expert; a checkpoint of the
    in-memory state dict loads as well."""
    from safetensors.torch import save_file
    hf = _saved(name, tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight" or not hf.config.tie_word_embeddings}
    assert any(k.endswith("experts.gate_up_proj") for k in state)
    (tmp_path / "model.safetensors").unlink()
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, _ = from_hf(tmp_path)
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    assert (_logits(model, tokens) - _logits(hf, tokens)).abs().max().item() < 1e-4  # as above


@pytest.mark.parametrize("model_type, hyper, windows", [
    # transformers 4.x configs lack layer_types: each family's config class derives them
    ("qwen2", dict(num_hidden_layers=4, use_sliding_window=True, sliding_window=8, max_window_layers=2),
     [None, None, 8, 8]),
    ("qwen2", dict(num_hidden_layers=4, use_sliding_window=False, sliding_window=8), [None] * 4),
    ("qwen2_moe", dict(num_hidden_layers=4, use_sliding_window=True, sliding_window=8, max_window_layers=3),
     [8, None, 8, None]),
    ("qwen2_moe", dict(num_hidden_layers=4, use_sliding_window=False, sliding_window=0), [None] * 4),
    ("gemma2", dict(num_hidden_layers=4, sliding_window=8), [8, None, 8, None]),
    ("mistral", dict(num_hidden_layers=2, sliding_window=8), [8, 8]),
])
def test_windows_without_layer_types_follow_the_family(model_type, hyper, windows):
    config = transformers.AutoConfig.for_model(model_type, **dict(ATTN, **hyper)).to_dict()
    expected = config.pop("layer_types", None)
    spec = archspec.loads(spec_text(spec_from_config(config), model_type))
    got = [sub.members[0].config["window"] for sub in spec.sublayers[0::2]]
    assert got == windows
    if expected is not None:  # transformers' own derivation agrees
        assert [w is not None for w in windows] == [t == "sliding_attention" for t in expected]


def test_the_checkpoint_dtype_is_the_spec_dtype_unless_asked(tmp_path, capsys):
    from archspec.cli import main
    hf = _tiny("mamba").to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "hf")
    model, spec = from_hf(tmp_path / "hf")
    assert spec.model.dtype == "bfloat16" and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    params = dict(model.named_parameters())
    assert torch.equal(params["sublayers.1.members.ssm.A_log"], hf.backbone.layers[1].mixer.A_log)  # bit for bit
    assert main(["convert", str(tmp_path / "hf"), "-o", str(tmp_path / "f32"), "--dtype", "float32"]) == 0
    loaded, _ = archspec.load_saved(tmp_path / "f32")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "hf"), "-o", str(tmp_path / "f32")]) == 2  # exists: --overwrite
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "hf"), "-o", str(tmp_path / "f32"), "--overwrite"]) == 0


@pytest.mark.parametrize("name", ["mistral", "gemma2", "qwen2_moe", "mamba", "mamba2", "jamba", "zamba2"])
def test_greedy_generation_gives_transformers_tokens(name, tmp_path):
    """archspec's decoding (its state caches: sliding-window rings, SSM states) continues a
    prompt with the tokens transformers' own generate picks. Greedy argmax of logits that agree
    within 1e-4: a tie that close would flip a token, which these seeds do not hit."""
    hf = _saved(name, tmp_path)
    model, _ = from_hf(tmp_path)
    prompt = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(4))
    theirs = hf.generate(prompt, max_new_tokens=10, do_sample=False, min_new_tokens=10)[0, 6:].tolist()
    ours = archspec.generate(model, prompt.tolist(), max_new_tokens=10)
    assert list(ours[0]) == theirs


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_config_without_the_class_defaults_imports_the_same(name):
    """A hand-written (or old) config.json leaves keys out: transformers takes its config
    class's defaults (Mixtral's RoPE base 1e6, Phi-3's and OLMoE's eps 1e-5, ...), and so does
    the import."""
    hyper = dict(FAMILIES[name])
    model_type = hyper.pop("model_type", name)
    full = json.loads(transformers.AutoConfig.for_model(model_type, **hyper).to_json_string(use_diff=False))
    assert spec_from_config(dict(hyper, model_type=model_type)) == spec_from_config(full)


TINYLLAMA_4X = {  # a transformers 4.x config.json, as TinyLlama-1.1B's: top-level rope_theta, torch_dtype
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632,
    "max_position_embeddings": 2048, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 22,
    "num_key_value_heads": 4, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.35.0", "use_cache": True, "vocab_size": 32000}


def test_a_transformers_4_config_imports():
    spec = archspec.loads(spec_text(spec_from_config(TINYLLAMA_4X), "llama"))
    (attn,), (mlp,) = spec.sublayers[0].members, spec.sublayers[1].members
    assert (attn.config["n_heads"], attn.config["n_kv_heads"], attn.config["rope_theta"]) == (32, 4, 10000.0)
    assert mlp.config["d_ff"] == 5632 and spec.norm.config["eps"] == 1e-5 and spec.model.dtype == "bfloat16"
    config = transformers.LlamaConfig(**{k: v for k, v in TINYLLAMA_4X.items() if k != "transformers_version"})
    with torch.device("meta"):
        expected = sum(p.numel() for p in transformers.LlamaForCausalLM(config).parameters())
    assert archspec.account(spec).total().params == expected == 1_100_048_384
