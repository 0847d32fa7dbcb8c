"""Weight sharing across depths and Zamba2's shared block (feed_block; docs/spec.md, "Reusing
a symbol and sharing weights").

Zamba2-1.2B's total against transformers' own count of Zamba2ForCausalLM on the meta device,
built in-process from the published hyperparameters; a tiny transformers Zamba2 with its weights
copied into the archspec build of specs/zamba2-tiny.yaml gives the same logits; a shared block's
weights are one tensor, counted once, trained by every use, while its FLOPs count per use; and
every misuse is a located error.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archspec
from archspec.accounting import account
from archspec.costs import FlopConvention

from helpers import assert_located

SPECS = Path(__file__).resolve().parent.parent / "specs"

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _hf_config(**overrides):
    from transformers import Zamba2Config
    return Zamba2Config(**overrides)


# Zyphra/Zamba2-1.2B's config.json: 38 layers, hybrid every sixth from layer 5, one memory block
# with MLP adapters of rank 128, RoPE in the shared attention, tied embeddings
ZAMBA2_1_2B = dict(
    vocab_size=32000, hidden_size=2048, num_hidden_layers=38,
    layers_block_type=(["mamba"] * 5 + ["hybrid"]) * 6 + ["mamba"] * 2,
    mamba_d_state=128, mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1, n_mamba_heads=64,
    intermediate_size=8192, hidden_act="gelu", num_attention_heads=32, num_key_value_heads=32,
    num_mem_blocks=1, use_shared_attention_adapter=False, adapter_rank=128, use_mem_rope=True,
    rms_norm_eps=1e-5, max_position_embeddings=4096, chunk_size=256, tie_word_embeddings=True)


def test_zamba2_1_2b_total_equals_transformers_count():
    pytest.importorskip("transformers")
    from transformers import Zamba2ForCausalLM
    with torch.device("meta"):
        hf = Zamba2ForCausalLM(_hf_config(**ZAMBA2_1_2B))
    expected = sum(p.numel() for p in hf.parameters())  # tied tensors (the shared block, the head) once
    report = archspec.report(archspec.load(SPECS / "zamba2-1.2b.yaml"))
    assert report["totals"]["params"] == expected == 1_196_190_336


def test_zamba2_1_2b_builds_with_the_reported_parameters():
    spec = archspec.load(SPECS / "zamba2-1.2b.yaml")
    model = archspec.build(spec, meta=True)
    assert sum(p.numel() for p in model.parameters()) == account(spec).total().params == 1_196_190_336


# --- logits against transformers' Zamba2 ------------------------------------------------------

TINY_LAYERS = ["mamba", "mamba", "hybrid", "mamba", "hybrid"] * 2 + ["mamba"]  # zamba2-tiny's layout


def _tiny_hf_model():
    from transformers import Zamba2ForCausalLM
    config = _hf_config(
        vocab_size=256, hidden_size=64, num_hidden_layers=len(TINY_LAYERS), layers_block_type=TINY_LAYERS,
        mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1, n_mamba_heads=8,
        intermediate_size=128, hidden_act="gelu", num_attention_heads=4, num_key_value_heads=4,
        num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=8, use_mem_rope=True,
        rms_norm_eps=1e-5, max_position_embeddings=128, chunk_size=32, tie_word_embeddings=True,
        attn_implementation="eager")
    torch.manual_seed(0)
    hf = Zamba2ForCausalLM(config).float().eval()
    with torch.no_grad():  # norms start at one: move them, so a misplaced norm weight shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return hf


def _copy_hf_weights(hf, model, spec) -> int:
    """Copy every weight of the transformers model into the archspec build; returns how many
    archspec parameters were written (each exactly once)."""
    hf_params = dict(hf.named_parameters(remove_duplicate=False))
    ours = dict(model.named_parameters())
    written = set()

    def put(name: str, value: torch.Tensor):
        assert name not in written, name
        ours[name].data.copy_(value)
        written.add(name)

    put("embedding.weight", hf_params["model.embed_tokens.weight"])
    put("final_norm.weight", hf_params["model.final_layernorm.weight"])
    layer, use, feed = 0, 0, None
    for sub in spec.sublayers:
        (m,) = sub.members
        if m.type == "feed_block":
            feed = m
            continue
        prefix = f"model.layers.{layer}." + ("mamba_decoder." if feed is not None else "")
        for local in ("dt_bias", "A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias",
                      "norm.weight", "out_proj.weight"):
            put(f"sublayers.{sub.index}.members.{m.name}.{local}", hf_params[prefix + "mamba." + local])
        put(f"sublayers.{sub.index}.norm.weight", hf_params[prefix + "input_layernorm.weight"])
        if feed is not None:
            block = f"model.layers.{layer}.shared_transformer."
            ours_use = f"sublayers.{sub.index - 1}.members.{feed.name}."
            put(ours_use + "linear.weight", hf_params[f"model.layers.{layer}.linear.weight"])
            for target, hf_list in (("q", "self_attn.linear_q_adapter_list"), ("k", "self_attn.linear_k_adapter_list"),
                                    ("v", "self_attn.linear_v_adapter_list"),
                                    ("gate_up", "feed_forward.gate_up_proj_adapter_list")):
                put(ours_use + f"lora.{target}.down.weight", hf_params[f"{block}{hf_list}.{use}.0.weight"])
                put(ours_use + f"lora.{target}.up.weight", hf_params[f"{block}{hf_list}.{use}.1.weight"])
            shared = f"shared.feed_block_{feed.config['share']}."
            for local in ("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                          "self_attn.v_proj.weight", "self_attn.o_proj.weight", "pre_ff_layernorm.weight",
                          "feed_forward.gate_up_proj.weight", "feed_forward.down_proj.weight"):
                if shared + local not in written:  # the block's first use; later uses are tied to it
                    put(shared + local, hf_params[block + local])
                else:
                    assert torch.equal(ours[shared + local], hf_params[block + local]), local
            use, feed = use + 1, None
        layer += 1
    assert layer == len(TINY_LAYERS)
    return len(written)


def test_zamba2_tiny_gives_transformers_logits():
    """fp32, normwise 1e-4 of the largest logit. The two compute the same sums in different
    orders: SSD's chunked scan (archspec's ops vs transformers' torch path), SDPA against eager
    attention, the RMSNorms' reductions; through 11 layers, measured 7.2e-7. A wrong
    piece (the residual taking the block's output, an adapter at the wrong use, the scale of
    the scores, the norm of [x ; e]) moves the logits by 1e-2 or more of the largest."""
    pytest.importorskip("transformers")
    hf = _tiny_hf_model()
    spec = archspec.load(SPECS / "zamba2-tiny.yaml")
    model = archspec.build(spec, dtype="float32", seed=0).eval()
    assert _copy_hf_weights(hf, model, spec) == len(dict(model.named_parameters()))
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in model.parameters())
    tokens = torch.randint(1, 256, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(tokens).logits.double()
        got = model(tokens).logits.double()
    err = ((got - expected).abs().max() / expected.abs().max()).item()
    assert err < 1e-4, err


# --- sharing: weights once, FLOPs per use ----------------------------------------------------

def _zamba_like(uses: int, share: str | None = "g", extra: str = "") -> archspec.ResolvedSpec:
    share_text = "null" if share is None else share
    return archspec.loads(
        "model: {vocab_size: 97, d_model: 32, max_seq_len: 64}\n"
        "components:\n"
        "  M: {type: mamba2, d_state: 8, head_dim: 16, chunk_size: 16}\n"
        f"  T: {{type: feed_block, n_heads: 4, d_ff: 64, share: {share_text}, lora_rank: 4{extra}}}\n"
        f"layout: \"(T M) x {uses}\"\n")


def test_a_shared_block_counts_once_and_its_flops_per_use():
    one, three, own = _zamba_like(1), _zamba_like(3), _zamba_like(3, share=None)
    p1, p3, own3 = (account(s).total().params for s in (one, three, own))
    inst = three.sublayers[0].members[0]
    per_use = inst.component.param_count(inst.config, three.model)  # LoRA + output projection
    block = sum(p.cost.params for p in account(three).parts if p.role == "shared")
    mamba = account(one).params_of_type("mamba2") + 32  # the Mamba2 layer and its norm
    assert block > 0 and per_use > 0
    assert p3 == p1 + 2 * (per_use + mamba)  # the block once, whatever the number of uses
    assert own3 == p3 + 2 * block  # independent blocks: three copies
    conv = FlopConvention()
    f1, f3 = (inst.component.flops(inst.config, s.model, 64, conv) for s in (one, three))
    assert f1 == f3  # every use does the block's whole work
    model = archspec.build(three, seed=0)
    assert sum(p.numel() for p in model.parameters()) == p3
    assert archspec.report(three)["totals"]["forward_flops_per_token"] == \
        archspec.report(own)["totals"]["forward_flops_per_token"]


def test_every_use_trains_the_shared_block():
    spec = _zamba_like(3)
    model = archspec.build(spec, seed=0)
    uses = [m for b in model.sublayers for m in b.members.values() if hasattr(m, "key") and m.key]
    assert len(uses) == 3 and all(u.block is None for u in uses)
    shared = model.shared["feed_block_g"]
    tokens = torch.randint(0, 97, (2, 16))
    # the gradient of the block's weights is the sum over its uses: with the last use's output
    # projection zeroed (that use contributes nothing), it is the first two uses' alone
    def grad():
        model.zero_grad()
        model(tokens, labels=tokens).loss.backward()
        return shared.feed_forward.down_proj.weight.grad.clone()
    full = grad()
    with torch.no_grad():
        uses[2].linear.weight.zero_()
    without_last = grad()
    assert full.abs().sum() > 0 and without_last.abs().sum() > 0
    assert not torch.allclose(full, without_last)
    # through a block used at three depths: its weights move in one optimizer step
    before = shared.feed_forward.down_proj.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    model(tokens, labels=tokens).loss.backward()
    opt.step()
    assert not torch.equal(before, shared.feed_forward.down_proj.weight)
    assert len(model.state_dict()) == len(dict(model.named_parameters()))  # saved once


def test_zamba2_tiny_trains():
    spec = archspec.load(SPECS / "zamba2-tiny.yaml")
    model = archspec.build(spec, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (4, 33), generator=gen)  # a small alphabet: learnable in a few steps
    losses = []
    for _ in range(20):
        out = model(tokens[:, :-1], labels=tokens[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    # from ln(256) = 5.5 toward ln(16) = 2.8 and below (the batch is memorisable)
    assert losses[-1] < losses[0] - 1.0, losses


# --- misuse: located errors -------------------------------------------------------------------

BASE = ("model: {vocab_size: 97, d_model: 32, max_seq_len: 64}\n"
        "components:\n"
        "  M: {type: mamba2, d_state: 8, head_dim: 16, chunk_size: 16}\n")


def test_a_lora_rank_larger_than_the_projection_is_located(problems):
    found = problems(BASE + "  T: {type: feed_block, n_heads: 4, d_ff: 64, lora_rank: 65}\nlayout: T M\n")
    assert_located(found, key="lora_rank", at=(4, 58), words="larger than the gate_up projection",
                   hint_words="at most 32")


def test_blocks_sharing_weights_with_other_shapes_are_located(problems):
    found = problems(BASE + "  T: {type: feed_block, n_heads: 4, d_ff: 64, share: g}\n"
                             "  U: {type: feed_block, n_heads: 4, d_ff: 96, share: g}\nlayout: T M U M\n")
    assert_located(found, path=("components", "U"), at=5, words="shares weights 'feed_block_g' with component 'T'")


def test_a_misspelt_share_group_is_located(problems):
    found = problems(BASE + "  T: {type: feed_block, n_heads: 4, d_ff: 64, share: block}\n"
                             "  U: {type: feed_block, n_heads: 4, d_ff: 64, share: blokc}\n"
                             "layout: T M T M U M\n")
    assert_located(found, path=("components", "U", "share"), at=(5, 54), words="used once", hint_words="block")


@pytest.mark.parametrize("layout, words", [
    ("[T | M] M", "cannot be a member of the parallel group at sublayer 0"),
    ("T T M", "feeds sublayer 1, which is a feed itself"),
])
def test_a_feed_in_the_wrong_place_is_located(problems, layout, words):
    found = problems(BASE + "  T: {type: feed_block, n_heads: 4, d_ff: 64}\n" + f"layout: \"{layout}\"\n")
    assert_located(found, path=("layout",), at=5, words=words)


def test_a_feed_reading_embeddings_outside_a_model_says_so():
    spec = _zamba_like(1)
    module = archspec.build(spec, seed=0).sublayers[0].members["T"]
    with pytest.raises(ValueError, match="concatenates the model's embeddings"):
        module(torch.randn(1, 4, 32))


# --- `share: G` on any component: one module at several depths --------------------------------

def _stack(share: str = "") -> archspec.ResolvedSpec:
    return archspec.loads(
        "model: {vocab_size: 97, d_model: 32, max_seq_len: 64}\n"
        "components:\n"
        "  M: {type: mamba2, d_state: 8, head_dim: 16, chunk_size: 16}\n"
        f"  A: {{type: attention, n_heads: 4, n_kv_heads: 2{share}}}\n"
        "  F: {type: mlp, d_ff: 64}\n"
        "layout: \"(M M M A F) x 3\"\n")


def test_a_reused_symbol_is_independent_unless_shared():
    own, shared = _stack(), _stack(", share: attn")
    attention = 2 * 32 * 32 + 2 * 16 * 32  # q, o [32, 32]; k, v [16, 32]
    assert account(own).params_of_type("attention") == 3 * attention  # the default: three blocks
    assert account(shared).params_of_type("attention") == attention  # one, in shared.attention_attn
    assert account(own).total().params - account(shared).total().params == 2 * attention
    model = archspec.build(shared, seed=0)
    names = [n for n, _ in model.named_parameters() if "attention" in n or ".A." in n]
    assert names == [f"shared.attention_attn.{w}_proj.weight" for w in "qkvo"]
    assert sum(p.numel() for p in model.parameters()) == account(shared).total().params
    # FLOPs and the KV caches count per use, as with independent blocks
    r_own, r_shared = archspec.report(own), archspec.report(shared)
    for key in ("forward_flops_per_token", "inference_state_bytes_per_sequence"):
        assert r_own["totals"][key] == r_shared["totals"][key]


def test_a_shared_attention_decodes_like_its_forward_with_a_cache_per_use():
    """fp32, normwise 1e-5 (as tests/test_generate.py): each use keeps its own KV cache; one
    cache for all uses would mix three layers' keys and miss by 1e-2 or more."""
    from archspec.components.modules import state_nbytes
    spec = _stack(", share: attn")
    model = archspec.build(spec, dtype="float32", seed=0).eval()
    tokens = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens).logits
        state = model.init_state(2, 30)
        outs = [model.prefill(tokens[:, :9], state)] + [model.step(tokens[:, i], state)[:, None] for i in range(9, 30)]
    err = ((torch.cat(outs, 1).double() - full.double()).abs().max() / full.double().abs().max()).item()
    assert err < 1e-5, err
    assert state_nbytes(state.states) == 2 * archspec.report(spec, seq_len=30)["totals"]["inference_state_bytes_per_sequence"]


