"""Expressions: references, safe arithmetic, interpolation, and refusal of anything else."""
from __future__ import annotations

import pytest

from archspec.expr import ExprError, evaluate_arithmetic, resolve_references
from archspec.loader import parse
from archspec.spec import loads

from helpers import assert_located


def resolve(text):
    doc = parse(text, "s.yaml")
    data, problems, _broken = resolve_references(doc)
    return data, problems


@pytest.mark.parametrize("text, value", [
    ("7 // 2", 3), ("8 / 2", 4), ("7 / 2", 3.5), ("2 ** 10", 1024), ("-(3 + 4) * 2", -14),
    ("min(4, 2, 9)", 2), ("max(1, 3)", 3), ("10 % 4", 2), ("4.0 / 2", 2.0),
])
def test_arithmetic(text, value):
    got = evaluate_arithmetic(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", [
    "__import__('os')", "__import__('os').system('echo hi')", "(1).__class__", "x", "lambda: 1",
    "abs(1)", "min()", "min(x=1)", "[1, 2]", "1 if 1 else 2", "1 < 2", "'a' * 3", "not 1", "1 & 3",
    "10 ** 10 ** 10", "2 ** 64", "(2 ** 62) * 4", "9 ** 99", "1e400", "(-8) ** 0.5", "0 ** -1",
    "1e300 ** 2", "7 // 0", "7 % 0", "1 / 0", "1" * 600, "(" * 300 + "1" + ")" * 300,
])
def test_anything_else_is_refused_not_evaluated(text, capfd):
    with pytest.raises(ExprError):
        evaluate_arithmetic(text)
    assert "hi" not in capfd.readouterr().out


def test_references_dotted_and_bare_names():
    data, problems = resolve("""\
vars: {width: 32, d_model: 5}
model: {d_model: 64, max_seq_len: 128}
components:
  A: {n_heads: 4, n_kv_heads: "${components.A.n_heads} // 2"}
  F: {d_ff: "${d_model} * 4", half: "${model.d_model} // 2", w: "${vars.width}", sl: "${max_seq_len}"}
""")
    assert problems == []
    assert data["components"]["A"]["n_kv_heads"] == 2
    f = data["components"]["F"]
    assert f == {"d_ff": 20, "half": 32, "w": 32, "sl": 128}  # bare names: vars before model


def test_single_reference_keeps_its_type_and_interpolation_makes_text():
    data, problems = resolve("""\
vars: {n: 3, flag: true, name: tiny, eps: 1e-5}
a: "${flag}"
b: "(A F) x ${n}"
c: "${name}-v2"
d: "${eps}"
e: "${n} / 2"
""")
    assert problems == []
    assert data["a"] is True and data["b"] == "(A F) x 3" and data["c"] == "tiny-v2"
    assert data["d"] == 1e-5 and data["e"] == 1.5


def test_interpolated_layout_builds():
    spec = loads("""\
model: {vocab_size: 16, d_model: 16, max_seq_len: 8}
vars: {n_layers: 3}
components: {A: {type: attention, n_heads: 2}, F: {type: mlp, d_ff: "${d_model} * 4"}}
layout: "(A F) x ${n_layers}"
""")
    assert [s.symbols for s in spec.sublayers] == [("A",), ("F",)] * 3
    assert spec.components["F"].config["d_ff"] == 64


def test_undefined_reference_has_did_you_mean_and_location():
    _, problems = resolve("model: {d_model: 64}\nF: {d_ff: \"${d_modle} * 4\"}\n")
    assert_located(problems, path=("F", "d_ff"), at=(2, 11), words="'${d_modle}' is undefined",
                   hint="did you mean 'd_model'?")
    _, problems = resolve("model: {d_model: 64}\nF: \"${model.d_modle}\"\n")
    assert problems[0].hint == "did you mean 'd_model'?" and "'model.d_modle' does not exist" in problems[0].message


def test_cycle_is_reported_once_at_its_start():
    _, problems = resolve("vars: {a: \"${b} + 1\", b: \"${a}\"}\nF: {d_ff: \"${a}\"}\nG: {v: \"${G.v}\"}\n")
    assert [p.path for p in problems] == [("vars", "a"), ("G", "v")]
    assert problems[0].message == "references form a cycle: vars.a -> vars.b -> vars.a"
    assert problems[1].message == "references form a cycle: G.v -> G.v" and problems[0].hint


def test_error_in_a_referenced_value_is_reported_at_the_cause_only():
    _, problems = resolve("F: {d_ff: \"${x} * 2\"}\nvars: {x: \"${nope}\"}\n")
    [p] = problems
    assert p.path == ("vars", "x") and p.loc.line == 2


@pytest.mark.parametrize("expr, words", [
    ("${d_model} // 0", "division by zero"),
    ("${d_model} ** ${d_model}", "out of range"),
    ("${ d_model", "malformed reference"),
    ("${components.A} * 2", "is a mapping"),
])
def test_failed_expressions_are_located_problems(expr, words):
    _, problems = resolve(f"model: {{d_model: 64}}\ncomponents: {{A: {{x: 1}}}}\nF: {{d_ff: \"{expr}\"}}\n")
    assert_located(problems, path=("F", "d_ff"), at=3, words=words)


def test_expression_that_is_not_arithmetic_is_never_evaluated(problems, capfd):
    found = problems("""\
model: {vocab_size: 16, d_model: 16, max_seq_len: 8}
components:
  A: {type: attention, n_heads: 2}
  F: {type: mlp, d_ff: "__import__('os').system('echo hi') or ${d_model}"}
layout: "A F"
""")
    [p] = found
    assert p.path == ("components", "F", "d_ff") and "expected an integer" in p.message
    assert "hi" not in capfd.readouterr().out


def test_a_malformed_number_warns_nothing(recwarn):
    """`3and` makes Python's parser warn (invalid decimal literal) on stderr: the expression is
    reported as an error, and nothing else is printed (found by fuzzing, issue 17)."""
    with pytest.raises(ExprError):
        evaluate_arithmetic("64 * 3and 2")
    assert [w for w in recwarn if issubclass(w.category, SyntaxWarning)] == []


def test_a_long_chain_of_references_is_an_error_not_a_recursion_error(problems):
    """v0 -> v1 -> ... -> v300, each defined before the next: resolving recursed 300 levels (a
    RecursionError, exit 3; found by fuzzing, issue 17). References nest at most 64 deep."""
    lines = ["vars:"] + [f'  v{i}: "${{v{i + 1}}}"' for i in range(300)] + ["  v300: 64"]
    text = "\n".join(lines) + "\nmodel: {vocab_size: 256, d_model: '${v0}', max_seq_len: 128}\n" \
        "components:\n  F: {type: mlp, d_ff: 128}\nlayout: F\n"
    found = problems(text)
    first = found[0]
    assert first.path == ("vars", "v63") and first.loc.line == 65
    assert first.message == "references nested more than 64 deep: vars.v0 -> vars.v1 -> ... -> vars.v63 -> vars.v64"
    assert all("nested more than 64 deep" in p.message for p in found)
    shallow = "\n".join(["vars:"] + [f'  v{i}: "${{v{i + 1}}}"' for i in range(60)] + ["  v60: 64"])
    assert loads(shallow + "\nmodel: {vocab_size: 256, d_model: '${v0}', max_seq_len: 128}\n"
                 "components:\n  F: {type: mlp, d_ff: 128}\nlayout: F\n").model.d_model == 64
