"""Freezing (`freeze:`, archspec/freeze.py): the report's trainable and frozen counts equal the
built model's requires_grad, a frozen part's weights do not move in training while the rest
do, `diff` lists a change of the list, and every misuse is a located error."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archspec
from archspec.diff import render as render_diff
from archspec.report import render, report
from helpers import assert_located

SPECS = Path(__file__).resolve().parent.parent / "specs"
pytestmark = pytest.mark.usefixtures("one_thread")


def _frozen_spec(freeze: str, base: str = "tiny.yaml") -> str:
    return f"extends: {SPECS / base}\nmodel: {{name: frozen}}\nfreeze: {freeze}\n"


def _split(model) -> tuple[int, int]:
    """(trainable, frozen) parameters of a built model, by requires_grad."""
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad),
            sum(p.numel() for p in params if not p.requires_grad))


@pytest.mark.parametrize("base,freeze", [
    ("tiny.yaml", "[embedding, head, norms, A]"),
    ("tiny.yaml", "[F]"),
    ("tiny-parallel.yaml", "[gates, embedding]"),     # untied: the head still trains
    ("tiny-parallel.yaml", "[head]"),
    ("adapter-tiny.yaml", "[G.adapter, A, F]"),       # a child: the gate still trains
    ("pkm-tiny.yaml", "[P]"),                          # both readers of the shared values
])
def test_report_counts_are_the_builds_requires_grad(write, base, freeze):
    spec = archspec.load(write(_frozen_spec(freeze, base)))
    rep = report(spec)
    trainable, frozen = _split(archspec.build(spec, seed=0))
    assert (rep["totals"]["trainable_params"], rep["totals"]["frozen_params"]) == (trainable, frozen)
    assert frozen > 0 and trainable > 0
    assert sum(c["frozen_params"] for c in rep["components"]) == frozen
    assert rep["spec"]["freeze"] == list(spec.freeze)


def test_a_child_freezes_alone(write):
    """`G.adapter` freezes the adapter mlp's weights and nothing of G's own (its gate)."""
    spec = archspec.load(write(_frozen_spec("[G.adapter]", "adapter-tiny.yaml")))
    model = archspec.build(spec, seed=0)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    adapter = {n for n, _ in model.named_parameters() if ".members.G.adapter." in n}
    assert frozen == adapter and len(adapter) >= 4  # two sublayers, two weights each at least
    assert all(p.requires_grad for n, p in model.named_parameters() if ".members.G.gate." in n)


def test_no_freeze_trains_everything_and_reports_zero_frozen():
    spec = archspec.load(SPECS / "tiny.yaml")
    rep = report(spec)
    assert rep["totals"]["frozen_params"] == 0 and rep["totals"]["trainable_params"] == rep["totals"]["params"]
    assert _split(archspec.build(spec, seed=0))[1] == 0
    assert "frozen" not in render(rep)  # the text shows the split only when there is one


def test_frozen_weights_do_not_move_in_training_while_the_rest_do(write):
    """AdamW with weight decay (which would shrink a frozen weight if it were handed one) for
    20 steps: every frozen tensor is bit-identical, every trainable one has moved."""
    spec = archspec.load(write(_frozen_spec("[embedding, head, norms, A]")))
    model = archspec.build(spec, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        tokens = torch.randint(0, 256, (4, 33), generator=gen)
        loss = model(tokens[:, :-1], labels=tokens[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[n]), f"{n} trains but did not move"
        else:
            assert torch.equal(p, before[n]), f"{n} is frozen but moved"
            assert p.grad is None
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "embedding.weight" in frozen and "final_norm.weight" in frozen
    assert any(".members.A." in n for n in frozen) and not any(".members.F." in n for n in frozen)


def test_meta_build_carries_the_freeze(write):
    spec = archspec.load(write(_frozen_spec("[F]")))
    assert _split(archspec.build(spec, meta=True)) == _split(archspec.build(spec, seed=0))


def test_diff_lists_a_change_of_what_trains(write):
    a = archspec.load(SPECS / "tiny.yaml")
    b = archspec.load(write(_frozen_spec("[A]")))
    d = archspec.diff(a, b)
    assert d.different
    (change,) = [f for f in d.model if f.field == "freeze"]
    assert (change.a, change.b) == ([], ["A"])
    assert "freeze" in render_diff(d, "table")
    # the order of the list means nothing
    c = archspec.load(write(_frozen_spec("[A, F]"), "c.yaml"))
    e = archspec.load(write(_frozen_spec("[F, A]"), "e.yaml"))
    assert not archspec.diff(c, e).different


def test_every_misuse_is_located_at_once(problems):
    found = problems(_frozen_spec("[embeding, A.x, gates, A, A, F.w, B]"))
    assert_located(found, path=("freeze", 0), key=0, words="'embeding' names no component",
                   hint="did you mean 'embedding'?")
    assert_located(found, path=("freeze", 1), key=1, message="component 'A' (attention) has no child 'x'")
    assert_located(found, path=("freeze", 2), key=2, words="no parallel group")
    assert_located(found, path=("freeze", 4), key=4, message="'A' is listed twice")
    assert_located(found, path=("freeze", 5), key=5, words="no child 'w'")
    assert_located(found, path=("freeze", 6), key=6, words="'B' names no component")
    assert len(found) == 6


def test_a_child_path_gets_a_did_you_mean(problems):
    found = problems(_frozen_spec("[G.adaptr]", "adapter-tiny.yaml"))
    assert_located(found, path=("freeze", 0), words="no child 'adaptr'", hint="did you mean 'adapter'?")


def test_half_a_shared_weight_is_an_error(problems):
    """The tied head is the embedding's table; PKM values shared by two symbols train or not
    together."""
    found = problems(_frozen_spec("[embedding]"))
    assert_located(found, path=("freeze", 0), words="tied to the embedding", hint_words="add 'head'")
    two_readers = (f"extends: {SPECS / 'pkm-tiny.yaml'}\nmodel: {{name: p}}\n"
                   "components:\n  Q: {type: pkm, n_keys: 32, n_heads: 2, knn: 8, k_dim: 32, share_values: mem}\n"
                   "layout: A F A P A F A Q\nfreeze: [Q]\n")
    assert_located(problems(two_readers), path=("freeze", 0), words="shares weights 'pkm_values_mem' with P",
                   hint="freeze P too, or none of them")


def test_a_component_the_layout_does_not_use_is_an_error(problems):
    spec = _frozen_spec("[M]") + "components:\n  M: {type: mamba}\n"
    assert_located(problems(spec), path=("freeze", 0), words="'M' names no component the layout uses")


def test_schema_refuses_a_non_list(problems):
    assert_located(problems(_frozen_spec("A")), path=("freeze",))


def test_a_broken_component_is_not_reported_again(problems):
    """`A`'s own error is reported; the freeze entry naming it adds nothing."""
    spec = _frozen_spec("[A, Q]") + "components:\n  A: {type: attention, n_heads: 0}\n"
    found = problems(spec)
    assert not [p for p in found if p.path == ("freeze", 0)], [p.format() for p in found]
    assert_located(found, key=1, path=("freeze", 1), words="'Q' names no component")