def test_settings_that_differ_within_a_share_group_are_located(problems):
    found = problems(
        "model: {vocab_size: 97, d_model: 32, max_seq_len: 64}\n"
        "components:\n"
        "  A: {type: attention, n_heads: 4, share: attn}\n"
        "  B: {type: attention, n_heads: 4, window: 8, share: attn}\n"
        "  F: {type: mlp, d_ff: 64, share: attn}\n"
        "overrides:\n"
        "  - {at: 2, set: {rope_theta: 500}}\n"
        "layout: \"(A F) x 2 B\"\n")
    assert_located(found, key="rope_theta", path=("overrides", 0, "set", "rope_theta"), at=(7, 31),
                   words="at sublayer 2 shares group 'attn' with 'A' but sets rope_theta=500")
    assert_located(found, key="B", at=4, words="sets window=8 (vs null)")
    assert_located(found, key="share", at=(5, 35), words="already the group of attention 'A'")


def test_a_type_with_its_own_sharing_scheme_takes_no_share_key(problems):
    found = problems("model: {vocab_size: 97, d_model: 32, max_seq_len: 64}\n"
                     "components:\n  P: {type: pkm, n_keys: 16, n_heads: 2, knn: 4, k_dim: 16, share: g}\n"
                     "layout: P P\n")
    assert_located(found, key="share", words="unknown key 'share'")


