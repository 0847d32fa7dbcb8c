"""The component contract, checked for every registered component type, so a new component
file is tested by existing code the moment it registers (see docs/components.md).

For each layout component, with its `example` config in a one-sublayer model:
exact parameter shapes, matmul + attention FLOPs equal to FlopCounterMode's count, causality,
a gradient for every parameter, sane state and activation figures, a documented schema whose
defaults are valid, a docstring with the math, a reference backend, and a shipped spec using it.
A component with a `triton` backend: its example is a config the kernels take, and the kernels
(in triton's interpreter without a GPU) give the reference's module, outputs, gradients and
measured FLOPs.
"""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch

import archspec
from archspec import components as C
from archspec.accounting import account
from archspec.components.base import FlopConvention
from archspec.flopcount import analytic_comparable, measure_flopcounter
from archspec.schema import component_schema

SPECS = Path(__file__).resolve().parent.parent / "specs"
LAYOUT_TYPES = C.types_with_role("sublayer")
ALL_TYPES = sorted(C.REGISTRY)


def one_sublayer_spec(type_name: str, extra: str = ""):
    config = json.dumps({"type": type_name, **C.get(type_name).example})
    return archspec.loads(
        "model: {vocab_size: 97, d_model: 64, max_seq_len: 64}\n"
        f"components:\n  X: {config}\nlayout: X\n{extra}")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.mark.parametrize("type_name", LAYOUT_TYPES)
def test_parameters_are_exact(type_name):
    spec = one_sublayer_spec(type_name)
    model = archspec.build(spec, seed=0)
    built = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert built == account(spec).param_shapes()


@pytest.mark.parametrize("type_name", LAYOUT_TYPES)
@pytest.mark.parametrize("seq_len", [7, 40])
def test_flops_equal_flopcountermode(type_name, seq_len):
    """Integer counts of the same matmuls: exact (see archspec/flopcount.py for the convention).
    A component whose work depends on the data (routing) must fall within its stated bounds;
    its own tests check the count exactly for the routing that happened."""
    spec = one_sublayer_spec(type_name)
    model = archspec.build(spec, seed=0)
    tokens = torch.randint(0, 97, (2, seq_len))
    measured = measure_flopcounter(model, tokens)
    expected = analytic_comparable(spec, seq_len, batch=2)
    comp, inst = C.get(type_name), spec.sublayers[0].members[0]
    bounds = comp.flops_bounds(inst.config, spec.model, seq_len, FlopConvention("dense"))
    if bounds is None:
        assert measured == expected
    else:
        own = comp.flops(inst.config, spec.model, seq_len, FlopConvention("dense"))
        rest = expected - 2 * (own.matmul + own.attention)
        assert rest + 2 * bounds[0] <= measured <= rest + 2 * bounds[1]


@pytest.mark.parametrize("type_name", LAYOUT_TYPES)
def test_causal(type_name):
    spec = one_sublayer_spec(type_name)
    model = archspec.build(spec, dtype="float32", seed=0).eval()
    tokens = torch.randint(0, 97, (2, 24))
    changed = tokens.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 97
    with torch.no_grad():
        a, b = model(tokens).logits, model(changed).logits
    assert torch.equal(a[:, :12], b[:, :12])  # positions before the change see the same inputs
    assert not torch.equal(a[:, 12:], b[:, 12:])  # and the change is visible after it


@pytest.mark.parametrize("type_name", LAYOUT_TYPES)
def test_every_parameter_gets_a_finite_gradient(type_name):
    model = archspec.build(one_sublayer_spec(type_name), seed=0)
    tokens = torch.randint(0, 97, (2, 24))
    out = model(tokens, labels=tokens)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("type_name", LAYOUT_TYPES)
def test_state_and_activation_figures_are_sane(type_name):
    comp = C.get(type_name)
    spec = one_sublayer_spec(type_name)
    inst = spec.sublayers[0].members[0]
    states = [comp.state_bytes(inst.config, spec.model, t) for t in (1, 16, 64)]
    assert all(s >= 0 for s in states) and states == sorted(states)  # never shrinks with T
    acts = [comp.activation_bytes(inst.config, spec.model, t) for t in (16, 32)]
    assert 0 < acts[0] < acts[1]


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_schema_is_documented_and_defaults_are_valid(type_name):
    schema = component_schema(type_name)
    jsonschema.Draft202012Validator.check_schema(schema)
    for key, prop in schema["properties"].items():
        assert prop.get("description"), f"{type_name}.{key} has no description"
        if "default" in prop:
            jsonschema.validate(prop["default"], prop)
    if C.get(type_name).role == "sublayer":
        jsonschema.validate({"type": type_name, **C.get(type_name).example}, schema)


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_docstring_states_the_math(type_name):
    doc = inspect.getmodule(type(C.get(type_name))).__doc__ or ""
    assert "[" in doc and "]" in doc, f"{type_name}: no shapes in the module docstring"
    if C.get(type_name).role in ("sublayer", "norm", "head"):
        assert "FLOPs" in doc, f"{type_name}: the docstring does not state its FLOPs"


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_has_a_reference_backend(type_name):
    comp = C.get(type_name)
    assert ("reference" in comp.backends) == comp.has_module


KERNEL_TYPES = [t for t in LAYOUT_TYPES if "triton" in C.get(t).backends]


def _rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("type_name", KERNEL_TYPES)
def test_triton_backend_matches_reference(type_name, kernel_device):
    spec = one_sublayer_spec(type_name)
    config = spec.sublayers[0].members[0].config
    assert C.get(type_name).backends["triton"].supports(config, spec.model) is None, \
        "the example must be a config the kernels take"
    models = {b: archspec.build(spec, seed=0, backend={"X": b}) for b in ("reference", "triton")}
    assert models["triton"].backends["sublayers.0.X"] == "triton"
    ref, fused = (models[b].state_dict() for b in ("reference", "triton"))
    assert ref.keys() == fused.keys() and all(torch.equal(ref[k], fused[k]) for k in ref)
    tokens = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))
    grads = {}
    for b, model in models.items():
        logits = model(tokens).logits
        logits.square().mean().backward()
        grads[b] = (logits, {n: p.grad for n, p in model.named_parameters()})
    # fp32 1e-5: the kernels' own agreement with the reference (tests/test_*_kernels.py) through
    # a one-layer model
    assert _rel_err(grads["triton"][0], grads["reference"][0]) <= 1e-5
    for name, g in grads["reference"][1].items():
        assert _rel_err(grads["triton"][1][name], g) <= 1e-5, name
    # the kernels' registered FLOPs measure what the reference's ops measure (same routing)
    assert measure_flopcounter(models["triton"], tokens) == measure_flopcounter(models["reference"], tokens)


def test_every_layout_component_is_used_by_a_shipped_spec():
    used = {m.type for path in SPECS.glob("*.yaml")
            for sub in archspec.load(path).sublayers for m in sub.members}
    assert set(LAYOUT_TYPES) <= used, f"no spec in specs/ uses {set(LAYOUT_TYPES) - used}"
