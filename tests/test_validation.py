"""Whole-spec validation: every mistake located, all at once, with hints; CLI; editor schema."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from archspec.components import types_with_role

from archspec.cli import main
from archspec.loader import parse
from archspec.schema import EDITOR_FILE, editor_schema
from archspec.spec import load

from conftest import GOOD
from helpers import assert_located

ROOT = Path(__file__).resolve().parent.parent
SPEC = """\
model:
  vocab_size: 256
  d_model: 64
  max_seq_len: 128
components:
  A: {type: attention, n_heads: 4, n_kv_heads: 2}
  F: {type: mlp, d_ff: 128}
layout: "(A F) x 2"
"""


def at(p):
    return (p.loc.line, p.loc.col)


def col(text: str, line: int, needle: str, nth: int = 0) -> tuple[int, int]:
    """(line, 1-based column) of the nth `needle` on a 1-based line of `text`."""
    row, start = text.splitlines()[line - 1], -1
    for _ in range(nth + 1):
        start = row.index(needle, start + 1)
    return (line, start + 1)


def test_good_spec_loads(write):
    spec = load(write(GOOD))
    assert [s.symbols for s in spec.sublayers] == [("A",), ("F",)] * 2 and spec.layout_text == "(A F) x 2"


def test_three_independent_mistakes_give_three_located_problems(problems):
    text = SPEC.replace("n_heads: 4,", "n_head: 4,").replace("type: mlp", "type: mpl").replace("x 2", "x 2 Q")
    found = problems(text)
    assert [(p.path, at(p)) for p in found] == [
        (("components", "A", "n_head"), col(text, 6, "n_head")),
        (("components", "F", "type"), col(text, 7, "mpl")),
        (("layout",), col(text, 8, '"')),
    ]
    assert found[0].message == "unknown key 'n_head'" and found[0].hint == "did you mean 'n_heads'?"
    assert "unknown component type 'mpl'" in found[1].message and found[1].hint == "did you mean 'mlp'?"
    assert "undefined layout symbol 'Q'" in found[2].message


def test_unknown_component_type_did_you_mean(problems):
    assert_located(problems(SPEC.replace("type: attention", "type: atention")), path=("components", "A", "type"),
                   at=(6, 13), message="unknown component type 'atention'", hint="did you mean 'attention'?")


def test_unknown_value_of_a_choice_that_includes_null_or_booleans(problems):
    """An enum holding null (qk_norm) or booleans (bias) lists them as YAML writes them; an
    unknown word there was an internal error (a synonym lookup that found None among the
    choices)."""
    found = problems(SPEC.replace("n_kv_heads: 2", "n_kv_heads: 2, qk_norm: aaaa, bias: maybe"))
    by = {p.path: p for p in found}
    assert by[("components", "A", "qk_norm")].message == "unknown value 'aaaa'"
    assert by[("components", "A", "qk_norm")].hint == "expected one of: 'head', 'null', 'projection'"
    assert by[("components", "A", "bias")].hint == "expected one of: 'false', 'qkv', 'true'"


def test_undefined_layout_symbol_did_you_mean(problems):
    assert_located(problems(SPEC.replace("A:", "attn:").replace('"(A F) x 2"', '"(atn F) x 2"')), path=("layout",),
                   at=(8, 9), words="undefined layout symbol 'atn'", hint="did you mean 'attn'?")


def test_misspelled_top_level_and_model_keys(problems):
    found = problems(SPEC.replace("  d_model: 64", "  d_model: 64\n  max_seq_lne: 3") + "overides: []\n")
    by = {p.path: p for p in found}
    assert by[("model", "max_seq_lne")].hint == "did you mean 'max_seq_len'?"
    assert at(by[("model", "max_seq_lne")]) == (4, 3)
    assert by[("overides",)].hint == "did you mean 'overrides'?" and at(by[("overides",)]) == (10, 1)
    assert len(found) == 2


@pytest.mark.parametrize("old, new, path, words, where", [
    ("d_ff: 128", 'd_ff: "128"', ("components", "F", "d_ff"), "expected an integer, got string '128'", (7, '"128"')),
    ("d_ff: 128", "d_ff: abc", ("components", "F", "d_ff"), "expected an integer, got string 'abc'", (7, 'abc')),
    ("d_ff: 128", "d_ff: 128.0", ("components", "F", "d_ff"), "expected an integer, got number 128.0", (7, '128.0')),
    ("d_ff: 128", "d_ff: true", ("components", "F", "d_ff"), "expected an integer, got boolean true", (7, 'true')),
    ("d_ff: 128", 'd_ff: "${d_model} * 1.5"', ("components", "F", "d_ff"), "expected an integer", (7, '"${d_model} * 1.5"')),
    ("d_ff: 128", "d_ff: 0", ("components", "F", "d_ff"), "must be >= 1, got 0", (7, '0')),
    ("d_model: 64", "d_model: -64", ("model", "d_model"), "must be >= 1, got -64", (3, '-64')),
    ("vocab_size: 256", "vocab_size: 0", ("model", "vocab_size"), "must be >= 1, got 0", (2, '0')),
    ("n_heads: 4,", "n_heads: 6,", ("components", "A", "n_heads"), "n_heads=6 does not divide d_model=64", (6, '6,')),
    ("n_kv_heads: 2", "n_kv_heads: 3", ("components", "A", "n_kv_heads"), "n_kv_heads=3 does not divide n_heads=4", (6, '3')),
    ("n_kv_heads: 2", "n_kv_heads: 2, window: 1000", ("components", "A", "window"), "window=1000 exceeds max_seq_len=128", (6, '1000')),
    ("d_ff: 128", 'd_ff: "${d_modle} * 4"', ("components", "F", "d_ff"), "'${d_modle}' is undefined", (7, '"${d_modle} * 4"')),
    ("d_ff: 128", 'd_ff: "${components.F.d_ff}"', ("components", "F", "d_ff"), "cycle", (7, '"${components.F.d_ff}"')),
    ('"(A F) x 2"', '"(A F) x 0"', ("layout",), "layout expands to no sublayers", (8, '"')),
    ('"(A F) x 2"', "{layers: 2, sublayers: [{use: A x 0}]}", ("layout",), "no sublayers", (8, '{')),
    ('"(A F) x 2"', "{layers: 2, sublayers: [{use: Q}]}", ("layout", "sublayers", 0, "use"), "'Q'", (8, 'Q')),
])
def test_single_mistakes(problems, old, new, path, words, where):
    assert old in SPEC
    text = SPEC.replace(old, new)
    p = assert_located(problems(text), path=path, at=col(text, *where), words=words)
    assert p.loc.file.endswith("spec.yaml")
    if "does not divide" in words or "exceeds" in words or "must be >=" in words or "undefined" in words:
        assert p.hint


def test_undefined_reference_has_did_you_mean(problems):
    [p] = problems(SPEC.replace("d_ff: 128", 'd_ff: "${d_modle} * 4"'))
    assert p.hint == "did you mean 'd_model'?"


def test_reference_cycle_through_vars_reported_once(problems):
    found = problems("vars: {a: \"${b}\", b: \"${a}\"}\n" + SPEC.replace("d_ff: 128", 'd_ff: "${a}"'))
    assert [p.path for p in found] == [("vars", "a")]
    assert found[0].message == "references form a cycle: vars.a -> vars.b -> vars.a" and at(found[0]) == (1, 11)


def test_errors_in_model_and_components_together(problems):
    found = problems(SPEC.replace("vocab_size: 256", "vocab_size: 0").replace("d_ff: 128", 'd_ff: "x"'))
    assert [p.path for p in found] == [("model", "vocab_size"), ("components", "F", "d_ff")]


OV = SPEC.replace('"(A F) x 2"', '"(A [F | M]) x 2"').replace("  F: {type: mlp, d_ff: 128}",
                                                               "  F: {type: mlp, d_ff: 128}\n  M: {type: mlp, d_ff: 64}")


@pytest.mark.parametrize("override, path, words, where", [
    ("  - at: 9\n    set: {n_heads: 2}", ("overrides", 0, "at"), "sublayer 9 does not exist: the layout has 4", (11, 9)),
    ("  - at: [0, 7]\n    set: {n_heads: 2}", ("overrides", 0, "at", 1), "sublayer 7 does not exist", (11, 13)),
    ("  - at: 1\n    set: {d_ff: 32}", ("overrides", 0), "parallel group of F, M: say which member", (11, 5)),
    ("  - at: 1\n    component: Z\n    set: {d_ff: 32}", ("overrides", 0, "component"), "has no component 'Z'", (12, 16)),
    ("  - at: 0\n    set: {n_haeds: 2}", ("overrides", 0, "set", "n_haeds"), "unknown key 'n_haeds'", (12, 11)),
    ("  - at: [0, 2]\n    set:\n      n_heads: two", ("overrides", 0, "set", "n_heads"), "expected an integer", (13, 16)),
    ("  - at: 0\n    set: {n_heads: 0}", ("overrides", 0, "set", "n_heads"), "must be >= 1", (12, 20)),
    ("  - at: 2\n    set: {n_kv_heads: 3}", ("overrides", 0, "set", "n_kv_heads"), "does not divide n_heads=4", (12, 23)),
    ("  - at: -1\n    set: {n_heads: 2}", ("overrides", 0, "at"), "", (11, 9)),
    ("  - at: 0\n    set: {}", ("overrides", 0, "set"), "must not be empty", (12, 10)),
])
def test_override_mistakes(problems, override, path, words, where):
    p = assert_located(problems(OV + "overrides:\n" + override + "\n"), path=path, at=where, words=words)
    if "n_haeds" in words:
        assert p.hint == "did you mean 'n_heads'?"


def test_good_override_applies(write):
    spec = load(write(OV + "overrides:\n  - at: 1\n    component: M\n    set: {d_ff: 32}\n"))
    assert spec.sublayers[1].members[1].config["d_ff"] == 32 and spec.sublayers[3].members[1].config["d_ff"] == 64


def test_security_and_file_cases_through_load(problems, capfd):
    found = problems("model: !!python/object/apply:os.system [\"echo hi\"]\n")
    assert "not allowed" in found[0].message and "hi" not in capfd.readouterr().out


# --- CLI ------------------------------------------------------------------------------------

def test_cli_validate_exit_codes(write, tmp_path, capsys):
    good, bad = write(GOOD, "good.yaml"), write(SPEC.replace("n_heads: 4,", "n_head: 4,"), "bad.yaml")
    assert main(["validate", str(good)]) == 0
    assert "good.yaml: ok" in capsys.readouterr().out
    assert main(["validate", str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert "good.yaml: ok" in out and "bad.yaml:6:24: error at components.A.n_head: unknown key 'n_head'" in err
    assert "hint: did you mean 'n_heads'?" in err and "1 error found" in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["validate", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["validate", str(bad), str(tmp_path / "missing.yaml")]) == 2  # worst wins
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2


def test_cli_validate_json(write, capsys):
    good, bad = write(GOOD, "good.yaml"), write(SPEC.replace("type: attention", "type: atention"), "bad.yaml")
    assert main(["validate", "--format", "json", str(good), str(bad)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in out] == [str(good), str(bad)] and [r["valid"] for r in out] == [True, False]
    assert out[0]["errors"] == []
    assert out[1]["errors"] == [{"file": str(bad), "line": 6, "column": 13, "path": "components.A.type",
                                 "message": "unknown component type 'atention'",
                                 "hint": "did you mean 'attention'?"}]


@pytest.mark.parametrize("content", [b"a: &a [*a]\n", b"a: " + b"[" * 5000 + b"\n", b"\xff\xfe\x00x",
                                     b"model: !!binary aGk=\n"])
def test_cli_never_shows_a_traceback_for_hostile_files(write, capsys, content):
    assert main(["validate", str(write(content))]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    assert "spec.yaml:" in captured.err


def test_console_script_subprocess(write, tmp_path):
    exe = shutil.which("archspec", path=str(Path(sys.executable).parent)) or "archspec"
    bad = write("model: !!python/object/apply:os.system [\"echo pwned\"]\nlayout: [\n", "bad.yaml")
    res = subprocess.run([exe, "validate", str(bad), str(tmp_path / "nope.yaml")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "pwned" not in res.stdout
    assert "bad.yaml:3:1: error: YAML syntax error" in res.stderr and "nope.yaml' does not exist" in res.stderr


@pytest.mark.parametrize("old, new, path, hint", [
    ("max_seq_len: 128", "max_seq_len: 128\n  dtype: fp16", ("model", "dtype"), "did you mean 'float16'?"),
    ("max_seq_len: 128", "max_seq_len: 128\n  dtype: bf16", ("model", "dtype"), "did you mean 'bfloat16'?"),
    ("type: mlp, d_ff: 128", "type: ffn, d_ff: 128", ("components", "F", "type"), "did you mean 'mlp'?"),
    ("type: mlp, d_ff: 128", "type: rmsnorm", ("components", "F", "type"),
     "'rmsnorm' is a norm, not a layout component: set it for the whole model as "
     "`model: {norm: {type: rmsnorm}}`; layout components are "
     + ", ".join(types_with_role("sublayer"))),
])
def test_hints_for_common_slips(problems, old, new, path, hint):
    assert_located(problems(SPEC.replace(old, new)), path=path, hint=hint)


def test_empty_components_and_missing_layout_say_what_to_write(problems):
    text = SPEC.replace("  A: {type: attention, n_heads: 4, n_kv_heads: 2}\n  F: {type: mlp, d_ff: 128}\n",
                        "").replace("components:", "components: {}").replace('layout: "(A F) x 2"\n', "")
    missing, empty = sorted(problems(text), key=lambda p: p.message)
    assert empty.message == "must not be empty" and empty.path == ("components",)
    assert empty.hint == "define at least one, e.g. `A: {type: attention, n_heads: 8}`"
    assert missing.message == "missing required key 'layout'"
    assert missing.hint == "add `layout:` (the stack of sublayers, e.g. '(A F) x 4')"


# --- editor schema --------------------------------------------------------------------------

def test_editor_schema_is_current():
    assert json.loads(EDITOR_FILE.read_text()) == editor_schema(), "run `archspec schema --write`"


def test_editor_schema_is_valid_and_accepts_raw_specs():
    schema = json.loads(EDITOR_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    shipped = sorted((ROOT / "specs").glob("*.yaml"))
    assert any("extends" in p.read_text() for p in shipped)  # partial children are covered
    for path in shipped:
        name = path.name
        # raw YAML as an editor reads it (YAML 1.2: `1e-5` is a number), `${}` strings unevaluated
        raw = parse(path.read_text()).data
        assert "${" in json.dumps(raw) or name != "tiny.yaml"
        errors = list(validator.iter_errors(raw))
        assert errors == [], [e.message for e in errors]
    # and it still catches mistakes
    bad = parse(GOOD.replace("n_heads: 4", "n_head: 4")).data
    assert any("n_head" in e.message for e in validator.iter_errors(bad))
    raw = parse(GOOD.replace("d_model: 64", "d_model: ${width} * 2")).data
    assert list(validator.iter_errors(raw)) == []
    assert list(validator.iter_errors({"extends": "base.yaml"})) == []  # a child may be partial


# --- issue 17: what comes after parsing -----------------------------------------------------

@pytest.mark.parametrize("old, new, path, where", [
    ("type: mlp", "eype: mlp", ("components", "F", "eype"), (7, "eype")),
    ("max_seq_len: 128", "max_seq_len: 128\n  norm: {typ: rmsnorm}", ("model", "norm", "typ"), (5, "typ")),
])
def test_misspelled_type_key_is_the_unknown_key_not_an_internal_error(problems, old, new, path, where):
    text = SPEC.replace(old, new)
    assert_located(problems(text), path=path, at=col(text, *where), message=f"unknown key '{path[-1]}'",
                   hint="did you mean 'type'?")


@pytest.mark.parametrize("value, got", [("[A, F]", "a list"), ("3", "number 3"), ("2.5", "number 2.5"),
                                        ("abc", "string 'abc'")])
def test_components_that_are_not_a_mapping(problems, value, got):
    text = SPEC.replace("components:\n  A: {type: attention, n_heads: 4, n_kv_heads: 2}\n  F: {type: mlp, d_ff: 128}",
                        f"components: {value}")
    # one mistake: the layout's symbols are not reported again as undefined
    assert_located(problems(text), path=("components",), at=(5, 13), message=f"expected a mapping, got {got}",
                   hint_words="map each name to its settings")


@pytest.mark.parametrize("value, got", [("{name: mlp}", "a mapping"), ("[mlp]", "a list")])
def test_type_given_as_a_mapping_or_list(problems, value, got):
    text = SPEC.replace("type: mlp", f"type: {value}")
    p = assert_located(problems(text), path=("components", "F", "type"), at=col(text, 7, value),
                       words=f"expected a component type ('attention', ")
    assert p.message.endswith(f"got {got}") and p.hint == "write one name, e.g. `type: attention`"
    text = SPEC.replace("max_seq_len: 128", f"max_seq_len: 128\n  norm: {{type: {value}}}")
    assert_located(problems(text), path=("model", "norm", "type"),
                   message=f"expected a component type ('layernorm', 'rmsnorm'), got {got}")


@pytest.mark.parametrize("old, new, path", [
    ("max_seq_len: 128", "max_seq_len: 128\n  init_std: .nan", ("model", "init_std")),
    ("max_seq_len: 128", "max_seq_len: 128\n  norm: {type: rmsnorm, eps: .inf}", ("model", "norm", "eps")),
    ("max_seq_len: 128", "max_seq_len: 128\n  norm: {type: layernorm, eps: -.inf}", ("model", "norm", "eps")),
    ("n_kv_heads: 2}", "n_kv_heads: 2, rope_theta: .inf}", ("components", "A", "rope_theta")),
    ("d_ff: 128}", "d_ff: 128}\n  M: {type: mom, n_heads: 2, head_dim: 32, expand_v: .inf}", ("components", "M", "expand_v")),
    ("d_ff: 128}", "d_ff: 128}\n  M: {type: mom, n_heads: 2, head_dim: 32, expand_v: .nan}", ("components", "M", "expand_v")),
    ("d_ff: 128}", "d_ff: 128}\n  M: {type: mamba, expand: .inf}", ("components", "M", "expand")),
    ("d_ff: 128}", "d_ff: 128}\n  M: {type: mamba2, A_init_range: [1, .nan]}", ("components", "M", "A_init_range", 1)),
    ("model:\n  vocab", "vars: {unused: .nan}\nmodel:\n  vocab", ("vars", "unused")),
])
def test_non_finite_numbers_are_refused_everywhere(problems, old, new, path):
    p = assert_located(problems(SPEC.replace(old, new)), path=path, words="must be a finite number, got")
    assert p.hint == "`.nan` and `.inf` are not values a model can have; write a finite number"


def test_non_finite_number_reached_through_a_reference_is_reported_once(problems):
    text = "vars: {w: .inf}\n" + SPEC.replace("d_ff: 128", 'd_ff: "${w}"')
    assert_located(problems(text), path=("vars", "w"), at=(1, 11), message="must be a finite number, got inf")


@pytest.mark.parametrize("literal", ["4611686018427387905", "1e300", "-1e19"])
def test_literal_numbers_have_the_expressions_bound(problems, literal):
    p = assert_located(problems("vars: {big: " + literal + "}\n" + SPEC), path=("vars", "big"),
                       words="is out of range: a number in a spec is at most 2**62")
    assert p.hint and "check the number" in p.hint


def test_override_index_errors_are_all_reported_with_the_others(problems):
    text = SPEC.replace("d_ff: 128}", "d_ff: 128, bias: 3}") + (
        "overrides:\n  - {at: -1, set: {window: 4}}\n  - {at: [99, 0], set: {window: 4}}\n"
        "  - {at: 1, set: {type: attention}}\n")
    found = problems(text)
    assert [p.path for p in found] == [("components", "F", "bias"), ("overrides", 0, "at"),
                                       ("overrides", 1, "at", 0), ("overrides", 2, "set", "type")]
    assert found[1].hint == "sublayer indices count from 0 over the expanded layout (no negative indices)"
    assert found[2].message == "sublayer 99 does not exist: the layout has 4 (0 to 3)"
    assert found[3].message == "an override cannot change a component's type"
    assert "define a component of that type" in found[3].hint and at(found[3]) == col(text, 12, "type")


def test_override_of_a_sound_component_is_checked_beside_a_broken_one(problems):
    text = SPEC.replace("d_ff: 128}", "d_ff: 0}") + "overrides:\n  - {at: 0, set: {n_kv_heads: 3}}\n"
    assert [p.path for p in problems(text)] == [("components", "F", "d_ff"), ("overrides", 0, "set", "n_kv_heads")]


@pytest.mark.parametrize("name, why", [
    ("x12", "'x' followed by digits is reserved for repetition"),
    ("é", "only ASCII letters, digits and '_'"),
    ("'a b'", "an identifier starts with a letter or '_'"),
    ("a" * 65, "65 characters, over the limit of 64"),
])
def test_invalid_component_names_say_why(problems, name, why):
    text = SPEC.replace("  F: {type: mlp, d_ff: 128}", f"  F: {{type: mlp, d_ff: 128}}\n  {name}: {{type: mlp}}")
    p = assert_located(problems(text), key=name.strip("'"), at=(8, 3), words=why)
    assert p.message.startswith(f"'{name.strip(chr(39))}' is not a valid component name: ")
    assert "at most 64 characters" in p.hint


def test_name_limit_in_messages_is_the_schemas():
    from archspec.schema import strict_schema
    from archspec.validate import MAX_NAME_CHARS
    assert strict_schema()["properties"]["components"]["propertyNames"]["maxLength"] == MAX_NAME_CHARS


@pytest.mark.parametrize("word, value", [("yes", "true"), ("off", "false"), ("On", "true"), ("n", "false")])
def test_yaml_1_1_booleans_are_strings(problems, word, value):
    text = SPEC.replace("max_seq_len: 128", f"max_seq_len: 128\n  tie_embeddings: {word}")
    assert_located(problems(text), path=("model", "tie_embeddings"), at=(5, 19),
                   message=f"expected true or false, got string '{word}'",
                   hint=f"specs are YAML 1.2, where only true and false are booleans ('{word}' is a string): "
                        f"write {value}")


@pytest.mark.parametrize("text", [
    SPEC.replace("type: mlp", "eype: mlp"), SPEC.replace("components:", "components: [1]\nx:"),
    SPEC.replace("type: mlp", "type: {a: 1}"), SPEC.replace("max_seq_len: 128", "max_seq_len: 128\n  init_std: .nan"),
    SPEC.replace("d_ff: 128", "d_ff: !!int abc"), SPEC.replace("d_ff: 128", "d_ff: !!bool maybe"),
    SPEC + "overrides:\n  - {at: 0, set: {type: mlp}}\n",
])
def test_cli_exit_code_1_not_3_for_issue_17_inputs(write, capsys, text):
    assert main(["validate", str(write(text))]) == 1
    err = capsys.readouterr().err
    assert "internal error" not in err and "spec.yaml:" in err


def _limits_table() -> str:
    """docs/spec.md's table of maxima, as the schemas have them (keys grouped by limit)."""
    from archspec.schema import maxima
    rows: dict = {}
    for key, value, why in maxima():
        shown = f"{value:,}" if isinstance(value, int) else format(value, "g").replace("e+", "e")
        rows.setdefault((shown, why), []).append(key)
    lines = ["| keys | maximum | why |", "|---|---:|---|"]
    lines += [f"| {', '.join(f'`{k}`' for k in keys)} | {value} | {why} |" for (value, why), keys in rows.items()]
    return "\n".join(lines)