@pytest.mark.parametrize("which", ["zamba2-tiny", "shared-attention"])
def test_flops_of_shared_blocks_equal_flopcountermode(which):
    """Integer counts of the same matmuls, exact (archspec/flopcount.py): a shared block's
    work is counted at every use, [x ; e] at its 2 d_model width, the adapters and projections."""
    from archspec.flopcount import analytic_comparable, measure_flopcounter
    spec = archspec.load(SPECS / "zamba2-tiny.yaml") if which == "zamba2-tiny" else _stack(", share: attn")
    model = archspec.build(spec, seed=0)
    for t in (7, 40):
        tokens = torch.randint(0, spec.model.vocab_size, (2, t))
        assert measure_flopcounter(model, tokens) == analytic_comparable(spec, t, batch=2), t


@pytest.mark.parametrize("which", ["zamba2-tiny", "shared-attention"])
def test_a_saved_model_with_shared_weights_loads_back(which, tmp_path):
    spec = archspec.load(SPECS / "zamba2-tiny.yaml") if which == "zamba2-tiny" else _stack(", share: attn")
    model = archspec.build(spec, seed=3)
    archspec.save(model, tmp_path / "out")
    loaded, _ = archspec.load_saved(tmp_path / "out")
    assert len(loaded.state_dict()) == len(dict(loaded.named_parameters()))  # each weight once
    tokens = torch.randint(0, spec.model.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)


