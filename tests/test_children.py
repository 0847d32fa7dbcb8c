"""Components built from other components (Component.children): the framework prefixes the
children's parameters, adds their costs and draws them in the graph; MoE's shared experts and
the gated adapter (docs/components.md's example) are built this way."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archspec
from archspec import components as C
from archspec.accounting import account
from archspec.components.base import FlopConvention, ModelConfig, child
from archspec.graph import component_graph
from archspec.plan import CHILD, plan

SPECS = Path(__file__).resolve().parent.parent / "specs"
MODEL = ModelConfig(vocab_size=97, d_model=32, max_seq_len=64)


@pytest.mark.parametrize("type_name,cfg,name", [("moe", {"n_experts": 4, "topk": 2, "d_ff": 16,
                                                         "n_shared_experts": 2, "shared_d_ff": 8}, "shared"),
                                               ("gated_adapter", {"bottleneck": 12}, "adapter")])
def test_parent_adds_its_childrens_parameters_and_costs(type_name, cfg, name):
    comp = C.get(type_name)
    cfg = comp.derive({**_defaults(type_name), **cfg}, MODEL)
    (kid,) = comp.children(cfg, MODEL).values()
    own, mine = comp.own_param_shapes(cfg, MODEL), kid.component.param_shapes(kid.config, MODEL)
    assert comp.param_shapes(cfg, MODEL) == {**own, **{f"{name}.{k}": s for k, s in mine.items()}}
    module = comp.build(cfg, MODEL)
    assert {n: tuple(p.shape) for n, p in module.named_parameters()} == comp.param_shapes(cfg, MODEL)
    conv = FlopConvention()
    assert comp.flops(cfg, MODEL, 20, conv) == comp.own_flops(cfg, MODEL, 20, conv) + kid.component.flops(
        kid.config, MODEL, 20, conv)
    assert comp.active_param_count(cfg, MODEL) == (comp.own_active_param_count(cfg, MODEL)
                                                   + kid.component.active_param_count(kid.config, MODEL))


def test_child_fills_the_schema_defaults_then_derives():
    kid = child("mlp", MODEL, activation="gelu")
    assert kid.config["d_ff"] == 4 * MODEL.d_model  # derived: plain activation -> 4d
    assert kid.config["bias"] is False and kid.config["multiple_of"] == 256  # schema defaults


def test_gated_adapter_activation_estimate_is_what_autograd_saves():
    """The estimate (own: the gate and the adapter's output; the child: its mlp with the input)
    equals the bytes of the distinct storages autograd saves, parameters left out."""
    comp = C.get("gated_adapter")
    cfg = comp.derive({**_defaults("gated_adapter"), "bottleneck": 12}, MODEL)
    module = comp.build(cfg, MODEL)
    module.reset_parameters()
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(3, 20, MODEL.d_model, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    assert sum(seen.values()) == 3 * comp.activation_bytes(cfg, MODEL, 20)


def test_moe_report_counts_the_shared_experts_once():
    spec = archspec.load(SPECS / "moe-tiny.yaml")  # n_shared_experts: 1
    model = archspec.build(spec, meta=True)
    built = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert built == account(spec).param_shapes()
    assert any(".members.moe.shared.gate_proj.weight" in n for n in built)


def test_graph_draws_children_included_in_their_parent():
    spec = archspec.load(SPECS / "adapter-tiny.yaml")
    acc = account(spec)
    g = component_graph(spec, acc)
    kids = [n for n, role in g.nodes(data="role") if role == CHILD]
    assert kids == ["sublayers.2.G.adapter", "sublayers.5.G.adapter"]
    assert g.edges["sublayers.2.G", "sublayers.2.G.adapter"]["kind"] == "child"
    assert g.nodes["sublayers.2.G.adapter"]["included_in"] == "sublayers.2.G"
    assert g.nodes["sublayers.2.G.adapter"]["type"] == "mlp"
    # the parents' figures hold their children: summing the others gives the total
    assert sum(p for n, p in g.nodes(data="params") if "included_in" not in g.nodes[n]) == acc.total().params
    node = plan(spec)["sublayers.2.G"]
    assert [c.module_path for c in node.children] == ["sublayers.2.members.G.adapter"]


def _defaults(type_name: str) -> dict:
    props = C.get(type_name).schema["properties"]
    return {k: p["default"] for k, p in props.items() if "default" in p}
