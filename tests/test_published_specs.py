"""Issue 19: the published models' specs and the options they need, against transformers.

* Each shipped spec's total equals the published count and transformers' own count of the model
  built from the published config on the meta device (hyperparameters written here: no download).
* Each option follows the published model's math: a tiny random model of the family that uses it,
  built by transformers, and the archspec spec of the same shape, with transformers' weights
  copied in by name, give the same logits (float32).

transformers is an optional extra (`hf`): these tests skip without it; the rest of the suite
checks the options' accounting and decoding (tests/test_contract.py, tests/test_features19.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import archspec
from archspec.accounting import account

transformers = pytest.importorskip("transformers")

SPECS = Path(__file__).resolve().parent.parent / "specs"

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

# spec file -> (transformers model_type, the published config's hyperparameters, published total)
PUBLISHED = {
    "qwen2.5-0.5b.yaml": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                        max_position_embeddings=32768, rope_theta=1000000.0,
                                        tie_word_embeddings=True), 494_032_768),
    "olmoe-1b-7b.yaml": ("olmoe", dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024,
                                       num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
                                       num_experts=64, num_experts_per_tok=8, max_position_embeddings=4096,
                                       tie_word_embeddings=False), 6_919_161_856),
    "gemma-2-2b.yaml": ("gemma2", dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                                       num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                                       head_dim=256, max_position_embeddings=8192, tie_word_embeddings=True),
                        2_614_341_888),
    "gpt2.yaml": ("gpt2", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
                  124_439_808),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_total_equals_transformers_count(name):
    model_type, hyper, published = PUBLISHED[name]
    cfg = transformers.AutoConfig.for_model(model_type, **hyper)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(cfg)
    theirs = sum(p.numel() for p in hf.parameters())  # tied weights once
    ours = account(archspec.load(SPECS / name)).total().params
    assert ours == theirs == published


# --- the options' math, against transformers' modules on tiny random weights -----------------

def _tiny_hf(model_type: str, **hyper):
    """A float32 transformers model with every weight perturbed (so norms and biases matter)."""
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(model_type, **hyper)
    cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _copy_into(ours, theirs, rename) -> None:
    """Copy each of `theirs`' parameters into `ours`: rename(name, tensor) gives the archspec
    (name, tensor) pairs it becomes (none for a tied copy). Every archspec parameter must be
    written exactly once, with its shape."""
    target = dict(ours.named_parameters())
    written = set()
    with torch.no_grad():
        for name, tensor in theirs.state_dict().items():
            for key, value in rename(name, tensor):
                if key == "lm_head.weight" and ours.tied:  # their tied head: the embedding itself
                    assert torch.equal(value, theirs.get_input_embeddings().weight)
                    continue
                assert key in target, (name, key)
                assert key not in written, key
                assert target[key].shape == value.shape, (key, target[key].shape, value.shape)
                target[key].copy_(value)
                written.add(key)
    assert written == set(target), set(target) - written


def _llama_style(attn: str = "attn", ffn: str = "mlp", sandwich: bool = False):
    """The renaming of Llama-family checkpoints: layer i's attention is sublayer 2i, its
    feed-forward 2i + 1. With `sandwich` (Gemma-2) post_attention_layernorm is sublayer 2i's
    post norm and pre/post_feedforward_layernorm are 2i + 1's norms; otherwise
    post_attention_layernorm is the feed-forward's (pre-)norm."""
    def rename(name: str, t: torch.Tensor):
        if name == "model.embed_tokens.weight":
            return [("embedding.weight", t)]
        if name.startswith("model.norm."):
            return [("final_norm." + name.split(".")[-1], t)]
        if name == "lm_head.weight":
            return [("lm_head.weight", t)]
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if m is None:
            return []  # buffers (rotary tables)
        i, rest = int(m[1]), m[2]
        a, f = f"sublayers.{2 * i}", f"sublayers.{2 * i + 1}"
        leaf = rest.split(".")[-1]
        if rest.startswith("self_attn."):
            return [(f"{a}.members.{attn}." + rest[len("self_attn."):], t)]
        if rest.startswith("input_layernorm."):
            return [(f"{a}.norm.{leaf}", t)]
        if rest.startswith("post_attention_layernorm."):
            return [(f"{a}.post_norm.{leaf}" if sandwich else f"{f}.norm.{leaf}", t)]
        if rest.startswith("pre_feedforward_layernorm."):
            return [(f"{f}.norm.{leaf}", t)]
        if rest.startswith("post_feedforward_layernorm."):
            return [(f"{f}.post_norm.{leaf}", t)]
        if rest.startswith("mlp."):
            return _ffn(f"{f}.members.{ffn}.", rest[len("mlp."):], t)
        raise AssertionError(f"unmapped {name}")
    return rename