@pytest.mark.parametrize("config", [
    {"n_heads": 4, "d_ff": 96, "concat_embeddings": False},
    {"n_heads": 4, "n_kv_heads": 2, "d_ff": 96, "lora_rank": 4, "lora_targets": ["q", "k", "v", "gate_up"],
     "out_proj": False, "concat_embeddings": False},
    {"n_heads": 4, "d_ff": 80, "lora_rank": 2, "concat_embeddings": True},
], ids=["plain", "gqa-lora-no-proj", "concat"])
def test_feed_block_activation_bytes_equal_what_autograd_saves(config):
    """fp32, exact (helpers.saved_bytes: every saved storage once, weights and buffers left
    out), as tests/test_contract.py checks the other types."""
    from archspec.components.modules import ForwardContext
    from helpers import saved_bytes
    spec = archspec.loads("model: {vocab_size: 97, d_model: 32, max_seq_len: 64}\n"
                          f"components:\n  T: {{type: feed_block, {str(config)[1:-1]}}}\n  M: {{type: mlp, d_ff: 64}}\n"
                          "layout: T M\n".replace("'", ""))
    module = archspec.build(spec, seed=0).sublayers[0].members["T"]
    inst = spec.sublayers[0].members[0]
    for t in (16, 40):
        ctx = ForwardContext()
        ctx.embeddings = torch.randn(2, t, 32)
        measured = saved_bytes(module, torch.randn(2, t, 32, requires_grad=True), ctx)
        assert measured == 2 * inst.component.activation_bytes(inst.config, spec.model, t), t


def test_sandwich_norms_skip_the_feed_sublayers():
    """model: post_norm on a model with feeds: every ordinary sublayer gets its post norm, a feed
    (no norm, no residual) none; parameters stay exact and decoding gives the forward (1e-5 in
    float32: rounding of a few hundred products per logit is ~1e-7 to 1e-6)."""
    import re
    text = (SPECS / "zamba2-tiny.yaml").read_text()
    spec = archspec.loads(re.sub(r"(\n  d_model: \d+)", r"\1\n  post_norm: true", text, count=1))
    model = archspec.build(spec, seed=0).eval()
    assert account(spec, 16).total().params == sum(p.numel() for p in model.parameters())
    feeds = {s.index for s in spec.sublayers if any(m.component.feeds_next for m in s.members)}
    with_post = {i for i, block in enumerate(model.sublayers) if block.post_norm is not None}
    assert feeds and with_post == set(range(len(spec.sublayers))) - feeds
    tokens = torch.randint(0, spec.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens).logits
        state = model.init_state(2, 16)
        out = [model.prefill(tokens[:, :5], state)] + [model.step(tokens[:, t], state)[:, None] for t in range(5, 16)]
    assert torch.allclose(torch.cat(out, 1), full, atol=1e-5, rtol=0)
