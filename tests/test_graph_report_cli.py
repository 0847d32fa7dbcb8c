"""The component graph, the report and the `archspec` commands report, graph and build."""
from __future__ import annotations

import json
import re
from itertools import groupby
from pathlib import Path

import networkx as nx
import pytest
import safetensors.torch
import torch

from archspec.accounting import account
from archspec.cli import main
from archspec.codegen.build import build
from archspec.graph import component_graph, to_dot, to_json
from archspec.report import SCHEMA_VERSION, render, report
from archspec.spec import load, loads

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
TINY = str(SPECS_DIR / "tiny.yaml")
LLAMA = str(SPECS_DIR / "llama-2-7b.yaml")

MIXED = """
model: {name: mixed, vocab_size: 40, d_model: 32, max_seq_len: 32}
components:
  A: {type: attention, n_heads: 4, window: 8}
  F: {type: mlp, d_ff: 48}
layout: "(A F) [A | F]"
"""


# --- graph -------------------------------------------------------------------------------------
def test_graph_nodes_and_edges():
    spec = loads(MIXED)
    g = component_graph(spec)
    expected_nodes = ["embedding",
                      "sublayers.0.norm", "sublayers.0.A", "sublayers.0.residual",
                      "sublayers.1.norm", "sublayers.1.F", "sublayers.1.residual",
                      "sublayers.2.norm", "sublayers.2.A", "sublayers.2.F", "sublayers.2.residual",
                      "final_norm", "lm_head"]
    assert list(g.nodes) == expected_nodes
    data = {(a, b) for a, b, k in g.edges(data="kind") if k == "data"}
    residual = {(a, b) for a, b, k in g.edges(data="kind") if k == "residual"}
    assert data == {
        ("embedding", "sublayers.0.norm"), ("sublayers.0.norm", "sublayers.0.A"),
        ("sublayers.0.A", "sublayers.0.residual"), ("sublayers.0.residual", "sublayers.1.norm"),
        ("sublayers.1.norm", "sublayers.1.F"), ("sublayers.1.F", "sublayers.1.residual"),
        ("sublayers.1.residual", "sublayers.2.norm"),
        ("sublayers.2.norm", "sublayers.2.A"), ("sublayers.2.norm", "sublayers.2.F"),
        ("sublayers.2.A", "sublayers.2.residual"), ("sublayers.2.F", "sublayers.2.residual"),
        ("sublayers.2.residual", "final_norm"), ("final_norm", "lm_head")}
    assert residual == {("embedding", "sublayers.0.residual"),
                        ("sublayers.0.residual", "sublayers.1.residual"),
                        ("sublayers.1.residual", "sublayers.2.residual")}
    assert nx.is_directed_acyclic_graph(g)
    assert list(nx.topological_sort(g))[0] == "embedding" and list(nx.topological_sort(g))[-1] == "lm_head"
    # attributes: type, sublayer, config and accounting
    a = g.nodes["sublayers.0.A"]
    assert a["type"] == "attention" and a["sublayer"] == 0
    assert a["config"]["window"] == 8 and a["config"]["head_dim"] == 8 and a["config"]["backend"] == "auto"
    assert a["params"] == 4 * 32 * 32
    assert a["state_bytes"] == 2 * 4 * 8 * 8 * 4  # window 8 < seq_len 32
    assert g.nodes["sublayers.2.residual"]["params"] == 2  # the gates
    assert g.nodes["sublayers.2.residual"]["config"] == {"gated": True, "members": 2}
    assert g.nodes["sublayers.2.residual"]["role"] == "residual"
    assert g.nodes["sublayers.1.F"]["config"]["d_ff"] == 48
    acc = account(spec)
    assert sum(p for _, p in g.nodes(data="params")) == acc.total().params
    # the layout is stored in its canonical compact form
    assert g.graph["name"] == "mixed" and g.graph["layout"] == spec.layout_text == "A F [A | F]"


def test_graph_json_round_trip():
    g = component_graph(loads(MIXED))
    text = to_json(g)
    data = json.loads(text)
    back = nx.node_link_graph(data, edges="edges")
    assert back.is_directed()
    assert list(back.nodes) == list(g.nodes)
    assert set(back.edges) == set(g.edges)
    for n in g.nodes:
        assert back.nodes[n] == json.loads(json.dumps(g.nodes[n]))
    assert back.edges["embedding", "sublayers.0.residual"]["kind"] == "residual"
    assert back.graph["seq_len"] == 32