def _ffn(prefix: str, rest: str, t: torch.Tensor):
    """An MLP's names are archspec's; an MoE's router is `gate`, its experts hold gate and up
    fused ([E, 2f, d], gate first), its shared expert is `shared_expert`."""
    if rest == "gate.weight":
        return [(prefix + "router.weight", t)]
    if rest == "experts.gate_up_proj":
        gate, up = t.chunk(2, dim=1)
        return [(prefix + "experts.gate_proj", gate), (prefix + "experts.up_proj", up)]
    if rest == "experts.down_proj":
        return [(prefix + "experts.down_proj", t)]
    if rest.startswith("shared_expert."):
        return [(prefix + "shared." + rest[len("shared_expert."):], t)]
    return [(prefix + rest, t)]


def _same_logits(spec_text: str, hf, rename, vocab: int = 97, t: int = 12) -> None:
    spec = archspec.loads(spec_text)
    ours = archspec.build(spec, seed=0).eval()
    _copy_into(ours, hf, rename)
    tokens = torch.randint(0, vocab, (2, t), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours(tokens).logits
    # float32: the same math in another order of operations (eager vs SDPA attention, fused vs
    # split projections) differs by ~1e-6 on logits of size ~1; a wrong option (a missing
    # bias, norm or cap) moves them by 1e-2 or more
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


TINY = "vocab_size: 97, d_model: 32, max_seq_len: 64, dtype: float32"


def test_qkv_bias_matches_qwen2():
    hf = _tiny_hf("qwen2", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    assert hf.model.layers[0].self_attn.o_proj.bias is None and hf.model.layers[0].self_attn.q_proj.bias is not None
    _same_logits(f"""
model: {{{TINY}, tie_embeddings: true, norm: {{type: rmsnorm, eps: 1e-6}}}}
components:
  attn: {{type: attention, n_heads: 4, n_kv_heads: 2, rope_theta: 1000000, bias: qkv}}
  mlp: {{type: mlp, d_ff: 64}}
layout: (attn mlp) x 2
""", hf, _llama_style())


def test_projection_qk_norm_and_unrenormalised_moe_match_olmoe():
    hf = _tiny_hf("olmoe", vocab_size=97, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, num_experts=4, num_experts_per_tok=2,
                  max_position_embeddings=64, tie_word_embeddings=False)
    _same_logits(f"""
model: {{{TINY}, tie_embeddings: false}}
components:
  attn: {{type: attention, n_heads: 4, qk_norm: projection}}
  moe: {{type: moe, n_experts: 4, topk: 2, d_ff: 16, renormalize: false}}
layout: (attn moe) x 2
""", hf, _llama_style(ffn="moe"))


def test_per_head_qk_norm_matches_qwen3():
    hf = _tiny_hf("qwen3", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
    _same_logits(f"""
model: {{{TINY}, tie_embeddings: true, norm: {{type: rmsnorm, eps: 1e-6}}}}
components:
  attn: {{type: attention, n_heads: 4, n_kv_heads: 2, head_dim: 16, qk_norm: head, qk_norm_eps: 1e-6}}
  mlp: {{type: mlp, d_ff: 64}}
layout: (attn mlp) x 2
""", hf, _llama_style())


def test_shared_expert_gate_matches_qwen2_moe():
    hf = _tiny_hf("qwen2_moe", vocab_size=97, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                  shared_expert_intermediate_size=48, num_experts=4, num_experts_per_tok=2,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False)
    _same_logits(f"""
model: {{{TINY}, tie_embeddings: false, norm: {{type: rmsnorm, eps: 1e-6}}}}
components:
  attn: {{type: attention, n_heads: 4, n_kv_heads: 2, bias: qkv}}
  moe: {{type: moe, n_experts: 4, topk: 2, d_ff: 16, renormalize: false, n_shared_experts: 1,
         shared_d_ff: 48, shared_expert_gate: true}}
layout: (attn moe) x 2
""", hf, _llama_style(ffn="moe"))


def test_gemma2_options_match_gemma2():
    """Sandwich norms, (1 + w) RMSNorms, the embedding scale, tanh GeGLU, attention and final
    soft-caps, and alternating sliding-window layers, at once."""
    hf = _tiny_hf("gemma2", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                  sliding_window=4, max_position_embeddings=64, attn_logit_softcapping=2.0,
                  final_logit_softcapping=3.0, tie_word_embeddings=True)
    # caps small enough that tanh bends the scores and logits of these weights
    _same_logits(f"""
model: {{{TINY}, tie_embeddings: true, scale_embeddings: true, logit_softcap: 3.0, post_norm: true,
         norm: {{type: rmsnorm, eps: 1e-6, unit_offset: true}}}}
components:
  local: {{type: attention, n_heads: 4, n_kv_heads: 2, head_dim: 16, window: 4, logit_softcap: 2.0}}
  global: {{type: attention, n_heads: 4, n_kv_heads: 2, head_dim: 16, logit_softcap: 2.0}}
  mlp: {{type: mlp, activation: geglu_tanh, d_ff: 64}}
layout: (local mlp global mlp) x 2
""", hf, lambda n, t: _llama_style(attn="local" if _layer(n) % 2 == 0 else "global", sandwich=True)(n, t))


def _layer(name: str) -> int:
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return int(m[1]) if m else 0


def test_learned_positions_and_tanh_gelu_match_gpt2():
    hf = _tiny_hf("gpt2", vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)

    def rename(name: str, t: torch.Tensor):
        fixed = {"transformer.wte.weight": "embedding.weight", "transformer.wpe.weight": "embedding.position_weight",
                 "transformer.ln_f.weight": "final_norm.weight", "transformer.ln_f.bias": "final_norm.bias"}
        if name in fixed:
            return [(fixed[name], t)]
        m = re.fullmatch(r"transformer\.h\.(\d+)\.(\w+)\.(\w+)\.?(\w*)", name)
        if m is None:
            return []  # the tied lm_head, attention mask buffers
        i, part = int(m[1]), m[2]
        a, f = f"sublayers.{2 * i}", f"sublayers.{2 * i + 1}"
        if part in ("ln_1", "ln_2"):
            return [(f"{a if part == 'ln_1' else f}.norm.{m[3]}", t)]
        proj, kind = m[3], m[4]
        w = t.T if kind == "weight" else t  # Conv1D stores [in, out]
        if (part, proj) == ("attn", "c_attn"):
            q, k, v = w.chunk(3, dim=0)
            return [(f"{a}.members.attn.{p}_proj.{kind}", x) for p, x in zip("qkv", (q, k, v))]
        names = {("attn", "c_proj"): f"{a}.members.attn.o_proj", ("mlp", "c_fc"): f"{f}.members.mlp.up_proj",
                 ("mlp", "c_proj"): f"{f}.members.mlp.down_proj"}
        return [(f"{names[part, proj]}.{kind}", w.contiguous())]

    _same_logits(f"""
model: {{{TINY}, tie_embeddings: true, learned_positions: true, norm: {{type: layernorm, eps: 1e-5}}}}
components:
  attn: {{type: attention, n_heads: 4, rope: false, bias: true}}
  mlp: {{type: mlp, activation: gelu_tanh, d_ff: 128, bias: true}}
layout: (attn mlp) x 2
""", hf, rename)


def test_partial_rotary_matches_stablelm():
    hf = _tiny_hf("stablelm", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                  partial_rotary_factor=0.25, use_qkv_bias=True, tie_word_embeddings=False)
    assert hf.model.layers[0].self_attn.rotary_ndims == 2  # a quarter of head_dim 8
    _same_logits(f"""
model: {{{TINY}, tie_embeddings: false, norm: {{type: layernorm, eps: 1e-5}}}}
components:
  attn: {{type: attention, n_heads: 4, rope_dims: 2, bias: qkv}}
  mlp: {{type: mlp, d_ff: 64}}
layout: (attn mlp) x 2
""", hf, _llama_style())


def test_weightless_inner_norms_match_falcon_mamba():
    hf = _tiny_hf("falcon_mamba", vocab_size=97, hidden_size=32, state_size=8, num_hidden_layers=2,
                  expand=2, conv_kernel=4, time_step_rank=4, use_conv_bias=True, use_bias=False,
                  mixer_rms_eps=1e-6, layer_norm_epsilon=1e-5, tie_word_embeddings=False)

    def rename(name: str, t: torch.Tensor):
        fixed = {"backbone.embeddings.weight": "embedding.weight", "backbone.norm_f.weight": "final_norm.weight",
                 "lm_head.weight": "lm_head.weight"}
        if name in fixed:
            return [(fixed[name], t)]
        m = re.fullmatch(r"backbone\.layers\.(\d+)\.(norm|mixer)\.(.+)", name)
        if m is None or m[3].endswith("layernorm.weight"):
            return []
        return [(f"sublayers.{m[1]}.norm.{m[3]}" if m[2] == "norm" else f"sublayers.{m[1]}.members.ssm.{m[3]}", t)]

    _same_logits(f"""
model: {{{TINY}, tie_embeddings: false, norm: {{type: rmsnorm, eps: 1e-5}}}}
components:
  ssm: {{type: mamba, d_state: 8, d_conv: 4, expand: 2, dt_rank: 4, inner_norms: true,
        inner_norm_weights: false, inner_norm_eps: 1e-6}}
layout: ssm x 2
""", hf, rename)
