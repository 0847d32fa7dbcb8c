"""Token-dependent gates for parallel groups (`model.group_gates: softmax | sigmoid`, per
sublayer with an override's `group_gates`): parameters, FLOPs (FlopCounterMode and fvcore) and
activation bytes exact, decoding gives the forward, the gates depend on the token, `diff` and
the report show them, and a gate asked of a group of one is a located error."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archspec
from archspec.accounting import account
from archspec.components.modules import ForwardContext
from archspec.flopcount import analytic_comparable, measure_flopcounter, measure_fvcore
from archspec.diff import render as render_diff, to_json
from archspec.report import render, report
from helpers import assert_located
from test_flops import _saved_bytes

SPECS = Path(__file__).resolve().parent.parent / "specs"
pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """
model: {{name: gated, vocab_size: 97, d_model: 32, max_seq_len: 64, group_gates: {kind}}}
components:
  A: {{type: attention, n_heads: 4, n_kv_heads: 2}}
  F: {{type: mlp, activation: gelu, d_ff: 64}}
  M: {{type: mamba, d_state: 8}}
layout: "[A | F] [M | A | F] F"
{extra}"""
KINDS = ["softmax", "sigmoid"]


def _spec(kind: str = "softmax", extra: str = "") -> archspec.ResolvedSpec:
    return archspec.loads(SPEC.format(kind=kind, extra=extra))


MIXED = "overrides:\n  - at: 1\n    group_gates: sigmoid\n"


@pytest.mark.parametrize("kind,extra", [("softmax", ""), ("sigmoid", ""), ("softmax", MIXED)])
def test_parameters_flops_and_activations_are_exact(kind, extra):
    spec = _spec(kind, extra)
    model = archspec.build(spec, seed=0)
    acc = account(spec, 24)
    assert acc.total().params == sum(p.numel() for p in model.parameters())
    assert acc.param_shapes() == {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert model.get_parameter("sublayers.1.gates.weight").shape == (3, 32)  # Linear(d, n_members)
    tokens = torch.randint(0, 97, (2, 24))
    assert measure_flopcounter(model, tokens) == analytic_comparable(spec, 24, batch=2)
    # fvcore (x 2 already: FLOPs) leaves mamba's scan and convolution out (a custom autograd
    # op), so it is compared on what the gates add: the same model with scalar gates subtracted
    scalar = archspec.build(_spec("scalar"), seed=0)
    assert measure_fvcore(model, tokens) - measure_fvcore(scalar, tokens) == \
        analytic_comparable(spec, 24, batch=2) - analytic_comparable(_spec("scalar"), 24, batch=2) > 0
    # activation bytes: what the token gates add to the scalar gates' model, measured (the
    # storages autograd saves: the gates g, kept by the products) against the estimate (mamba
    # saves some bytes once per forward, outside the per-sequence figure: the difference
    # leaves them and the loss scalar out)
    extra = sum(_saved_bytes(model, tokens).values()) - sum(_saved_bytes(scalar, tokens).values())
    assert extra == 2 * (acc.total().activation_bytes - account(_spec("scalar"), 24).total().activation_bytes) > 0


def test_token_gates_cost_their_projection_more_than_scalar_gates():
    """Per token, a group of n members with token gates adds 2 d n matmul FLOPs and
    n (1 + softmax's 5) others, and d n + n parameters in place of n."""
    scalar, token = account(_spec("scalar"), 16), account(_spec("softmax"), 16)
    d = 32
    params = {p.name: p.cost for p in scalar.parts}
    for p in token.parts:
        if p.type == "residual" and p.node.instance.config["gated"]:
            n = p.node.instance.config["members"]
            was = params[p.name]
            assert p.cost.params - was.params == d * n + n - n
            assert p.cost.flops.matmul - was.flops.matmul == 16 * 2 * d * n
            assert p.cost.flops.other - was.flops.other == 16 * n * (1 + 5)


@pytest.mark.parametrize("kind,extra", [("softmax", ""), ("sigmoid", MIXED)])
@pytest.mark.parametrize("prompt", [0, 9])
def test_decoding_reproduces_the_forward(kind, extra, prompt):
    """prefill then steps give the forward's logits. Tolerance 1e-5 in float32: rounding of a
    few hundred products per entry gives ~1e-7 to 1e-6; a gate computed from the wrong input
    (the un-normed x, another position) moves logits by 1e-2 or more."""
    model = archspec.build(_spec(kind, extra), seed=0).eval()
    tokens = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens).logits
        state = model.init_state(2, 20)
        out = [model.prefill(tokens[:, :prompt], state)] if prompt else []
        out += [model.step(tokens[:, t], state)[:, None] for t in range(prompt, 20)]
    assert torch.allclose(torch.cat(out, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_gates_depend_on_the_token_and_start_even(kind):
    model = archspec.build(_spec(kind), seed=0)
    block = model.sublayers[1]
    h = torch.randn(2, 5, 32)
    g = torch.cat(block.gate_values(h), -1)  # [2, 5, 3]
    assert g.shape == (2, 5, 3)
    assert not torch.allclose(g[0, 0], g[0, 1])  # another token, other gates
    start = 1 / 3 if kind == "softmax" else 1 / 2
    # W_g ~ N(0, 0.02), |h| ~ sqrt(32): logits within ~0.3 of 0, gates within 0.1 of the start
    assert (g - start).abs().max() < 0.1
    if kind == "softmax":
        assert torch.allclose(g.sum(-1), torch.ones(2, 5))


def test_gates_train():
    model = archspec.build(_spec("softmax"), seed=0)
    tokens = torch.randint(0, 97, (2, 16))
    model(tokens, labels=tokens).loss.backward()
    for i in (0, 1):
        assert model.sublayers[i].gates.weight.grad.abs().sum() > 0


def test_scalar_is_the_default_and_unchanged():
    spec = archspec.load(SPECS / "tiny-parallel.yaml")
    assert spec.model.group_gates == "scalar" and {s.gates for s in spec.sublayers} == {"scalar"}
    model = archspec.build(spec, seed=0)
    assert isinstance(model.sublayers[0].gates, torch.nn.Parameter)


def test_report_and_diff_show_them():
    spec = _spec("softmax", MIXED)
    rep = report(spec)
    assert rep["spec"]["group_gates"] == "softmax"
    assert [r["gates"] for r in rep["sublayers"]] == ["softmax", "sigmoid", None]
    text = render(rep)
    assert "(softmax gates)" in text and "(sigmoid gates)" in text
    d = archspec.diff(_spec("scalar"), spec)
    assert [(f.field, f.a, f.b) for f in d.model] == [("model.group_gates", "scalar", "softmax")]


def test_a_gate_on_a_group_of_one_is_located(problems):
    found = problems(SPEC.format(kind="sigmoid", extra="overrides:\n  - at: [1, 2]\n    group_gates: softmax\n"))
    assert_located(found, path=("overrides", 0, "group_gates"), words="sublayer 2 is one component (F)",
                   hint_words="parallel group")
    no_group = SPEC.format(kind="softmax", extra="").replace('"[A | F] [M | A | F] F"', '"A F"')
    assert_located(problems(no_group), path=("model", "group_gates"), words="the layout has none")


def test_an_override_needs_set_or_group_gates(problems):
    found = problems(SPEC.format(kind="scalar", extra="overrides:\n  - at: 1\n    component: A\n"))
    assert_located(found, path=("overrides", 0), message="missing required key 'set'",
                   hint_words="group_gates")


def test_a_bad_kind_is_a_schema_error(problems):
    found = problems(SPEC.format(kind="tanh", extra=""))
    assert_located(found, path=("model", "group_gates"))


def test_a_saved_model_keeps_its_gates_and_freeze(tmp_path):
    """archspec.json records each group's gates and the freeze list: the reloaded model has the
    same parameters, the same requires_grad and the same logits."""
    spec = _spec("softmax", MIXED + "freeze: [A, gates]\n")
    model = archspec.build(spec, seed=0)
    archspec.save(model, tmp_path / "saved")
    loaded, again = archspec.load_saved(tmp_path / "saved")
    assert [s.gates for s in again.sublayers] == ["softmax", "sigmoid", "scalar"] and again.freeze == ("A", "gates")
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == \
        {n: p.requires_grad for n, p in model.named_parameters()}
    assert not loaded.get_parameter("sublayers.1.gates.weight").requires_grad
    tokens = torch.randint(0, 97, (2, 12))
    assert torch.equal(loaded(tokens).logits, model(tokens).logits)


def test_diff_shows_one_groups_gates():
    """An override that changes one group's gates is a sublayer change (the model's field is the
    same), so the specs differ."""
    d = archspec.diff(_spec("softmax"), _spec("softmax", MIXED))
    assert d.different and not d.model
    (change,) = d.sublayers
    assert (change.a_index, change.gates) == (1, ("softmax", "sigmoid"))
    assert "gates softmax -> sigmoid" in render_diff(d, "table")
    assert to_json(d)["sublayers"][0]["gates"] == ["softmax", "sigmoid"]


def test_a_model_saved_before_group_gates_loads(tmp_path):
    """archspec.json of an older archspec has no model.group_gates: its groups had scalar gates."""
    import json
    archspec.save(archspec.build(archspec.load(SPECS / "tiny-parallel.yaml"), seed=0), tmp_path / "old")
    record = json.loads((tmp_path / "old" / "archspec.json").read_text())
    del record["model"]["group_gates"]
    (tmp_path / "old" / "archspec.json").write_text(json.dumps(record))
    model, spec = archspec.load_saved(tmp_path / "old")
    assert spec.model.group_gates == "scalar" and isinstance(model.sublayers[0].gates, torch.nn.Parameter)


@pytest.mark.parametrize("kind", KINDS)
def test_token_gates_inside_sandwich_norms(kind):
    """model: post_norm with token gates: the post norm takes the token-gated sum, x + post_norm(
    sum_j g_j(h) f_j(h)), h = norm(x) (written out by hand for sublayer 1); parameters are exact
    and decoding reproduces the forward. Tolerances: 1e-6 for the same arithmetic in another
    order, 1e-5 for decoding as in test_decoding_reproduces_the_forward; scalar gates in place of
    the token gates move the block's output by about 1e-1."""
    spec = archspec.loads(SPEC.format(kind=kind, extra="").replace("group_gates:", "post_norm: true, group_gates:"))
    model = archspec.build(spec, seed=0).eval()
    assert account(spec, 24).total().params == sum(p.numel() for p in model.parameters())
    block = model.sublayers[1]
    with torch.no_grad():  # gates away from their even start, so a wrong gate shows
        block.gates.weight.normal_(std=1.0)
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    ctx = ForwardContext()
    with torch.no_grad():
        h = block.norm(x)
        logits = block.gates(h)
        g = torch.softmax(logits, -1) if kind == "softmax" else torch.sigmoid(logits)
        update = sum(g[..., j:j + 1] * m(h, ctx) for j, m in enumerate(block.members.values()))
        assert torch.allclose(block(x, ctx), x + block.post_norm(update), atol=1e-6, rtol=0)
        tokens = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(3))
        full = model(tokens).logits
        state = model.init_state(2, 16)
        out = [model.prefill(tokens[:, :5], state)] + [model.step(tokens[:, t], state)[:, None] for t in range(5, 16)]
    assert torch.allclose(torch.cat(out, 1), full, atol=1e-5, rtol=0)
