"""`archspec diff` and archspec.diff(): structural diff of resolved specs, alignment of
sublayers by identity, cost deltas, checkpoint compatibility checked against the built modules'
state dicts, budgets, ignore paths, exit codes and the three output formats."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import archspec
from archspec.accounting import account
from archspec.cli import main
from archspec.diff import (EXIT_BUDGET, Budget, DiffOptionError, SpecDiff, check_ignore, render,
                           to_json)
from archspec.spec import load

SPECS = Path(__file__).resolve().parent.parent / "specs"
TINY = str(SPECS / "tiny.yaml")
INSERTED = str(SPECS / "tiny-inserted.yaml")
MOM, MOM8 = str(SPECS / "mom-tiny.yaml"), str(SPECS / "mom-tiny-8mem.yaml")
MAMBA, MAMBA_ATTN = str(SPECS / "mamba-tiny.yaml"), str(SPECS / "mamba-tiny-attn.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def variant(write):
    """variant(body, name) -> path of a spec that extends specs/tiny.yaml (or `base`)."""
    def _variant(body: str, name: str = "variant.yaml", base: str = TINY):
        return str(write(f"extends: {base}\n" + body, name))
    return _variant


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["diff", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- identical and equivalent specs -------------------------------------------------------------
def test_identical_specs_list_nothing_and_exit_0(capsys):
    d = archspec.diff(TINY, TINY)
    assert not d.different and d.exit_code == 0
    assert d.model == [] and d.components == [] and d.sublayers == []
    assert d.alignment == [(i, i) for i in range(4)]
    assert not d.costs.changed and d.compatibility.identical
    assert d.compatibility.reusable_params == d.compatibility.params_b == 115_008
    code, out, err = cli(capsys, TINY, TINY)
    assert (code, err) == (0, "")
    assert "no differences" in out and "Changes" not in out and "Checkpoint" not in out
    code, out, _ = cli(capsys, TINY, TINY, "--format", "json")
    j = json.loads(out)
    assert code == 0 and j["different"] is False and j["exit_code"] == 0
    assert j["model"] == j["components"] == j["sublayers"] == []


@pytest.mark.parametrize("layout", ['"AFAF"', "[A, F, A, F]", '"(A F) x 1 (A F)"',
                                    "{layers: 2, sublayers: [{use: A}, {use: F}]}"])
def test_layout_syntaxes_resolving_to_the_same_model_do_not_differ(layout, variant, capsys):
    path = variant(f"layout: {layout}\n")
    d = archspec.diff(TINY, path)
    assert not d.different and d.compatibility.identical
    assert cli(capsys, TINY, path)[0] == 0


def test_values_written_differently_but_equal_after_resolution_do_not_differ(variant):
    # tiny writes n_heads through vars and d_ff as an expression; head_dim is derived
    path = variant("components:\n  A: {n_heads: 4, head_dim: 16}\n  F: {d_ff: 192}\n")
    assert not archspec.diff(TINY, path).different


def test_an_unused_definition_is_not_part_of_the_model(variant):
    path = variant("components:\n  X: {type: mlp, d_ff: 32}\n")
    assert not archspec.diff(TINY, path).different


# --- a changed hyperparameter ---------------------------------------------------------------------
def test_changed_hyperparameter_mom_memories(capsys):
    a, b = load(MOM), load(MOM8)
    d = archspec.diff(a, b)
    assert d.different and d.exit_code == 1
    assert d.model == [] and d.sublayers == []  # the definition's change is listed once
    (c,) = d.components
    assert (c.change, c.symbol_a, c.type_a, c.uses_a, c.uses_b) == ("changed", "mom", "mom", 2, 2)
    assert [(f.field, f.a, f.b) for f in c.fields] == [("n_memories", 4, 8)]
    # deltas are the two accountings' figures, absolute and in percent
    ta, tb = account(a, 128).total(), account(b, 128).total()
    assert (d.costs.params.a, d.costs.params.b) == (ta.params, tb.params)
    assert d.costs.params.delta == tb.params - ta.params == 68_096
    assert d.costs.params.pct == pytest.approx((tb.params - ta.params) / ta.params * 100)
    assert d.costs.active_params.delta == tb.active_params - ta.active_params == 512  # top-2 of 8
    f = d.costs.flops_per_token[128]
    assert f.delta * 128 == tb.flops.total - ta.flops.total
    assert f.pct == pytest.approx((tb.flops.total - ta.flops.total) / ta.flops.total * 100)
    s = d.costs.state_bytes[128]
    assert (s.a, s.b) == (ta.state_bytes, tb.state_bytes)
    (mom_row,) = [r for r in d.costs.by_type if r.changed]
    assert mom_row.type == "mom" and mom_row.params.delta == 68_096
    # the router grows, memories 4-7 are new, everything else loads
    c = d.compatibility
    assert [(x[0], x[2], x[3]) for x in c.reshaped] == [
        (f"sublayers.{i}.members.mom.router.weight", (4, 64), (8, 64)) for i in (0, 2)]
    assert all(re.search(r"\.(k|v|b|a)_proj\.[4-7]\.weight$", n) for n, _ in c.new)
    assert len(c.new) == 2 * 4 * 4 and c.removed == [] and c.renamed == []
    code, out, _ = cli(capsys, MOM, MOM8)
    assert code == 1
    assert "n_memories 4 -> 8" in out and "+68,096" in out and "+38.47%" in out
    assert "router.weight [4, 64] -> [8, 64]" in out


def test_changed_topk_keeps_parameters_and_lowers_active_ones(variant):
    path = variant("components:\n  mom: {topk: 1}\n", base=MOM)
    d = archspec.diff(MOM, path)
    assert [(f.field, f.a, f.b) for c in d.components for f in c.fields] == [("topk", 2, 1)]
    assert d.costs.params.delta == 0 and d.costs.active_params.delta < 0
    assert d.compatibility.identical  # same shapes: the whole checkpoint loads


def test_moe_top2_to_top1(variant):
    moe, top1 = str(SPECS / "moe-tiny.yaml"), str(SPECS / "moe-tiny-top1.yaml")
    d = archspec.diff(moe, top1)
    assert [(c.symbol_a, [(f.field, f.a, f.b) for f in c.fields]) for c in d.components] == [
        ("moe", [("topk", 2, 1), ("renormalize", True, False)])]
    # sublayer 3 has an override (router, chunk_size) that the change leaves alone: not re-listed
    assert d.sublayers == []
    assert d.costs.params.delta == 0 and d.costs.active_params.delta < 0
    assert d.compatibility.identical
    # an override that changes too is listed, with the definition's change and its own
    path = variant("overrides:\n  - at: 3\n    set: {router: chunk, chunk_size: 32}\n", base=top1)
    (s,) = archspec.diff(moe, path).sublayers
    assert s.b_index == 3 and ("chunk_size", 16, 32) in {(f.field, f.a, f.b) for f in s.members[0].fields}


def test_a_model_field_change(variant, capsys):
    path = variant("model: {tie_embeddings: false}\n")
    d = archspec.diff(TINY, path)
    assert [(f.field, f.a, f.b) for f in d.model] == [("model.tie_embeddings", True, False)]
    assert [n for n, _ in d.compatibility.new] == ["lm_head.weight"]
    assert d.costs.params.delta == 256 * 64
    back = archspec.diff(path, TINY)
    assert [n for n, _ in back.compatibility.removed] == ["lm_head.weight"]


def test_an_override_is_a_changed_sublayer_with_the_override_shown(variant, capsys):
    path = variant("overrides:\n  - at: 2\n    set: {n_kv_heads: 1, window: 32}\n")
    d = archspec.diff(TINY, path)
    assert d.components == []
    (s,) = d.sublayers
    assert (s.change, s.a_index, s.b_index) == ("changed", 2, 2)
    assert {(f.field, f.a, f.b) for f in s.members[0].fields} == {("n_kv_heads", 2, 1), ("window", None, 32)}
    assert s.overrides_b == {"A": {"n_kv_heads": 1, "window": 32}}
    assert [(x[0], x[2], x[3]) for x in d.compatibility.reshaped] == [
        ("sublayers.2.members.A.k_proj.weight", (32, 64), (16, 64)),
        ("sublayers.2.members.A.v_proj.weight", (32, 64), (16, 64))]
    code, out, _ = cli(capsys, TINY, path)
    assert code == 1 and "override in B: A: n_kv_heads=1, window=32" in out


# --- an inserted layer ----------------------------------------------------------------------------
def test_inserted_layer_is_the_only_sublayer_listed(capsys):
    d = archspec.diff(TINY, INSERTED)
    assert [(s.change, s.a_index, s.b_index, s.b_members) for s in d.sublayers] == [
        ("added", None, 2, [("M", "mamba")])]
    assert [(c.change, c.symbol_b, c.type_b) for c in d.components] == [("added", "M", "mamba")]
    assert d.model == []
    assert d.alignment == [(0, 0), (1, 1), (2, 3), (3, 4)] and d.shifted == [(2, 3), (3, 4)]
    assert (d.layout_a, d.layout_b) == ("(A F) x 2", "A F M A F")
    c = d.compatibility
    assert c.reusable_params == c.params_a == 115_008 and c.removed == [] and c.reshaped == []
    assert ("sublayers.2.members.A.q_proj.weight", "sublayers.3.members.A.q_proj.weight", (64, 64)) in c.renamed
    assert {b for _, b, _ in c.renamed} == {n for n in account(load(INSERTED)).param_shapes()
                                            if n.startswith(("sublayers.3.", "sublayers.4."))}
    code, out, err = cli(capsys, TINY, INSERTED)
    assert (code, err) == (1, "")
    assert "(A F) x 2 -> A F M A F (4 -> 5 sublayers)" in out
    assert "shifted sublayers (A -> B, unchanged): 2-3 -> 3-4" in out
    assert "sublayers.2.* -> sublayers.3.* (5), sublayers.3.* -> sublayers.4.* (4)" in out
    changes = out.split("Changes", 1)[1].split("Costs", 1)[0]
    rows = [ln for ln in changes.splitlines() if re.match(r"[-+~=]  [a-z]", ln)]
    assert len(rows) == 2  # M's definition and its sublayer


def test_insertion_in_a_long_periodic_stack_and_a_removal_at_the_end(write):
    base = write("model: {vocab_size: 64, d_model: 32, max_seq_len: 32}\n"
                 "components:\n  M: {type: mamba, d_state: 4}\n  F: {type: mlp, d_ff: 32}\n"
                 "  F2: {type: mlp, d_ff: 64}\n"
                 'layout: "(M F M F) x 6"\n', "base.yaml")
    ins = write(f"extends: {base}\nlayout: \"(M F M F) x 3 F2 (M F M F) x 3\"\n", "ins.yaml")
    d = archspec.diff(base, ins)
    assert [(s.change, s.b_index) for s in d.sublayers] == [("added", 12)]
    assert d.alignment[12:] == [(i, i + 1) for i in range(12, 24)]
    short = write(f"extends: {base}\nlayout: \"(M F M F) x 5\"\n", "short.yaml")
    d = archspec.diff(base, short)
    assert [(s.change, s.a_index) for s in d.sublayers] == [("removed", i) for i in range(20, 24)]
    assert d.compatibility.renamed == []  # the first 20 sublayers keep their names


# --- a swapped component type ---------------------------------------------------------------------
def test_swapped_component_type(capsys):
    d = archspec.diff(MAMBA, MAMBA_ATTN)
    assert [(s.change, s.a_index, s.b_index, s.a_members, s.b_members) for s in d.sublayers] == [
        ("type changed", 2, 2, [("M", "mamba")], [("A", "sparse_attention")])]
    assert [(c.change, c.symbol_b) for c in d.components] == [("added", "A")]
    c = d.compatibility
    assert {n for n, _ in c.removed} == {n for n in account(load(MAMBA)).param_shapes()
                                         if n.startswith("sublayers.2.members.M.")}
    assert {n for n, _ in c.new} == {n for n in account(load(MAMBA_ATTN)).param_shapes()
                                     if n.startswith("sublayers.2.members.A.")}
    assert "sublayers.2.norm.weight" in {n for n, _ in c.unchanged}  # the block's norm stays
    mamba = next(r for r in d.costs.by_type if r.type == "mamba")
    attention = next(r for r in d.costs.by_type if r.type == "sparse_attention")
    assert (mamba.count.a, mamba.count.b, mamba.params.pct) == (2, 1, -50.0)
    assert attention.params.pct is None and attention.params.a == 0  # new: no percentage
    code, out, _ = cli(capsys, MAMBA, MAMBA_ATTN)
    assert code == 1 and "sublayer 2 -> 2  M:mamba -> A:sparse_attention" in out


def test_every_fourth_sublayer_swapped_pairs_up_in_place(write):
    base = write("model: {vocab_size: 64, d_model: 32, max_seq_len: 32}\n"
                 "components:\n  M: {type: mamba, d_state: 4}\n  F: {type: mlp, d_ff: 32}\n"
                 "  S: {type: sparse_attention, n_heads: 2, window: 8, global_every: 8}\n"
                 'layout: "(M F M F) x 6"\n', "base.yaml")
    swap = write(f"extends: {base}\nlayout: \"(M F S F) x 6\"\n", "swap.yaml")
    d = archspec.diff(base, swap)
    assert [(s.change, s.a_index, s.b_index) for s in d.sublayers] == [
        ("type changed", i, i) for i in range(2, 24, 4)]
    assert d.shifted == []


def test_renamed_symbol_is_a_rename_not_a_removal_and_an_addition(variant, capsys):
    path = variant("components:\n  attn: {type: attention, n_heads: 4, n_kv_heads: 2}\n"
                   'layout: "(attn F) x 2"\n')
    d = archspec.diff(TINY, path)
    assert [(c.change, c.symbol_a, c.symbol_b) for c in d.components] == [("renamed", "A", "attn")]
    assert d.sublayers == [] and d.different
    c = d.compatibility
    assert c.reusable_params == c.params_b and len(c.renamed) == 8 and not (c.new or c.removed)
    assert cli(capsys, TINY, path)[0] == 1


# --- extends chains -------------------------------------------------------------------------------
def test_extends_chains(write, capsys):
    mid = write(f"extends: {TINY}\nmodel: {{name: mid}}\ncomponents:\n  A: {{n_kv_heads: 1}}\n", "mid.yaml")
    leaf = write("extends: mid.yaml\nmodel: {name: leaf}\nlayout: \"(A F) x 3\"\n", "leaf.yaml")
    d = archspec.diff(TINY, leaf)
    assert [(c.symbol_a, [(f.field, f.a, f.b) for f in c.fields]) for c in d.components] == [
        ("A", [("n_kv_heads", 2, 1)])]
    assert [(s.change, s.b_index) for s in d.sublayers] == [("added", 4), ("added", 5)]
    d = archspec.diff(mid, leaf)  # the leaf only adds a pair: nothing else is listed
    assert d.components == [] and [s.change for s in d.sublayers] == ["added", "added"]
    assert d.compatibility.reusable_params == d.compatibility.params_a
    code, out, _ = cli(capsys, str(mid), str(leaf), "--format", "json")
    j = json.loads(out)
    assert code == 1 and j["b"]["files"][-3:] == [TINY, str(mid), str(leaf)]
    # the shipped variants are written with extends
    for path in (INSERTED, MOM8, MAMBA_ATTN):
        assert "extends:" in Path(path).read_text() and len(load(path).files) == 2


def test_tiny_wide_changes_width_everywhere():
    d = archspec.diff(TINY, str(SPECS / "tiny-wide.yaml"))
    assert ("model.d_model", 64, 128) in {(f.field, f.a, f.b) for f in d.model}
    fields = {c.symbol_a: {f.field for f in c.fields} for c in d.components}
    assert fields == {"A": {"n_heads"}, "F": {"d_ff"}}  # head_dim stays 16 (128 / 8)
    c = d.compatibility
    assert c.unchanged == c.renamed == c.removed == [] and len(c.reshaped) == 20  # all of A's
    assert {n.split(".")[1] for n, _ in c.new} == {"4", "5"}  # the third pair is new


# --- checkpoint compatibility against the built modules ---------------------------------------------
PAIRS = [(TINY, INSERTED), (INSERTED, TINY), (MOM, MOM8), (MOM8, MOM), (MAMBA, MAMBA_ATTN),
         (TINY, str(SPECS / "tiny-parallel.yaml"))]


@pytest.mark.parametrize("a_path,b_path", PAIRS, ids=lambda p: Path(p).stem)
def test_compatibility_matches_the_state_dicts_and_a_warm_start_loads(a_path, b_path):
    a, b = load(a_path), load(b_path)
    d = archspec.diff(a, b)
    c = d.compatibility
    model_a, model_b = archspec.build(a, seed=1), archspec.build(b, seed=2)
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    # every tensor of each side is listed exactly once, with its real shape
    a_side = ([n for n, _ in c.unchanged] + [x[0] for x in c.renamed] + [x[0] for x in c.reshaped]
              + [n for n, _ in c.removed])
    b_side = ([n for n, _ in c.unchanged] + [x[1] for x in c.renamed] + [x[1] for x in c.reshaped]
              + [n for n, _ in c.new])
    assert sorted(a_side) == sorted(sd_a) and sorted(b_side) == sorted(sd_b)
    for name, shape in c.unchanged + c.new:
        assert tuple((sd_b[name]).shape) == shape
    for x, y, sa, sb in c.reshaped:
        assert tuple(sd_a[x].shape) == sa and tuple(sd_b[y].shape) == sb and sa != sb
    for name, shape in c.removed:
        assert tuple(sd_a[name].shape) == shape
    # a warm start: A's reusable tensors under B's names, same shapes; only new + reshaped missing
    warm = c.warm_start(sd_a)
    assert all(warm[y].shape == sd_b[y].shape for y in warm)
    result = model_b.load_state_dict(warm, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted([n for n, _ in c.new] + [y for _, y, _, _ in c.reshaped])
    loaded = model_b.state_dict()
    assert all(torch.equal(loaded[y], sd_a[x]) for x, y in c.mapping().items())
    assert c.reusable_params == sum(sd_a[x].numel() for x in c.mapping())
    assert c.params_b == sum(t.numel() for t in sd_b.values())
    assert c.params_a == sum(t.numel() for t in sd_a.values())


def test_warm_started_insertion_computes_the_same_as_a_with_a_zeroed_new_block():
    """The mapping is right in meaning, not only in shapes: with the inserted block's output
    projection zeroed, B computes exactly what A computes."""
    a, b = load(TINY), load(INSERTED)
    model_a, model_b = archspec.build(a, seed=3), archspec.build(b, seed=4)
    d = archspec.diff(a, b)
    model_b.load_state_dict(d.compatibility.warm_start(model_a.state_dict()), strict=False)
    with torch.no_grad():
        model_b.sublayers[2].members["M"].out_proj.weight.zero_()
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model_b(tokens).logits, model_a(tokens).logits)


def test_warm_start_casts_to_b_dtype(variant):
    path = variant("model: {dtype: bfloat16}\n")
    d = archspec.diff(TINY, path)
    assert any("dtype float32 -> bfloat16" in w for w in d.warnings)
    warm = d.compatibility.warm_start(archspec.build(load(TINY)).state_dict())
    assert {t.dtype for t in warm.values()} == {torch.bfloat16}


# --- ignore ----------------------------------------------------------------------------------------
def test_ignore_dtype_makes_a_dtype_only_change_exit_0(variant, capsys):
    path = variant("model: {dtype: bfloat16}\n")
    code, out, _ = cli(capsys, TINY, path)
    assert code == 1 and "model.dtype" in out and "float32 -> bfloat16" in out
    code, out, _ = cli(capsys, TINY, path, "--ignore", "model.dtype")
    assert code == 0 and "no differences" in out and "ignoring: model.dtype" in out
    assert "-50.00%" in out  # the costs still show the halved KV cache
    d = archspec.diff(TINY, path, ignore=["model.dtype"])
    assert not d.different and d.costs.state_bytes[128].pct == -50.0


def test_ignore_component_keys(variant):
    path = variant("overrides:\n  - at: 2\n    set: {window: 32}\ncomponents:\n  F: {bias: true}\n")
    d = archspec.diff(TINY, path)
    assert d.components and d.sublayers
    assert not archspec.diff(TINY, path, ignore=["*.window", "mlp.bias"]).different
    assert archspec.diff(TINY, path, ignore=["attention.window"]).components  # mlp.bias remains
    assert archspec.diff(TINY, path, ignore="*.window,mlp.bias").different is False  # one string
    assert check_ignore(["model.dtype,*.backend", "model.norm.eps", "mom.chunk_size",
                         "mom.key_dim"]) == ("model.dtype", "*.backend", "model.norm.eps",
                                             "mom.chunk_size", "mom.key_dim")


@pytest.mark.parametrize("path,message", [
    ("mlp.dff", "did you mean 'd_ff'?"), ("model.dtyp", "did you mean 'dtype'?"),
    ("attn.window", "is not model.FIELD, TYPE.KEY or *.KEY"), ("model.name", "never compared"),
    ("*.nonsense", "not a hyperparameter of any component")])
def test_unknown_ignore_paths_are_usage_errors(path, message, capsys):
    with pytest.raises(DiffOptionError, match=re.escape(message)):
        check_ignore([path])
    code, out, err = cli(capsys, TINY, TINY, "--ignore", path)
    assert code == 2 and out == "" and message in err and "Traceback" not in err


# --- budgets ---------------------------------------------------------------------------------------
def test_budgets(capsys):
    # tiny -> tiny-inserted: +29,632 parameters (+25.77%); FLOPs +27.34% at 64, +25.58% at 128
    assert cli(capsys, TINY, INSERTED, "--max-params-delta", "30%")[0] == 1
    code, out, err = cli(capsys, TINY, INSERTED, "--max-params-delta", "5%")
    assert code == EXIT_BUDGET == 4
    assert "budget crossed: parameters changed by +29,632 (+25.77%)" in err and "5%" in err
    assert "CROSSED" in out
    assert cli(capsys, TINY, INSERTED, "--max-params-delta", "29632")[0] == 1  # at the limit: within
    assert cli(capsys, TINY, INSERTED, "--max-params-delta", "29.6k")[0] == 4
    assert cli(capsys, TINY, INSERTED, "--max-params-delta", "1M")[0] == 1
    code, _, err = cli(capsys, TINY, INSERTED, "--seq-len", "64,128", "--max-flops-delta", "26%")
    assert code == 4 and "seq_len 64" in err and "seq_len 128" not in err
    assert cli(capsys, TINY, TINY, "--max-params-delta", "0")[0] == 0
    d = archspec.diff(TINY, INSERTED, max_params_delta="5%", max_flops_delta="50%")
    assert d.exit_code == 4 and [x.crossed for x in d.budgets] == [True, False]


@pytest.mark.parametrize("text,value,relative", [("5%", 5, True), ("0.5 %", 0.5, True), ("10M", 1e7, False),
                                                 ("2.5G", 2.5e9, False), ("1e9", 1e9, False),
                                                 ("1,000", 1000, False), ("100k", 1e5, False)])
def test_budget_parsing(text, value, relative):
    b = Budget.parse(text)
    assert (b.value, b.relative) == (pytest.approx(value), relative)


@pytest.mark.parametrize("text", ["5x", "-5%", "", "%", "inf", "ten"])
def test_bad_budgets_are_usage_errors(text, capsys):
    with pytest.raises(DiffOptionError):
        Budget.parse(text)
    with pytest.raises(SystemExit) as info:
        main(["diff", TINY, TINY, "--max-params-delta", text])
    assert info.value.code == 2


# --- trouble ---------------------------------------------------------------------------------------
def test_invalid_spec_exits_2_with_the_validation_errors(variant, capsys):
    bad = variant("components:\n  A: {n_head: 3}\n", "bad.yaml")
    assert main(["validate", bad]) == 1
    expected = capsys.readouterr().err
    code, out, err = cli(capsys, TINY, bad)
    assert (code, out, err) == (2, "", expected)
    assert re.search(rf"{re.escape(bad)}:3:\d+: error at components.A.n_head: unknown key 'n_head'", err)
    code, _, err = cli(capsys, bad, bad)  # both specs' errors
    assert code == 2 and err == expected + expected


def test_missing_file_and_seq_len_above_max_are_usage_errors(tmp_path, capsys):
    code, out, err = cli(capsys, TINY, str(tmp_path / "nope.yaml"))
    assert code == 2 and out == "" and "does not exist" in err
    code, out, err = cli(capsys, TINY, INSERTED, "--seq-len", "64,129")
    assert code == 2 and "--seq-len 129 exceeds the max_seq_len 128" in err and "Traceback" not in err
    with pytest.raises(DiffOptionError):
        archspec.diff(TINY, TINY, seq_lens=[4096])
    with pytest.raises(SystemExit) as info:
        main(["diff", TINY, TINY, "--seq-len", "0"])
    assert info.value.code == 2


# --- output formats --------------------------------------------------------------------------------
def test_json_output_is_complete_and_matches_the_api(capsys):
    code, out, _ = cli(capsys, MOM, MOM8, "--format", "json", "--seq-len", "64,128",
                       "--max-params-delta", "50%")
    j = json.loads(out)
    assert code == 1 and j == json.loads(json.dumps(to_json(archspec.diff(
        MOM, MOM8, seq_lens=[64, 128], max_params_delta="50%"))))
    assert j["schema_version"] == 1
    assert list(j) == ["schema_version", "a", "b", "different", "exit_code", "ignored", "seq_lens",
                       "attention_flops", "layout", "model", "components", "sublayers", "alignment",
                       "costs", "compatibility", "budgets", "warnings"]
    assert set(j["costs"]["forward_flops_per_token"]) == {"64", "128"}
    p = j["costs"]["params"]
    assert p["delta"] == p["b"] - p["a"] and p["pct"] == pytest.approx(p["delta"] / p["a"] * 100)
    counts = j["compatibility"]["counts"]
    assert counts["reshaped"] == {"tensors": 2, "params": 2 * 8 * 64}
    assert len(j["compatibility"]["new"]) == counts["new"]["tensors"]
    assert j["budgets"] == [{"metric": "params", "seq_len": None, "limit": "50%", "relative": True,
                             "delta": 68_096, "pct": p["pct"], "crossed": False}]


def _markdown_tables(text: str) -> list[list[str]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


@pytest.mark.parametrize("a_path,b_path", [(TINY, INSERTED), (str(SPECS / "tiny-rules.yaml"),
                                                             str(SPECS / "tiny-parallel.yaml"))])
def test_markdown_is_well_formed(a_path, b_path, capsys):
    code, out, _ = cli(capsys, a_path, b_path, "--format", "markdown", "--seq-len", "64,128")
    assert code == 1 and out.startswith("### archspec diff: ")
    tables = _markdown_tables(out)
    assert len(tables) >= 3
    for table in tables:
        # a cell's pipe is escaped, so every row has the header's column count
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in table}
        assert len(widths) == 1, table
        assert re.fullmatch(r"\|(:?---:?\|)+", table[1])
    assert out.count("<details>") == out.count("</details>") >= 1


def test_table_output_for_people_is_compact(capsys):
    code, out, _ = cli(capsys, str(SPECS / "tiny-rules.yaml"), str(SPECS / "tiny-parallel.yaml"))
    assert code == 1
    assert re.search(r"sublayers 3-15 -> - .* removed \(13 sublayers\)", out)  # one line for the run
    assert len(out.splitlines()) < 60  # 16 vs 3 sublayers, 72 vs 29 tensors
    compat = out.split("Checkpoint compatibility", 1)[1]
    assert "sublayers.3.members.Fw.* (3)" in compat and "more" in compat  # grouped, then cut


def test_very_long_differing_runs_fall_back_to_difflib(write, monkeypatch):
    import sys
    module = sys.modules["archspec.diff.align"]  # `archspec.diff` is the function
    monkeypatch.setattr(module, "MAX_DP_CELLS", 0)
    base = write("model: {vocab_size: 64, d_model: 32, max_seq_len: 32}\n"
                 "components:\n  M: {type: mamba, d_state: 4}\n  F: {type: mlp, d_ff: 32}\n"
                 "  S: {type: attention, n_heads: 2}\n"
                 'layout: "(M F) x 6"\n', "base.yaml")
    other = write(f"extends: {base}\nlayout: \"M F S F M F M M F S F M F\"\n", "other.yaml")
    d = archspec.diff(base, other)
    assert [(s.change, s.a_index, s.b_index) for s in d.sublayers] == [
        ("type changed", 2, 2), ("added", None, 7), ("type changed", 8, 9)]


def test_render_rejects_an_unknown_format():
    with pytest.raises(ValueError):
        render(archspec.diff(TINY, TINY), "yaml")
    assert isinstance(archspec.diff(TINY, TINY), SpecDiff)
