"""Accounting exactness: the analytic accounting agrees with the built modules, parameter for
parameter, for every shipped spec and for hand-written edge cases."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from archspec.accounting import account
from archspec.codegen.build import build
from archspec.components.base import causal_pairs
from archspec.report import report
from archspec.spec import load, loads

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
ALL_SPECS = sorted(SPECS_DIR.glob("*.yaml"))
# specs whose weights are small enough to build for real on a CPU in well under a second
SMALL_PARAMS = 5_000_000


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def test_specs_are_found():
    names = {p.name for p in ALL_SPECS}
    assert {"tiny.yaml", "llama-2-7b.yaml", "llama-2-70b.yaml"} <= names


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.stem)
def test_meta_build_matches_accounting(path):
    spec = load(path)
    acc = account(spec)
    model = build(spec, meta=True)
    assert _shapes(model) == acc.param_shapes()
    n = sum(p.numel() for p in model.parameters())
    assert n == acc.total().params == report(spec)["totals"]["params"]


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.stem)
def test_real_build_of_small_specs_matches_accounting(path):
    spec = load(path)
    acc = account(spec)
    if acc.total().params > SMALL_PARAMS:
        # the large specs are covered by the meta build above; assert that is why we stop here
        assert acc.total().params > SMALL_PARAMS
        return
    model = build(spec, seed=0)
    assert _shapes(model) == acc.param_shapes()
    assert sum(p.numel() for p in model.parameters()) == acc.total().params
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_llama_2_7b_exact_counts():
    rep = report(load(SPECS_DIR / "llama-2-7b.yaml"))
    t = rep["totals"]
    d, v, ff, layers = 4096, 32000, 11008, 32
    embedding = v * d                       # 131,072,000
    head = v * d                            # untied
    per_layer = 4 * d * d + 3 * d * ff + 2 * d  # q,k,v,o + gate,up,down + two RMSNorm scales
    non_embedding = layers * per_layer + d  # + the final norm
    assert embedding == 131_072_000
    assert per_layer == 202_383_360
    assert t["params"] == 6_738_415_616 == embedding + head + non_embedding
    assert t["embedding_params"] == embedding
    assert t["head_params"] == head
    assert t["non_embedding_params"] == non_embedding == 6_476_271_616
    assert t["weight_bytes"] == 2 * 6_738_415_616  # bfloat16


def test_llama_2_70b_published_count():
    acc = account(load(SPECS_DIR / "llama-2-70b.yaml"))
    assert acc.total().params == 68_976_648_192


TINY = """
model: {name: t, vocab_size: 97, d_model: 32, max_seq_len: 64, tie_embeddings: TIED}
components:
  A: {type: attention, n_heads: 4, n_kv_heads: 2}
  F: {type: mlp, activation: swiglu, d_ff: 48}
layout: "(A F) x 2"
"""


@pytest.mark.parametrize("tied", [True, False])
def test_tied_embeddings_counted_once(tied):
    spec = loads(TINY.replace("TIED", str(tied).lower()))
    acc = account(spec)
    model = build(spec, seed=0)
    assert acc.embedding_params == 97 * 32
    assert acc.head_params == (0 if tied else 97 * 32)
    names = set(dict(model.named_parameters()))
    assert ("lm_head.weight" in names) is (not tied)
    assert set(model.state_dict()) == names  # no duplicate or missing entry for the shared table
    assert sum(p.numel() for p in model.parameters()) == acc.total().params
    untied = account(loads(TINY.replace("TIED", "false"))).total().params
    assert acc.total().params == untied - (97 * 32 if tied else 0)
    if tied:  # the head really uses the embedding table
        tokens = torch.randint(0, 97, (1, 5))
        with torch.no_grad():
            model.embedding.weight.zero_()
            assert torch.count_nonzero(model(tokens).logits) == 0


def test_parallel_group_adds_gates():
    seq = loads(TINY.replace("TIED", "true"))
    par = loads(TINY.replace("TIED", "true").replace("(A F) x 2", "[A | F] x 2"))
    shapes = account(par).param_shapes()
    assert shapes["sublayers.0.gates"] == (2,) and shapes["sublayers.1.gates"] == (2,)
    assert "sublayers.0.gates" not in account(seq).param_shapes()
    # [A | F] x 2 has 2 sublayers (2 norms) where (A F) x 2 has 4: 2 norms fewer, 2 gate pairs more
    assert account(par).total().params == account(seq).total().params - 2 * 32 + 2 * 2
    model = build(par, seed=0)
    assert _shapes(model) == shapes
    assert torch.equal(model.sublayers[0].gates.detach(), torch.ones(2))


OVERRIDE = """
model: {name: o, vocab_size: 64, d_model: 32, max_seq_len: 64}
components:
  A: {type: attention, n_heads: 4, window: 16}
  F: {type: mlp, d_ff: 64}