def test_docs_state_every_limit_and_why():
    assert _limits_table() in (ROOT / "docs" / "spec.md").read_text(), "update the table in docs/spec.md"


def test_every_number_of_every_component_has_a_maximum_with_a_reason():
    from archspec.components import REGISTRY
    from archspec.limits import WHY_KEY
    from archspec.schema import component_schema, maxima
    bounded = {key for key, _, why in maxima() if why}
    for t in REGISTRY:
        for key, prop in component_schema(t).get("properties", {}).items():
            if '"integer"' in json.dumps(prop) or '"number"' in json.dumps(prop):
                assert f"{t}.{key}" in bounded, f"{t}.{key} has no maximum with `{WHY_KEY}`"
    for key in ("vocab_size", "d_model", "max_seq_len", "init_std"):
        assert f"model.{key}" in bounded


@pytest.mark.parametrize("old, new, path, words, why", [
    ("n_kv_heads: 2}", "n_kv_heads: 2}\n  M: {type: mom, n_memories: 100000000}", ("components", "M", "n_memories"),
     "must be <= 256, got 100,000,000", "MoM uses 2 to 8 memories"),
    ("n_kv_heads: 2}", "n_kv_heads: 2}\n  E: {type: moe, n_experts: 100000000}", ("components", "E", "n_experts"),
     "must be <= 4,096, got 100,000,000", "DeepSeek-V3: 256"),
    ("n_kv_heads: 2}", "n_kv_heads: 2}\n  M: {type: mom, expand_v: 1e300}", ("components", "M", "expand_v"),
     "is out of range: a number in a spec is at most 2**62", "check the number"),
    ("n_kv_heads: 2}", "n_kv_heads: 2}\n  M: {type: mom, expand_v: 1000.0}", ("components", "M", "expand_v"),
     "must be <= 16, got 1000", "expansion factors in use"),
    ("d_model: 64", "d_model: 100000000000000000", ("model", "d_model"), "must be <= 131,072, got 100,000,000,000,000,000",
     "PaLM"),
    ("max_seq_len: 128", "max_seq_len: 128\n  init_std: 3", ("model", "init_std"), "must be <= 1, got 3", "diverges"),
    ('"(A F) x 2"', "{layers: 20000, sublayers: [{use: A}]}", ("layout", "layers"), "must be <= 16,384, got 20,000",
     "DeepNet"),
])
def test_maxima_say_the_limit_and_why(problems, old, new, path, words, why):
    assert_located(problems(SPEC.replace(old, new)), key=path[-1], path=path, words=words, hint_words=why)


