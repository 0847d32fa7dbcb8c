"""Layout forms: patterns, parallel groups, compact words, explicit lists, rules; compact()."""
from __future__ import annotations

import pytest

from archspec.layout import MAX_SUBLAYERS, LayoutError, compact, expand_layout, parse_pattern

SYMS = {"M", "S", "E", "A", "F", "attn", "mlp", "-", "*"}
MMSE6 = [("M",), ("M",), ("S",), ("E",)] * 6


def expand(layout, symbols=SYMS):
    out, problems = expand_layout(layout, symbols)
    assert problems == [], problems
    return out


@pytest.mark.parametrize("layout", [
    "(M M S E) x 6", "(M M S E)x6", "(M M S E) × 6", "(MMSE) x 6", "MMSE x6", "MMSEMMSEMMSEMMSEMMSEMMSE",
    "(M M S E) x 3 (M M S E) x 3", "((M) x 2 S E) x 6",
    ["MMSE x 6"], ["M", "M", "S", "E"] * 6, ["(M M S E) x 2", "(M M S E) x 4"],
    {"layers": 6, "sublayers": [{"use": "M"}, {"use": "M"}, {"use": "S"}, {"use": "E"}]},
    {"layers": 12, "sublayers": [{"use": "M", "where": [{"period": 2, "offset": 1, "use": "S"}]},
                                 {"use": "M", "where": [{"period": 2, "offset": 1, "use": "E"}]}]},
])
def test_equivalent_forms_give_the_same_sublayers(layout):
    assert expand(layout) == MMSE6


def test_parallel_groups_in_patterns_and_lists():
    assert expand("[M | S | E] x 2") == [("M", "S", "E")] * 2
    assert expand("A [attn|mlp] F") == [("A",), ("attn", "mlp"), ("F",)]
    assert expand(["A", ["M", "S"], "F x 2"]) == [("A",), ("M", "S"), ("F",), ("F",)]
    assert expand({"layers": 2, "sublayers": [{"use": "[M | S]"}]}) == [("M", "S")] * 2


def test_megatron_words_with_punctuation_symbols():
    assert expand("M-M*") == [("M",), ("-",), ("M",), ("*",)]
    assert expand("attn mlp") == [("attn",), ("mlp",)]  # a defined multi-character name wins


def test_jamba_rules_attention_iff_layer_mod_8_is_4():
    layout = {"layers": 32, "sublayers": [
        {"use": "M", "where": [{"period": 8, "offset": 4, "use": "A"}]},
        {"use": "F", "where": [{"period": 2, "offset": 1, "use": "E"}]},
    ]}
    out = expand(layout)
    assert len(out) == 64
    mixers, mlps = out[0::2], out[1::2]
    assert [i for i, s in enumerate(mixers) if s == ("A",)] == [4, 12, 20, 28]
    assert all(s == ("M",) for i, s in enumerate(mixers) if i % 8 != 4)
    assert mlps == [("F",), ("E",)] * 16


def test_last_matching_rule_wins():
    layout = {"layers": 4, "sublayers": [{"use": "M", "where": [
        {"period": 2, "use": "A"}, {"period": 4, "offset": 0, "use": "S"}]}]}
    assert expand(layout) == [("S",), ("M",), ("A",), ("M",)]


@pytest.mark.parametrize("text, words", [
    ("(A F", "missing ')'"), ("A F)", "unmatched ')'"), ("x 3", "follows nothing"),
    ("[M | M]", "twice"), ("[MS]", "holds 2 symbols"), ("[M S]", "expected '|' or ']'"),
    ("[M | S", "never closed"), ("A x 1000000", f"more than {MAX_SUBLAYERS:,}"),
    ("((A x 1000) x 1000)", "more than"), ("Q", "undefined layout symbol 'Q'"),
    # issue 17: a fraction (a float from an expression) is a count that is not whole, not a symbol '.5'
    ("(A F) x 2.5", "repetition count '2.5' at position 7 of the pattern '(A F) x 2.5' is not a whole number"),
    ("(" * 3000 + "A" + ")" * 3000, "groups nested more than 32 deep at position 33"),  # was a RecursionError
    ("A x2.0", "repetition count '2.0'"),
])
def test_bad_patterns(text, words):
    with pytest.raises(LayoutError) as info:
        parse_pattern(text, SYMS)
    assert words in str(info.value) and info.value.hint


def test_undefined_symbol_did_you_mean():
    with pytest.raises(LayoutError) as info:
        parse_pattern("(attm mlp) x 2", SYMS)
    assert "'attm' at position 2" in str(info.value) and info.value.hint == "did you mean 'attn'?"
    with pytest.raises(LayoutError) as info:  # a compact word with one stray character
        parse_pattern("MXSE x 2", SYMS)
    assert "undefined layout symbol 'X' in 'MXSE' at position 2" in str(info.value)
    assert info.value.hint == "did you mean 'S'?" or "M" in info.value.hint


@pytest.mark.parametrize("layout", ["(A F) x 0", "", [], ["A x 0"],
                                    {"layers": 3, "sublayers": [{"use": "A x 0"}]}])
def test_layout_with_no_layers_is_a_problem(layout):
    out, problems = expand_layout(layout, SYMS)
    assert out == [] and [p.message for p in problems] == ["layout expands to no sublayers"]
    assert problems[0].hint


def test_rule_problems_have_relative_paths():
    _, problems = expand_layout({"layers": 2, "sublayers": [
        {"use": "M M"}, {"use": "S", "where": [{"period": 2, "offset": 2, "use": "Q"}]}]}, SYMS)
    paths = {p.path: p.message for p in problems}
    assert "got 2 sublayers" in paths[("sublayers", 0, "use")]
    assert "never applies" in paths[("sublayers", 1, "where", 0, "offset")]
    assert "'Q'" in paths[("sublayers", 1, "where", 0, "use")]


@pytest.mark.parametrize("layout", [
    " ".join(["A"] * (MAX_SUBLAYERS + 1)),           # a plain pattern, no repetition (was accepted)
    "AF" * (MAX_SUBLAYERS // 2 + 1),                 # one Megatron-style word
    ["A F"] * (MAX_SUBLAYERS // 2 + 1),              # the list form
])
def test_sublayer_cap_holds_without_repetition(layout):
    out, problems = expand_layout(layout, SYMS)
    assert out == [] and len(problems) == 1 and f"more than {MAX_SUBLAYERS:,} sublayers" in problems[0].message


def test_rule_form_with_huge_layer_count_is_refused_quickly():
    out, problems = expand_layout({"layers": 10 ** 9, "sublayers": [{"use": "M"}]}, SYMS)
    assert out == [] and problems[0].path == ("layers",) and "more than" in problems[0].message


@pytest.mark.parametrize("sublayers, text", [
    (MMSE6, "(M M S E) x 6"),
    ([("A",)] * 5, "A x 5"),
    ([("M", "S", "E")] * 2, "[M | S | E] x 2"),
    ([("A",), ("A",), ("F",)], "A x 2 F"),
    ([("A",)], "A"),
    ([], ""),
])
def test_compact(sublayers, text):
    assert compact(sublayers) == text
    if sublayers:
        assert expand(text) == sublayers  # compact text round-trips