layout: "(A F) x 2"
overrides: OVERRIDES
"""


def _override_spec(tmp_path, overrides: str):
    path = tmp_path / f"override-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(OVERRIDE.replace("OVERRIDES", overrides))
    return load(path)


def test_override_changes_exactly_one_sublayer_d_ff(tmp_path):
    base = account(_override_spec(tmp_path, "[]"))
    spec = _override_spec(tmp_path, "[{at: 1, set: {d_ff: 96}}]")
    acc = account(spec)
    b, o = base.param_shapes(), acc.param_shapes()
    changed = {k for k in b if b[k] != o.get(k)}
    assert set(b) == set(o)
    assert changed == {f"sublayers.1.members.F.{n}.weight" for n in ("gate_proj", "up_proj", "down_proj")}
    assert o["sublayers.1.members.F.down_proj.weight"] == (32, 96)
    assert o["sublayers.3.members.F.down_proj.weight"] == (32, 64)
    assert acc.total().params - base.total().params == 3 * 32 * (96 - 64)
    model = build(spec, seed=0)
    assert _shapes(model) == o
    assert model.sublayers[1].members["F"].up_proj.out_features == 96
    assert model.sublayers[3].members["F"].up_proj.out_features == 64
    rows = report(spec)["sublayers"]
    assert rows[1]["overrides"] == {"F": {"d_ff": 96}} and rows[3]["overrides"] == {}


def test_override_window_on_one_attention_sublayer(tmp_path):
    spec = _override_spec(tmp_path, "[{at: 2, set: {window: null}}]")
    base = account(_override_spec(tmp_path, "[]"), seq_len=64)
    acc = account(spec, seq_len=64)
    assert acc.param_shapes() == base.param_shapes()  # a window has no parameters
    cost = {p.name: p.cost for p in acc.parts}
    base_cost = {p.name: p.cost for p in base.parts}
    differing = {n for n in cost if cost[n] != base_cost[n]}
    assert differing == {"sublayers.2.A"}
    # 4 heads x 8 dims: full causal keeps 64 positions in the cache, the window 16
    assert cost["sublayers.2.A"].state_bytes == 2 * 4 * 8 * 64 * 4
    assert cost["sublayers.0.A"].state_bytes == 2 * 4 * 8 * 16 * 4
    model = build(spec, seed=0)
    assert model.sublayers[2].members["A"].window is None
    assert model.sublayers[0].members["A"].window == 16


@pytest.mark.parametrize("window", [None, 8, 100])
@pytest.mark.parametrize("seq_len", [1, 17, 128])
@pytest.mark.parametrize("dtype,nbytes", [("float32", 4), ("bfloat16", 2)])
def test_kv_cache_bytes(window, seq_len, dtype, nbytes):
    spec = loads(f"""