def test_parameter_ceiling_is_checked_in_validation(problems):
    text = SPEC.replace("d_model: 64", "d_model: 131072").replace("d_ff: 128", "d_ff: 1048576").replace(
        "(A F) x 2", "F x 16384").replace("n_heads: 4, n_kv_heads: 2", "n_heads: 64")
    p = assert_located(problems(text), path=("components", "F"), at=(7, 3),
                       words="the model has at least 6.76e+15 parameters, over the ceiling of "
                             "1,000,000,000,000,000; F accounts for 6.76e+15 of them")
    assert "2T parameters" in p.hint


def _reference_validator(schema):
    """jsonschema alone, as the validator was before its fast paths: x-dispatch descends always."""
    import jsonschema

    from archspec.validate import _Validator

    def dispatch(validator, schemas, instance, _schema):
        kind = instance.get("type") if isinstance(instance, dict) else None
        if isinstance(kind, str) and kind in schemas:
            yield from validator.descend(instance, schemas[kind])
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, validators={"x-dispatch": dispatch},
                                       type_checker=_Validator.TYPE_CHECKER)
    return cls(schema)


def test_certainly_valid_passes_nothing_jsonschema_refuses():
    """validate.certainly_valid lets values skip jsonschema: on every property and every
    component schema, whatever it passes jsonschema passes too, and it passes the common case."""
    import itertools
    import random

    from archspec.components import REGISTRY
    from archspec.schema import component_schema, strict_schema
    from archspec.validate import certainly_valid
    rnd = random.Random(17)
    values = [None, True, False, 0, 1, -1, 2, 3, 7, 64, 1000, 2**40, 2**63, 0.0, -0.0, 0.5, 1.0, 1.5, 2.0, 16.0,
              1e-6, 1e300, float("nan"), float("inf"), -float("inf"), "", "auto", "swiglu", "token", "x", [1, 2],
              [1, 16], [0.5], {}, {"a": 1}]
    values += [rnd.choice([rnd.randint(-10, 5000), rnd.uniform(-5, 5000)]) for _ in range(100)]
    accepted = 0
    for t, value in itertools.product(sorted(REGISTRY), values):
        for key, prop in component_schema(t)["properties"].items():
            if certainly_valid(value, prop):
                accepted += 1
                assert _reference_validator(prop).is_valid(value), (t, key, value)
    assert accepted > 1000
    for t in sorted(REGISTRY):
        schema = component_schema(t)
        keys = list(schema["properties"]) + ["n_head", "extra"]
        for _ in range(200):
            cfg = {"type": t, **REGISTRY[t].example}
            for _ in range(rnd.randint(0, 3)):
                cfg[rnd.choice(keys)] = rnd.choice(values)
            if certainly_valid(cfg, schema):
                accepted += 1
                assert _reference_validator(schema).is_valid(cfg), cfg
    names = strict_schema()["properties"]["components"]["propertyNames"]
    for name in ["A", "attn", "mlp_1", "*", "-", "x", "x12", "x1a", "é", "a b", "", "a" * 64, "a" * 65, "_", "1a", "**"]:
        assert certainly_valid(name, names) == _reference_validator(names).is_valid(name), name