def test_graph_dot():
    g = component_graph(loads(MIXED))
    dot = to_dot(g)
    assert dot.startswith('digraph "mixed" {') and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    lines = dot.splitlines()
    node_lines = [ln for ln in lines if re.match(r'^  "[^"]+" \[label=', ln)]
    edge_lines = [ln for ln in lines if re.match(r'^  "[^"]+" -> "[^"]+"', ln)]
    assert len(node_lines) == g.number_of_nodes()
    assert len(edge_lines) == g.number_of_edges()
    for n in g.nodes:
        assert sum(ln.startswith(f'  "{n}" [') for ln in node_lines) == 1
    for a, b in g.edges:
        assert sum(ln.startswith(f'  "{a}" -> "{b}"') for ln in edge_lines) == 1
    assert sum("style=dashed" in ln for ln in edge_lines) == 3  # one skip per sublayer
    for ln in lines[1:-1]:
        assert ln.endswith(";"), ln
        _dot_strings(ln)  # quotes are balanced
    # braces balance outside quoted strings too
    bare = DOT_STRING.sub("", dot)
    assert bare.count("{") == bare.count("}") == 1


DOT_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')  # a DOT double-quoted string with escapes


def _dot_strings(line: str) -> list[str]:
    """The quoted strings of a DOT line, unescaped; asserts nothing is left unterminated."""
    rest = DOT_STRING.sub("", line)
    assert '"' not in rest, line
    return [re.sub(r"\\(.)", r"\1", m) for m in DOT_STRING.findall(line)]


def test_graph_dot_escapes_quotes_and_backslashes():
    spec = loads(MIXED.replace("name: mixed", "name: 'my \"model\" \\ v2'"))
    assert spec.name == 'my "model" \\ v2'
    dot = to_dot(component_graph(spec))
    first = dot.splitlines()[0]
    assert _dot_strings(first) == [spec.name]
    assert DOT_STRING.sub("", first) == "digraph  {"
    for line in dot.splitlines():
        _dot_strings(line)  # every quote is part of a well-formed string
    labels = [_dot_strings(ln)[1] for ln in dot.splitlines() if "[label=" in ln]
    assert labels[0] == "embeddingnembeddingn1,280 params"  # \n line breaks, unescaped to 'n'


# --- report ------------------------------------------------------------------------------------
def test_report_keys_and_rendering():
    spec = load(TINY)
    rep = report(spec, seq_len=32)
    assert rep["schema_version"] == SCHEMA_VERSION == 1
    assert list(rep) == ["schema_version", "spec", "seq_len", "conventions", "totals", "notes",
                         "by_type", "sublayers", "components"]
    assert rep["seq_len"] == 32
    assert set(rep["spec"]) == {"name", "source", "files", "layout", "n_sublayers", "d_model",
                                "vocab_size", "max_seq_len", "dtype", "tie_embeddings", "freeze", "group_gates"}
    assert set(rep["totals"]) == {
        "params", "active_params", "embedding_params", "head_params", "non_embedding_params",
        "weight_bytes", "forward_flops_per_sequence", "forward_flops_per_token",
        "forward_flops_per_token_by_kind", "training_flops_per_token",
        "inference_state_bytes_per_sequence", "activation_bytes_per_sequence", "trainable_params",
        "frozen_params"}
    assert all(isinstance(v, str) and v for v in rep["conventions"].values())
    members = [c for c in rep["components"] if c["type"] in ("attention", "mlp", "rmsnorm")]
    assert members and all(c["backend"] == "reference" for c in members)
    assert sum(c["type"] == "rmsnorm" for c in members) == 5  # 4 sublayers' norms + the final one
    assert all("backend" not in c for c in rep["components"]
               if c["type"] not in ("attention", "mlp", "rmsnorm"))
    table = render(rep, "table")
    assert "115,008" in table and "(A F) x 2" in table
    md = render(rep, "markdown")
    assert md.startswith("## tiny") and "| parameters | 115,008 |" in md
    assert json.loads(render(rep, "json")) == rep


def test_markdown_tables_keep_their_columns_with_parallel_groups():
    """hydra-tiny's parallel groups ([M | E], [M | A | E]) put `|` inside a sublayer's cell: it
    is escaped, so every row of every table splits into the header's number of cells (GitHub
    splits a row at each `|` not preceded by a backslash)."""
    md = render(report(load(SPECS_DIR / "hydra-tiny.yaml")), "markdown")
    tables = [list(rows) for is_table, rows in groupby(md.splitlines(), lambda ln: ln.startswith("|"))
              if is_table]
    assert len(tables) == 4  # totals, by type, per sublayer, shared weights (the PKM value table)
    for table in tables:
        cells = [re.split(r"(?<!\\)\|", row)[1:-1] for row in table]
        assert {len(c) for c in cells} == {len(cells[0])}, table
    per_sublayer = tables[2]
    assert tables[3][2] == "| shared.pkm_values_facts | pkm | 16,384 |"
    assert "| 1 | M:mamba2 \\| A:sparse_attention \\| E:moe |" in per_sublayer[3]