model: {{name: kv, vocab_size: 64, d_model: 48, max_seq_len: 128, dtype: {dtype}}}
components:
  A: {{type: attention, n_heads: 6, n_kv_heads: 2, window: {'null' if window is None else window}}}
layout: "A"
""")
    part = next(p for p in account(spec, seq_len).parts if p.type == "attention")
    kept = seq_len if window is None else min(seq_len, window)
    assert part.cost.state_bytes == 2 * 2 * 8 * kept * nbytes
    assert report(spec, seq_len)["totals"]["inference_state_bytes_per_sequence"] == part.cost.state_bytes


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.stem)
def test_report_totals_are_sums_of_rows(path):
    spec = load(path)
    rep = report(spec, seq_len=min(64, spec.model.max_seq_len))
    t, comps = rep["totals"], rep["components"]
    for key, total_key in (("params", "params"), ("active_params", "active_params"),
                           ("state_bytes", "inference_state_bytes_per_sequence"),
                           ("activation_bytes", "activation_bytes_per_sequence")):
        assert sum(c[key] for c in comps) == t[total_key], key
        if key in ("params", "state_bytes"):
            assert sum(r[key] for r in rep["by_type"]) == t[total_key]
            # everything but the embedding, final norm and head lives in a sublayer
            outside = sum(c[key] for c in comps if c["sublayer"] is None)
            assert sum(r[key] for r in rep["sublayers"]) + outside == t[total_key]
    assert sum(r["count"] for r in rep["by_type"]) == len(comps)
    t_seq = rep["seq_len"]
    per_seq = sum(c["forward_flops_by_kind"]["total"] for c in comps)
    assert per_seq == t["forward_flops_per_sequence"]
    # per-token values are per-sequence integers divided by seq_len: equal up to float rounding
    assert math.isclose(sum(c["forward_flops_per_token"] for c in comps), t["forward_flops_per_token"],
                        rel_tol=1e-12)
    assert t["forward_flops_per_token"] == per_seq / t_seq
    assert t["training_flops_per_token"] == 3 * per_seq / t_seq
    by_kind = t["forward_flops_per_token_by_kind"]
    assert math.isclose(sum(by_kind.values()), t["forward_flops_per_token"], rel_tol=1e-12)
    assert t["non_embedding_params"] == t["params"] - t["embedding_params"] - t["head_params"]


def test_flops_scale_with_seq_len():
    spec = loads(TINY.replace("TIED", "false").replace("max_seq_len: 64", "max_seq_len: 512"))
    a, b = account(spec, 128), account(spec, 256)
    fa, fb = a.total().flops, b.total().flops
    # projections, MLP and head cost the same per token at any length
    assert fa.matmul / 128 == fb.matmul / 256
    # attention scores+values: 4 hd H per kept pair; T(T+1)/2 pairs with a causal mask
    h, hd = 4, 8
    assert fa.attention == 2 * 4 * hd * h * causal_pairs(128)  # 2 attention sublayers
    assert fb.attention == 2 * 4 * hd * h * 256 * 257 // 2
    # per token the attention part grows ~linearly with T: (T+1)/2 pairs per token
    assert fb.attention / 256 / (fa.attention / 128) == pytest.approx(257 / 129, rel=1e-12)
    assert fb.total / 256 > fa.total / 128
    dense = account(spec, 256, convention=type(b.convention)("dense")).total().flops
    assert dense.attention == 2 * 4 * hd * h * 256 * 256


def test_sliding_window_flops_become_constant_per_token():
    spec = loads(TINY.replace("TIED", "false").replace("max_seq_len: 64", "max_seq_len: 512")
                 .replace("n_kv_heads: 2}", "n_kv_heads: 2, window: 32}"))
    a, b = account(spec, 256).total().flops, account(spec, 512).total().flops
    # 32*33/2 + (T-32)*32 pairs: the per-token increment beyond the window is exactly 32 pairs
    assert b.attention - a.attention == 2 * 4 * 8 * 4 * 32 * 256
