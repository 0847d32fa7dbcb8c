"""Issue 19's options (docs/spec.md, "Published models"): exact parameters and FLOPs of the
built model with every option on, the model-level options through decoding, and a located error
for each misuse, all at once. Their math against transformers: tests/test_published_specs.py;
each layout option's decoding and parameter count: tests/test_contract.py's cases."""
from __future__ import annotations

import pytest
import torch

import archspec
from archspec.accounting import account
from archspec.flopcount import analytic_comparable, measure_flopcounter
from archspec.plan import POST_NORM

from helpers import assert_located

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

EVERY_OPTION = """
model: {vocab_size: 97, d_model: 32, max_seq_len: 64, learned_positions: true, scale_embeddings: true,
        logit_softcap: 30, post_norm: true, norm: {type: rmsnorm, unit_offset: true}}
components:
  A: {type: attention, n_heads: 4, n_kv_heads: 2, bias: qkv, qk_norm: head, rope_dims: 4, logit_softcap: 50,
      window: 5}
  B: {type: attention, n_heads: 4, qk_norm: projection}
  F: {type: mlp, activation: geglu_tanh, d_ff: 64}
  G: {type: mlp, activation: gelu_tanh, d_ff: 64, bias: true}
  M: {type: moe, n_experts: 4, topk: 2, d_ff: 16, n_shared_experts: 1, shared_expert_gate: true}
  S: {type: mamba, d_state: 8, inner_norms: true, inner_norm_weights: false}
layout: (A F B M S G) x 2 [A | F]
"""


def test_every_option_is_counted_exactly():
    """Parameter shapes (names included) are the built module's; matmul + attention FLOPs are
    FlopCounterMode's (integer counts of the same matmuls: exact)."""
    spec = archspec.loads(EVERY_OPTION)
    model = archspec.build(spec, seed=0)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == account(spec).param_shapes()
    assert sum(p.numel() for p in model.parameters()) == account(spec).total().params
    tokens = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    assert measure_flopcounter(model, tokens) == analytic_comparable(spec, 20, batch=2)


def test_sandwich_norms_are_plan_nodes_with_their_own_weights():
    spec = archspec.loads(EVERY_OPTION)
    acc = account(spec)
    posts = [p for p in acc.parts if p.role == POST_NORM]
    assert [p.name for p in posts] == [f"sublayers.{i}.post_norm" for i in range(len(spec.sublayers))]
    assert all(p.cost.params == 32 for p in posts)
    model = archspec.build(spec, seed=0)
    assert all(torch.equal(b.post_norm.weight, torch.zeros(32)) for b in model.sublayers)  # (1 + w), w = 0
    assert model.sublayers[0].post_norm is not model.sublayers[0].norm


def test_every_option_decodes_like_the_forward():
    """prefill + steps give the forward's logits with the model-level options on (the position
    table read at each step's position, the sandwich norms, the caps). float32 tolerance 1e-5:
    the same sums in another order (two forms of each mixer) differ by ~1e-7 relative; a
    position read at the wrong index moves logits by 1e-2 or more."""
    spec = archspec.loads(EVERY_OPTION)
    model = archspec.build(spec, seed=0).eval()
    tokens = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens).logits
        state = model.init_state(2, 20)
        outs = [model.prefill(tokens[:, :7], state)]
        outs += [model.step(tokens[:, i], state)[:, None] for i in range(7, 20)]
    decoded = torch.cat(outs, dim=1)
    assert (decoded - full).abs().max() <= 1e-5 * full.abs().max()


def test_final_softcap_is_c_tanh_of_the_uncapped_logits():
    """The same weights (same seed, the cap has none) without and with a cap of 0.1."""
    tokens = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    free, capped = (archspec.build(archspec.loads(EVERY_OPTION.replace("logit_softcap: 30,", cap)), seed=0)(tokens).logits
                    for cap in ("", "logit_softcap: 0.1,"))
    assert free.abs().max() > 0.2  # large enough for tanh to bend
    torch.testing.assert_close(capped, 0.1 * torch.tanh(free / 0.1))  # float32 defaults: rounding only


def test_learned_positions_end_at_max_seq_len():
    spec = archspec.loads(EVERY_OPTION)
    model = archspec.build(spec, seed=0)
    with pytest.raises(ValueError, match="max_seq_len = 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_unit_offset_norm_scales_by_one_plus_w():
    spec = archspec.loads(EVERY_OPTION)
    norm = archspec.build(spec, seed=0).final_norm
    with torch.no_grad():
        norm.weight.fill_(0.5)
    x = torch.randn(3, 32)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * 1.5
    torch.testing.assert_close(norm(x), expected)  # float32 defaults: rounding only


def test_misuse_is_reported_all_at_once_and_located(problems):
    found = problems("""\
        model: {vocab_size: 50, d_model: 32, max_seq_len: 64}
        components:
          A: {type: attention, n_heads: 4, rope_dims: 5}
          B: {type: attention, n_heads: 4, rope_dims: 16}
          C: {type: attention, n_heads: 4, logit_softcap: 0}
          D: {type: attention, n_heads: 4, rope: false, rope_dims: 4}
          E: {type: moe, n_experts: 4, d_ff: 16, shared_expert_gate: true}
          S: {type: mamba, d_state: 8, inner_norm_weights: false}
        layout: A B C D E S
        """)
    by_component = {p.path[1]: p for p in found if len(p.path) > 2}
    assert set(by_component) == set("ABCDES"), [p.format() for p in found]
    assert_located([p for p in found if p.path[1] == "A"], key="rope_dims", at=(3, 47), words="odd")
    assert_located([p for p in found if p.path[1] == "B"], key="rope_dims", at=(4, 47),
                   words="exceeds head_dim=8", hint_words="rope_dims <= 8")
    assert_located([p for p in found if p.path[1] == "C"], key="logit_softcap", words="0")
    assert_located([p for p in found if p.path[1] == "D"], key="rope_dims", words="rope: false")
    assert_located([p for p in found if p.path[1] == "E"], key="shared_expert_gate",
                   words="n_shared_experts is 0", hint_words="n_shared_experts >= 1")
    assert_located([p for p in found if p.path[1] == "S"], key="inner_norm_weights", words="inner_norms")


def test_model_softcap_of_zero_is_located(problems):
    found = problems("""\
        model: {vocab_size: 50, d_model: 32, max_seq_len: 64, logit_softcap: -1}
        components:
          F: {type: mlp}
        layout: F
        """)
    assert_located(found, key="logit_softcap", at=1, hint_words="null (the default) turns it off")


def test_softcap_is_bounded(problems):
    found = problems("""\
        model: {vocab_size: 50, d_model: 32, max_seq_len: 64}
        components:
          A: {type: attention, n_heads: 4, logit_softcap: 1e9}
        layout: A
        """)
    assert_located(found, key="logit_softcap", hint_words="tanh")
