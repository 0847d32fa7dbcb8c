"""The plan stage (archspec/plan.py): one ordered list of nodes that every later stage reads."""
from __future__ import annotations

from pathlib import Path

import pytest

import archspec
from archspec.accounting import account
from archspec.backends import planned
from archspec.plan import CONFIGURABLE, MEMBER, ROLES, plan
from archspec.report import report

SPECS = Path(__file__).resolve().parent.parent / "specs"


def test_nodes_in_model_order_with_roles_and_symbols():
    spec = archspec.load(SPECS / "tiny-parallel.yaml")  # "[A | F] x 3"
    p = plan(spec)
    assert [n.name for n in p][:6] == ["embedding", "sublayers.0.norm", "sublayers.0.A", "sublayers.0.F",
                                       "sublayers.0.residual", "sublayers.1.norm"]
    assert [n.name for n in p][-2:] == ["final_norm", "lm_head"]
    assert {n.role for n in p} <= set(ROLES)
    a = p["sublayers.2.A"]
    assert (a.role, a.symbol, a.sublayer, a.module_path) == (MEMBER, "A", 2, "sublayers.2.members.A")
    assert {p["sublayers.1.norm"].symbol, p["final_norm"].symbol} == {"model.norm"}
    assert p["sublayers.1.residual"].param_name("gates") == "sublayers.1.gates"
    assert [n.name for n in p.members(1)] == ["sublayers.1.A", "sublayers.1.F"]


def test_every_shipped_spec_plans_the_built_models_parameters():
    """The plan's module paths are where the built model keeps each node's parameters."""
    for path in sorted(SPECS.glob("*.yaml")):
        spec = archspec.load(path)
        model = archspec.build(spec, meta=True)
        built = {n: tuple(p.shape) for n, p in model.named_parameters()}
        assert built == account(spec).param_shapes(), path.name
        assert set(model.backends) == {n.name for n in plan(spec) if n.role in CONFIGURABLE}, path.name


def test_shared_weights_are_one_node_read_by_their_members():
    spec = archspec.load(SPECS / "pkm-tiny.yaml")
    p = plan(spec)
    shared = p.with_role("shared")
    assert len(shared) == 1
    readers = [n for n in p.with_role(MEMBER) if shared[0].shared_key in n.reads_shared]
    assert len(readers) >= 2
    assert shared[0].module_path == f"shared.{shared[0].shared_key}"


def test_report_and_build_choose_backends_by_the_same_rule():
    spec = archspec.load(SPECS / "hydra-tiny.yaml")
    rep = report(spec, backend={"M": "reference"})
    shown = {c["name"]: c["backend"] for c in rep["components"] if "backend" in c}
    built = archspec.build(spec, meta=True, backend={"M": "reference"})
    assert shown == {k: str(v) for k, v in built.backends.items()}
    assert shown == planned(plan(spec), "cpu", {"M": "reference"})


def test_report_refuses_an_unknown_backend_override():
    spec = archspec.load(SPECS / "tiny.yaml")
    with pytest.raises(ValueError, match="no 'cuda_graphs' backend"):
        report(spec, backend="cuda_graphs")
    with pytest.raises(ValueError, match="unknown component"):
        report(spec, backend={"Q": "reference"})


def test_model_norm_takes_a_backend_in_the_spec():
    text = ("model: {vocab_size: 97, d_model: 64, max_seq_len: 64, norm: {type: rmsnorm, backend: reference}}\n"
            "components: {A: {type: attention, n_heads: 4}}\nlayout: A x 2\n")
    spec = archspec.loads(text)
    assert spec.norm.backend == "reference"
    bad = text.replace("backend: reference", "backend: cudnn")
    with pytest.raises(archspec.SpecError) as e:
        archspec.loads(bad)
    (problem,) = e.value.problems
    assert problem.path == ("model", "norm", "backend") and "cudnn" in problem.message


def test_every_config_is_derived_once_knowing_the_depth(monkeypatch):
    """Resolve expands the layout first, so derive() runs once per component, with the model's
    real n_sublayers (a derived default may depend on the depth)."""
    from archspec import components as C
    mlp = C.get("mlp")
    seen = []
    original = type(mlp).derive

    def spy(self, cfg, model):
        seen.append(model.n_sublayers)
        return original(self, cfg, model)

    monkeypatch.setattr(type(mlp), "derive", spy)
    archspec.loads("model: {vocab_size: 97, d_model: 64, max_seq_len: 64}\n"
                   "components: {A: {type: attention, n_heads: 4}, F: {type: mlp}}\nlayout: (A F) x 3\n")
    assert seen == [6]


def test_sublayer_costs_take_one_pass():
    """The report's per-sublayer rows cost one pass over the parts (no scan per sublayer)."""
    spec = archspec.load(SPECS / "tiny.yaml")
    acc = account(spec)
    costs = acc.sublayer_costs()
    assert len(costs) == len(spec.sublayers)
    for i, cost in enumerate(costs):
        assert cost.params == sum(p.cost.params for p in acc.parts if p.sublayer == i)


@pytest.mark.parametrize("type_name,old,new", [("mamba2", "headdim", "head_dim"), ("mamba2", "ngroups", "n_groups"),
                                               ("mom", "capacity", "capacity_factor"), ("mom", "conv_size", "d_conv")])
def test_a_renamed_key_is_an_error_that_names_the_new_one(type_name, old, new):
    """One name per concept across component types: the old spelling is a located error."""
    text = ("model: {vocab_size: 97, d_model: 64, max_seq_len: 64}\n"
            f"components: {{X: {{type: {type_name}, {old}: 2}}}}\nlayout: X\n")
    with pytest.raises(archspec.SpecError) as e:
        archspec.loads(text)
    (problem,) = e.value.problems
    assert problem.path == ("components", "X", old)
    assert problem.message == f"unknown key '{old}'" and problem.hint == f"'{old}' was renamed to '{new}'"
    assert (problem.loc.line, problem.loc.col) == (2, text.splitlines()[1].index(old) + 1)  # at the key