def test_fast_paths_report_what_jsonschema_alone_reports(monkeypatch):
    """Mutated shipped specs (a value swapped for another, a key dropped or renamed): the
    problems schema_problems reports with its fast paths are those it reports with jsonschema
    alone, and a spec it passes without jsonschema jsonschema passes."""
    import copy
    import random

    import archspec.validate as V
    from archspec.schema import strict_schema
    rnd = random.Random(17)
    pool = [None, True, 0, -1, 1, 3, 64, 2**40, 0.5, 1.5, float("nan"), "", "x", "auto", "(A F) x 2", [], {}, [1, 2],
            {"type": "mlp"}, {"at": 0, "set": {"window": 2}}, "A" * 70, "é"]
    docs = [parse(p.read_text()).data for p in sorted((ROOT / "specs").glob("*.yaml"))]

    def leaves(obj, path=()):
        yield path
        children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for k, v in children:
            yield from leaves(v, path + (k,))

    fast_cache = dict(V._VALIDATORS)
    for _ in range(300):
        data = copy.deepcopy(rnd.choice(docs))
        path = rnd.choice([p for p in leaves(data) if p])
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        if rnd.random() < 0.8:
            parent[path[-1]] = copy.deepcopy(rnd.choice(pool))
        elif isinstance(parent, dict):
            parent[rnd.choice(["type", "eype", "n_head", path[-1]])] = parent.pop(path[-1])
        doc = parse("a: 1\n")
        fast = V.schema_problems(data, doc, strict_schema())
        monkeypatch.setattr(V, "_validator", _reference_validator)
        monkeypatch.setattr(V, "certainly_valid", lambda value, schema: False)
        slow = V.schema_problems(data, doc, strict_schema())
        monkeypatch.undo()
        V._VALIDATORS.update(fast_cache)
        assert [(p.path, p.message, p.hint) for p in fast] == [(p.path, p.message, p.hint) for p in slow], data