# --- CLI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["table", "json", "markdown"])
def test_cli_report(fmt, capsys):
    assert main(["report", LLAMA, "--format", fmt, "--seq-len", "2048"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    if fmt == "json":
        rep = json.loads(out)
        assert rep["schema_version"] == 1 and rep["seq_len"] == 2048
        assert rep["totals"]["params"] == 6_738_415_616
        assert {"spec", "seq_len", "conventions", "totals", "by_type", "sublayers", "components"} <= set(rep)
    else:
        assert "6,738,415,616" in out


def test_cli_report_attention_flops_dense(capsys):
    assert main(["report", TINY, "--format", "json", "--attention-flops", "dense"]) == 0
    dense = json.loads(capsys.readouterr().out)["totals"]["forward_flops_per_token_by_kind"]["attention"]
    assert main(["report", TINY, "--format", "json"]) == 0
    attended = json.loads(capsys.readouterr().out)["totals"]["forward_flops_per_token_by_kind"]["attention"]
    assert dense / attended == pytest.approx(128 * 128 / (128 * 129 / 2))  # T^2 vs T(T+1)/2, exact ratio


@pytest.mark.parametrize("command", ["report", "graph", "build"])
def test_cli_seq_len_above_max_is_usage_error(command, capsys):
    assert main([command, TINY, "--seq-len", "129"]) == 2
    err = capsys.readouterr().err
    assert "max_seq_len 128" in err and "Traceback" not in err


def test_cli_report_bad_device(capsys):
    assert main(["report", TINY, "--device", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'bogus'" in err and "internal error" not in err
    # the report is analytic: it may show a CUDA machine's backends from a machine without one
    assert main(["report", TINY, "--device", "cuda", "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert all("backend" in c for c in rep["components"] if c["type"] in ("attention", "mlp", "rmsnorm"))


def test_account_rejects_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        account(load(TINY), seq_len=0)
    assert account(load(TINY)).seq_len == 128  # default: max_seq_len


def test_cli_seq_len_must_be_positive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["report", TINY, "--seq-len", "0"])
    assert info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_cli_graph(tmp_path, capsys):
    out_file = tmp_path / "g.dot"
    assert main(["graph", TINY, "--format", "dot", "-o", str(out_file)]) == 0
    assert capsys.readouterr().out == ""
    dot = out_file.read_text()
    assert dot == to_dot(component_graph(load(TINY)))
    assert list(tmp_path.iterdir()) == [out_file]  # no temporary file left behind
    assert main(["graph", TINY]) == 0
    g = nx.node_link_graph(json.loads(capsys.readouterr().out), edges="edges")
    assert g.number_of_nodes() == 1 + 4 * 3 + 2
    assert main(["graph", TINY, "-o", str(tmp_path / "missing" / "g.json")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_cli_build_tiny(capsys):
    assert main(["build", TINY, "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "115,008 parameters (matches the report's 115,008)" in out
    assert re.search(r"smoke forward\+backward \(batch 2, seq_len 16\): [0-9.]+ ms, loss [0-9.]+", out)
    assert "gradients finite" in out
    assert "backends: A=reference, F=reference, model.norm=reference\n" in out


def test_cli_build_meta_llama(capsys):
    assert main(["build", "--meta", LLAMA]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616 parameters (matches" in out and "meta" in out
    assert "smoke" not in out.split("\n", 3)[-1].replace("no smoke run", "")


def test_cli_build_save_and_load_back(tmp_path, capsys):
    target = tmp_path / "saved"
    assert main(["build", TINY, "--no-smoke", "--seed", "7", "--save", str(target)]) == 0
    assert "saved weights" in capsys.readouterr().out
    assert sorted(p.name for p in target.iterdir()) == ["archspec.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # the temporary directory is gone
    state = safetensors.torch.load_file(target / "model.safetensors")
    fresh = build(load(TINY), seed=123)
    fresh.load_state_dict(state, strict=True)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    # the saved weights are the seeded build's, not the fresh one's
    same_seed = build(load(TINY), seed=7)
    assert all(torch.equal(t, state[n]) for n, t in same_seed.state_dict().items())
    resolved = json.loads((target / "archspec.json").read_text())
    assert resolved["layout"] == "(A F) x 2"
    assert resolved["components"]["A"]["config"]["head_dim"] == 16  # defaults are filled
    assert resolved["model"]["d_model"] == 64
    assert resolved["spec"]["components"]["F"]["d_ff"] == 192
    assert resolved["build"] == {"dtype": "float32", "params": 115_008,
                                 "backends": {**{f"sublayers.{i}.{s}": "reference"
                                                 for i, s in enumerate("AFAF")},
                                              **{f"sublayers.{i}.norm": "reference" for i in range(4)},
                                              "final_norm": "reference"}}


def test_cli_build_save_bfloat16(tmp_path, capsys):
    target = tmp_path / "bf16"
    assert main(["build", TINY, "--dtype", "bfloat16", "--seq-len", "8", "--save", str(target)]) == 0
    assert "torch.bfloat16" in capsys.readouterr().out
    state = safetensors.torch.load_file(target / "model.safetensors")
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    assert json.loads((target / "archspec.json").read_text())["build"]["dtype"] == "bfloat16"
    build(load(TINY), dtype="bfloat16").load_state_dict(state, strict=True)


def test_load_saved_rebuilds_spec_dtype_overrides_and_weights(tmp_path, capsys):
    import archspec
    target = tmp_path / "rules"
    rules = str(SPECS_DIR / "tiny-rules.yaml")
    assert main(["build", rules, "--no-smoke", "--dtype", "bfloat16", "--save", str(target)]) == 0
    capsys.readouterr()
    model, spec = archspec.load_saved(target)
    state = safetensors.torch.load_file(target / "model.safetensors")
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(t, state[n]) for n, t in model.state_dict().items())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert spec.sublayers[8].members[0].config["window"] == 64  # the spec's override survives
    assert model.sublayers[8].members["W"].window == 64
    tokens = torch.randint(0, 256, (1, 12))
    original = build(load(rules), dtype="bfloat16", seed=0)
    original.load_state_dict(state)
    assert torch.equal(model(tokens).logits, original(tokens).logits)
    # a checkpoint recording a backend this machine lacks (say, saved on a GPU) still loads:
    # backends are chosen for the loading device
    meta = json.loads((target / "archspec.json").read_text())
    meta["build"]["backends"] = {k: "triton" for k in meta["build"]["backends"]}
    (target / "archspec.json").write_text(json.dumps(meta))
    reloaded, _ = archspec.load_saved(target)
    assert set(reloaded.backends.values()) == {"reference"}
    assert torch.equal(reloaded(tokens).logits, model(tokens).logits)


def test_cli_build_save_refuses_non_empty_dir(tmp_path, capsys):
    target = tmp_path / "saved"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert main(["build", TINY, "--save", str(target)]) == 2
    out, err = capsys.readouterr()
    assert "not empty" in err and "Traceback" not in err
    assert "built" not in out  # refused before building
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # nothing half-written beside it
    assert main(["build", TINY, "--meta", "--save", str(tmp_path / "new")]) == 2
    assert "--save needs real weights" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_cli_build_save_into_empty_dir(tmp_path, capsys):
    target = tmp_path / "empty"
    target.mkdir()
    assert main(["build", TINY, "--no-smoke", "--save", str(target)]) == 0
    assert (target / "model.safetensors").is_file() and (target / "archspec.json").is_file()


def test_cli_build_cuda_unavailable(capsys, monkeypatch):
    # pretend CUDA is absent so the test means the same on a machine with a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["build", TINY, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "Traceback" not in err


def test_cli_build_unknown_backend(capsys):
    assert main(["build", TINY, "--backend", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "no 'nonexistent' backend" in err and "Traceback" not in err


def test_cli_bad_spec(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: x, vocab_size: 10, d_model: 8, max_seq_len: 8}\n"
                   "components:\n"
                   "  A: {type: attention, n_heads: 3}\n"
                   "layout: A\n")
    for command in ("report", "graph", "build"):
        assert main([command, str(bad)]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert re.search(rf"{re.escape(str(bad))}:3:\d+: error", err), err
        assert "n_heads=3" in err and "Traceback" not in err


def test_cli_missing_file(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "Traceback" not in err


def test_cli_build_guard_counts_the_smoke_steps_gradients_and_activations(monkeypatch, capsys):
    import archspec.codegen.build as build_module
    weights = account(load(TINY)).total().params * 4
    # room for the weights (0.8 x 3 x weights) but not for weights + gradients + activations
    monkeypatch.setattr(build_module, "free_memory_bytes", lambda device: 3 * weights)
    assert main(["build", TINY]) == 1
    err = capsys.readouterr().err
    assert "gradients and activations" in err and "--no-smoke" in err and "Traceback" not in err
    assert main(["build", TINY, "--no-smoke"]) == 0
    assert main(["build", TINY, "--force", "--seq-len", "8"]) == 0


# --- components ---------------------------------------------------------------------------------
def test_components_lists_every_registered_type(capsys):
    from archspec import components as C
    assert main(["components"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == sorted(C.REGISTRY)


def test_components_shows_one_types_hyperparameters_and_json(capsys):
    assert main(["components", "mom"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mom (sublayer):") and "n_memories" in out and 'default "gated_delta"' in out
    assert main(["components", "attention", "--format", "json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["required"] == ["n_heads"] and "window" in schema["properties"]


def test_components_unknown_type_is_a_usage_error_with_a_suggestion(capsys):
    assert main(["components", "mamb"]) == 2
    assert "did you mean 'mamba'?" in capsys.readouterr().err


def test_output_piped_into_a_reader_that_stops_early_is_not_an_error():
    import subprocess
    import sys
    cmd = (f"{sys.executable} -m archspec report {SPECS_DIR / 'llama-2-7b.yaml'} | head -1; "
           "exit ${PIPESTATUS[0]}")
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "internal error" not in res.stderr and res.stdout.startswith("llama-2-7b")


# --- issue 17: reports of deep models stay linear and cheap ----------------------------------

@pytest.mark.parametrize("path", sorted(SPECS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_json_rendering_is_json_dumps_byte_for_byte(path):
    rep = report(load(path))
    assert render(rep, "json") == json.dumps(rep, indent=2)


def test_json_text_matches_json_dumps_on_awkward_values():
    """Keys equal as values but not as text (1, True, 1.0), -0.0, NaN, infinities, escapes,
    '%' in keys, tuples, empty containers, nested lists: json_text is json.dumps(indent=2)."""
    import random
    from collections import OrderedDict

    from archspec.report import json_text
    rnd = random.Random(17)
    scalars = [None, True, False, 0, 1, -1, 2**70, 0.0, -0.0, 1.0, 1.5, 1e300, float("nan"), float("inf"),
               -float("inf"), "", "é\n\"\\\t", "日本", "\x00", "%s", "50%"]

    def value(depth=0):
        r = rnd.random()
        if depth > 3 or r < 0.5:
            return rnd.choice(scalars)
        if r < 0.7:
            return [value(depth + 1) for _ in range(rnd.randint(0, 3))]
        if r < 0.8:
            return tuple(value(depth + 1) for _ in range(rnd.randint(0, 3)))
        if r < 0.9:
            return OrderedDict((rnd.choice(["a", "%", "%s", "b"]), value(depth + 1)) for _ in range(rnd.randint(0, 3)))
        return {rnd.choice(["k", 1, 1.0, True, False, 0, None, 2.5]): value(depth + 1) for _ in range(rnd.randint(0, 4))}

    for _ in range(5000):
        v = value()
        assert json_text(v) == json.dumps(v, indent=2), repr(v)


def test_accounting_works_once_per_distinct_instance(monkeypatch):
    """500 repeats of a block and an override: each distinct instance's figures are worked out
    once, however many sublayers share it (the report of a deep layout is linear and cheap)."""
    from archspec import components as C
    spec = loads("model: {vocab_size: 97, d_model: 64, max_seq_len: 32}\n"
                 "components:\n  A: {type: attention, n_heads: 4}\n  F: {type: mlp, d_ff: 64}\n"
                 "layout: '(A F) x 500'\noverrides:\n  - {at: [0, 2, 4], set: {window: 8}}\n")
    calls = []
    attention = C.get("attention")
    real = attention.flops
    monkeypatch.setattr(attention, "flops", lambda *a, **k: calls.append(1) or real(*a, **k))
    rep = report(spec)
    assert len(calls) == 2  # A, and A with the override (one instance for its three sublayers)
    assert len(rep["components"]) == 1 + 3 * 1000 + 2 and rep["components"][1]["sublayer"] == 0
    overridden = {r["index"] for r in rep["sublayers"] if r["overrides"]}
    assert overridden == {0, 2, 4}


def test_units_reach_the_sizes_the_limits_allow():
    """A model at the limits has exabytes of state and 1e26 FLOPs: the table says so in
    readable units (it printed '150000000000.00P')."""
    from archspec.units import human, human_bytes
    assert (human(1.5e26), human(9e18), human(2e15), human(999)) == ("150.00Y", "9.00E", "2.00P", "999")
    assert (human_bytes(4e15), human_bytes(3.6e19), human_bytes(2**90)) == ("3.55 PiB", "31.23 EiB", "1024.00 YiB")
