"""Weights shared across sublayers (Component.shared_params): counted once in the accounting,
stored once in the model and its checkpoint, trained by every user, and instances that disagree
on a shared tensor's shape are a located error. A toy component, registered only here, uses a
shared lookup table the way PKM's shared values do."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import archspec
from archspec import components as C
from archspec.accounting import account
from archspec.components.base import Component, Flops, register
from archspec.components.modules import ComponentModule
from archspec.errors import SpecError
from archspec.graph import component_graph
from archspec.schema import strict_schema

from helpers import assert_located


class ToyShared(Component):
    """y = x W^T + mean_rows(T)  with a table T [rows, d] shared by every instance of a group.

    x: [B, T, d]; FLOPs: 2 T d d (the projection)."""

    type = "toy_shared"
    schema = {"properties": {
        "rows": {"type": "integer", "minimum": 1, "default": 8, "description": "table rows"},
        "group": {"type": "string", "default": "a", "description": "instances of a group share"}}}
    example = {"rows": 8}

    def own_param_shapes(self, cfg, model):
        return {"proj.weight": (model.d_model, model.d_model)}

    def shared_params(self, cfg, model):
        return {f"toy_{cfg['group']}": {"table": (cfg["rows"], model.d_model)}}

    def build_shared(self, key, cfg, model):
        return ToyShared.Table(cfg["rows"], model.d_model)

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        return Flops(matmul=2 * seq_len * model.d_model ** 2)

    class Table(ComponentModule):
        def __init__(self, rows, d):
            super().__init__()
            self.table = nn.Parameter(torch.empty(rows, d))

        def reset_parameters(self):
            nn.init.normal_(self.table)

    class Module(ComponentModule):
        def __init__(self, cfg, model):
            super().__init__()
            self.key = f"toy_{cfg['group']}"
            self.proj = nn.Linear(model.d_model, model.d_model, bias=False)

        def reset_parameters(self):
            nn.init.normal_(self.proj.weight, std=0.02)

        def forward(self, x, ctx):
            return self.proj(x) + ctx.shared[self.key].table.mean(0).to(x.dtype)


@pytest.fixture(autouse=True)
def toy_registered():
    register(ToyShared)
    strict_schema.cache_clear()
    yield
    del C.REGISTRY["toy_shared"]
    strict_schema.cache_clear()


SPEC = """\
model: {vocab_size: 40, d_model: 16, max_seq_len: 32}
components:
  P: {type: toy_shared, rows: 8}
  Q: {type: toy_shared, rows: 8}
  R: {type: toy_shared, rows: 5, group: b}
  F: {type: mlp, d_ff: 32}
layout: P F Q F P R
"""


def test_shared_table_is_counted_once_and_built_once():
    spec = archspec.loads(SPEC)
    acc = account(spec)
    shared = {p.name: p.cost.params for p in acc.parts if p.name.startswith("shared.")}
    assert shared == {"shared.toy_a": 8 * 16, "shared.toy_b": 5 * 16}  # three users of toy_a, once
    model = archspec.build(spec, seed=0)
    names = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert names == acc.param_shapes()
    assert sum(p.numel() for p in model.parameters()) == acc.total().params
    assert [k for k in model.state_dict() if "table" in k] == ["shared.toy_a.table", "shared.toy_b.table"]


def test_every_user_trains_the_shared_table():
    """d loss / d table[r] = sum over the users u of (sum over B, T of d loss / d y_u) / rows:
    the gradient collects every user's contribution, not just the first's."""
    model = archspec.build(archspec.loads(SPEC), seed=0)
    out_grads = []
    for i in (0, 2, 4):
        member = next(iter(model.sublayers[i].members.values()))
        member.register_full_backward_hook(lambda mod, gin, gout: out_grads.append(gout[0]))
    tokens = torch.randint(0, 40, (2, 12))
    model(tokens, labels=tokens).loss.backward()
    assert len(out_grads) == 3
    expected = sum(g.sum((0, 1)) for g in out_grads) / 8
    grad = model.shared["toy_a"].table.grad
    assert torch.allclose(grad, expected.expand_as(grad), rtol=1e-5, atol=1e-8)


def test_graph_links_the_shared_weights_to_each_user():
    g = component_graph(archspec.loads(SPEC))
    users = sorted(b for a, b, k in g.edges(data="kind") if k == "shared" and a == "shared.toy_a")
    assert users == ["sublayers.0.P", "sublayers.2.Q", "sublayers.4.P"]


def test_instances_disagreeing_on_a_shared_shape_is_a_located_error():
    with pytest.raises(SpecError) as err:
        archspec.loads(SPEC.replace("Q: {type: toy_shared, rows: 8}", "Q: {type: toy_shared, rows: 6}"))
    p = assert_located(err.value.problems, path=("components", "Q"), at=4, words="toy_a")
    assert "'P'" in p.message and p.hint


def test_save_and_reload_keep_one_copy(tmp_path):
    spec = archspec.loads(SPEC)
    model = archspec.build(spec, seed=0)
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    fresh = archspec.build(spec, seed=1)
    fresh.load_state_dict(torch.load(path))
    assert torch.equal(fresh.shared["toy_a"].table, model.shared["toy_a"].table)


def test_shared_active_parameters_sum_the_users_capped_at_the_table():
    class Sparse(ToyShared):
        type = "toy_sparse"

        def shared_active_param_count(self, key, cfg, model):
            return 2 * model.d_model  # reads two rows per token

    register(Sparse)
    try:
        strict_schema.cache_clear()
        spec = archspec.loads(SPEC.replace("type: toy_shared, rows: 8}", "type: toy_sparse, rows: 8}"))
        parts = {p.name: p.cost for p in account(spec).parts}
        assert parts["shared.toy_a"].params == 8 * 16
        assert parts["shared.toy_a"].active_params == 3 * 2 * 16  # three users, two rows each
        many = archspec.loads(SPEC.replace("type: toy_shared, rows: 8}", "type: toy_sparse, rows: 8}")
                              .replace("layout: P F Q F P R", "layout: P P P P P Q"))
        assert {p.name: p.cost for p in account(many).parts}["shared.toy_a"].active_params == 8 * 16
    finally:
        del C.REGISTRY["toy_sparse"]