def test_many_errors_among_many_names_cost_linear_time(problems, monkeypatch):
    """2,000 components and 2,000 undefined layout symbols, 2,000 undefined references among
    2,000 vars: each suggestion compares the word with names of about its length and first
    letter, not with every name (errors x names was minutes at 10,000 of each), and a hint
    names 20 components, not all of them."""
    import difflib
    compared = []
    real = difflib.get_close_matches
    monkeypatch.setattr(difflib, "get_close_matches",
                        lambda word, choices, *a, **k: compared.append(len(choices)) or real(word, choices, *a, **k))
    n = 2000
    text = ("vars: {" + ", ".join(f"v{i}: 1" for i in range(n)) + "}\n"
            "model: {vocab_size: 256, d_model: 64, max_seq_len: 128}\ncomponents:\n"
            + "".join(f"  C{i}: {{type: mlp, d_ff: '${{w{i}}}'}}\n" for i in range(n))
            + "layout: [" + ", ".join(f"D{i}" for i in range(n)) + "]\n")
    found = problems(text)
    assert len(found) == 2 * n
    assert len(compared) >= 2 * n and sum(compared) < 20 * n  # all names each time: 8,000,000
    layout = [p for p in found if p.path[:1] == ("layout",)]
    assert layout[0].hint.startswith("defined components: C0, C1, C10, C100,") and \
        layout[0].hint.endswith(" and 1,980 more")


def test_counts_of_components_and_overrides_are_capped(problems):
    """4,097 components or overrides: one error each, with the reason, and nothing configured
    (each distinct config is work for validation and accounting)."""
    from archspec.limits import COMPONENTS, OVERRIDES
    many = "".join(f"  C{i}: {{type: mlp}}\n" for i in range(COMPONENTS.value + 1))
    text = SPEC.replace("  A: {type: attention, n_heads: 4, n_kv_heads: 2}\n", many).replace('"(A F) x 2"', "C0") \
        + "overrides:\n" + "  - {at: 0, set: {d_ff: 8}}\n" * (OVERRIDES.value + 1)
    found = problems(text)
    assert [(p.path, p.message) for p in found] == [
        (("components",), "at most 4,096 components, got 4,098"), (("overrides",), "at most 4,096 overrides, got 4,097")]
    assert "handful of components" in found[0].hint and "`at` takes a list" in found[1].hint
