"""Stage 1: reading files safely, YAML quirks, locations and `extends`."""
from __future__ import annotations

import time
from pathlib import Path as FsPath

import pytest

from archspec import loader
from archspec.errors import FileProblem, SpecError
from archspec.loader import load_document, load_with_extends, parse
from archspec.spec import load

from conftest import GOOD
from helpers import assert_located


def one(text_or_path, *, file_error=SpecError):
    with pytest.raises(file_error) as info:
        if isinstance(text_or_path, str):
            parse(text_or_path, "s.yaml")
        else:
            load(text_or_path)
    assert len(info.value.problems) == 1
    return info.value.problems[0]


def test_locations_are_one_based_for_keys_and_values():
    doc = parse("model:\n  d_model: 64\nlayout: 'A'\n", "s.yaml")
    assert doc.data == {"model": {"d_model": 64}, "layout": "A"}
    assert (doc.loc(("model", "d_model")).line, doc.loc(("model", "d_model")).col) == (2, 12)
    assert (doc.key_loc(("model", "d_model")).line, doc.key_loc(("model", "d_model")).col) == (2, 3)
    assert str(doc.loc(("layout",))) == "s.yaml:3:9"
    # a path below a scalar falls back to its nearest located ancestor
    assert doc.loc(("model", "d_model", "x")) == doc.loc(("model", "d_model"))


@pytest.mark.parametrize("text, value", [("1e-5", 1e-5), ("1E5", 1e5), ("-2.5e+3", -2500.0), (".5", 0.5),
                                         ("-.5", -0.5), ("3", 3), ("0x10", 16), ("0o17", 15), ("1_000", 1000),
                                         ("010", 10), ("true", True), ("FALSE", False), ("~", None),
                                         # YAML 1.1 only: strings in YAML 1.2 (issue 17)
                                         ("yes", "yes"), ("off", "off"), ("y", "y"), ("1:30", "1:30"),
                                         ("0b11", "0b11"), ("=", "=")])
def test_scalars_follow_yaml_1_2(text, value):
    got = parse(f"eps: {text}\n").data["eps"]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text, value", [("!!int 0x10", 16), ("!!float 3", 3.0), ("!!str 3", "3"),
                                         ("!!bool true", True), ("!!null ~", None)])
def test_explicit_plain_tags_build_their_type(text, value):
    got = parse(f"a: {text}\n").data["a"]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("value, words", [
    ("!!int abc", "'abc' is not a valid !!int value"), ("!!bool maybe", "'maybe' is not a valid !!bool value"),
    ("!!bool yes", "'yes' is not a valid !!bool value"), ("!!float x", "'x' is not a valid !!float value"),
    ("!!map 5", "is not allowed on a scalar"), ("!!str {a: 1}", "is not allowed on a mapping"),
    ("!!omap [a]", "is not allowed on a list"),
])
def test_explicit_tags_that_do_not_fit_are_located_errors(value, words):
    assert_located([one(f"model:\n  x: {value}\n")], path=("model", "x"), at=(2, 6), words=words)


def test_alias_chains_nested_past_the_depth_limit_are_refused():
    # each anchor nests its predecessor 50 levels deeper: 3 of them pass 64 through aliases alone
    lines = ["a0: &a0 1"] + [f"a{k}: &a{k} " + "[" * 50 + f"*a{k - 1}" + "]" * 50 for k in range(1, 40)]
    p = one("\n".join(lines) + "\n")
    assert "nested more than 64 levels deep (aliases included)" in p.message and p.loc.line == 3


@pytest.mark.parametrize("key, line", [("A" * 1100 + ": 1", 1), ("m: {" + "A" * 1100 + ": 1}", 1),
                                       ("m:\n  '" + "A" * 1100 + "': 1", 2)])
def test_key_over_yamls_limit_is_named(key, line):
    p = one(key + "\n")
    assert p.message == "a mapping key 1,100 characters long: YAML allows at most 1,024 characters in a key"
    assert p.loc.line == line and "shorter name" in p.hint


def test_unquoted_date_stays_a_string():
    assert parse("description: 2024-01-31\n").data["description"] == "2024-01-31"


def test_merge_keys_merge_and_explicit_keys_win():
    data = parse("base: &b {n_heads: 4, bias: true}\nA:\n  <<: *b\n  n_heads: 8\n").data
    assert data["A"] == {"n_heads": 8, "bias": True}


@pytest.mark.parametrize("value, tag", [
    ('!!python/object/apply:os.system ["echo hi"]', "python/object/apply:os.system"),
    ("!!python/name:os.system ''", "python/name:os.system"),
    ("!!binary aGVsbG8=", "binary"),
    ("!!set {a, b}", "set"),
    ("!!timestamp 2020-01-01", "timestamp"),
    ("!custom 3", "!custom"),
])
def test_tags_that_construct_objects_are_refused(value, tag, capfd):
    p = assert_located([one(f"model:\n  name: ok\n  x: {value}\n")], path=("model", "x"), at=(3, 6), words=tag)
    assert "not allowed" in p.message
    assert "hi" not in capfd.readouterr().out  # nothing ran


def test_every_tag_problem_is_reported():
    with pytest.raises(SpecError) as info:
        parse("a: !!binary aGVsbG8=\nb: !!set {x}\nc: ok\n")
    assert [p.path for p in info.value.problems] == [("a",), ("b",)]


def test_duplicate_key_is_located_at_the_second_one():
    p = one("model:\n  d_model: 1\n  vocab_size: 2\n  d_model: 3\n")
    assert "duplicate key 'd_model'" in p.message and "line 2" in p.message
    assert (p.loc.line, p.loc.col) == (4, 3) and p.path == ("model", "d_model") and p.hint


@pytest.mark.parametrize("seq", [True, False])
def test_billion_laughs_is_refused_quickly(seq):
    if seq:
        lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i-1}"] * 10) + "]" for i in range(1, 10)]
    else:
        lines = ["a0: &a0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9, j: 10}"]
        lines += [f"a{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i-1}" for j in range(10)) + "}"
                  for i in range(1, 10)]
    start = time.perf_counter()
    p = one("\n".join(lines) + "\n")
    assert time.perf_counter() - start < 0.5
    assert "more than 100,000 values" in p.message and p.hint and p.loc.file == "s.yaml"


@pytest.mark.parametrize("text", ["a: &a [1, *a]\n", "a: &a {b: *a}\n", "a: &a {<<: *a}\n"])
def test_alias_that_contains_itself_is_refused(text):
    p = one(text)
    assert "cycle" in p.message and p.loc.line == 1


def test_deep_nesting_is_refused_not_a_recursion_error():
    p = one("a: " + "[" * 3000 + "]" * 3000 + "\n")
    assert "nested more than" in p.message and p.loc.line == 1


def test_yaml_syntax_error_is_located():
    p = one("model:\n  d_model: 64\n  name: [a, b\n  vocab_size: 3\n")
    assert p.message.startswith("YAML syntax error") and p.loc.line in (3, 4) and p.hint
    p = one("model:\n  d_model: 64\n   bad: 1\n")
    assert p.message.startswith("YAML syntax error") and p.loc.line == 3


def test_several_documents_are_a_located_error():
    p = one("a: 1\n---\nb: 2\n")
    assert "YAML" in p.message and p.loc.line == 2


@pytest.mark.parametrize("content, expect", [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"# only\n# comments\n\n", "empty"),
    (b"model:\x00\n", "binary"),
    (b"model:\n  name: caf\xe9\n", "UTF-8"),
    (b"- a\n- b\n", "not a list"),
    (b"hello\n", "not a string"),
    (b"42\n", "not a number"),
])
def test_unusable_files_are_clean_errors(write, content, expect):
    p = one(write(content))
    assert expect in p.message and p.hint and p.loc.file.endswith("spec.yaml")
    if expect == "UTF-8":
        assert p.loc.line == 2


def test_file_over_one_mib_is_refused_without_parsing(write):
    path = write("a: 1\n" * (loader.MAX_FILE_BYTES // 5 + 10))
    p = one(path)
    assert "byte limit" in p.message and f"{loader.MAX_FILE_BYTES:,}" in p.message


def test_missing_file_and_directory_are_file_problems(tmp_path):
    p = one(tmp_path / "nope.yaml", file_error=FileProblem)
    assert "does not exist" in p.message and "nope.yaml" in p.message
    p = one(tmp_path, file_error=FileProblem)
    assert "is a directory" in p.message


# --- extends ---------------------------------------------------------------------------------

def test_extends_merges_mappings_and_replaces_scalars(write):
    write(GOOD, "base.yaml")
    child = write("extends: base.yaml\nmodel: {d_model: 32}\nlayout: 'A F'\n", "child.yaml")
    doc = load_with_extends(child)
    assert doc.data["model"]["d_model"] == 32 and doc.data["model"]["vocab_size"] == 256
    assert doc.data["layout"] == "A F" and "extends" not in doc.data
    assert doc.loc(("model", "d_model")).file.endswith("child.yaml")
    assert doc.loc(("model", "vocab_size")).file.endswith("base.yaml")
    assert len(load(child).sublayers) == 2


def test_error_in_base_points_into_base_and_override_into_child(write):
    write(GOOD.replace("n_kv_heads: 2}", "n_kv_heads: 2, windw: 3}"), "base.yaml")
    child = write("""\
        extends: base.yaml
        components:
          F: {d_ff: -1}
        """, "child.yaml")
    with pytest.raises(SpecError) as info:
        load(child)
    by_path = {p.path: p for p in info.value.problems}
    base = by_path[("components", "A", "windw")]
    assert base.loc.file.endswith("base.yaml") and (base.loc.line, base.loc.col) == (7, 51)
    assert base.hint == "did you mean 'window'?"
    kid = by_path[("components", "F", "d_ff")]
    assert kid.loc.file.endswith("child.yaml") and (kid.loc.line, kid.loc.col) == (3, 13)
    assert len(info.value.problems) == 2


def test_override_in_child_points_into_child(write):
    write(GOOD, "base.yaml")
    child = write("""\
        extends: base.yaml
        overrides:
          - at: 0
            set: {n_heads: 3}
        """, "child.yaml")
    with pytest.raises(SpecError) as info:
        load(child)
    kv, divides = info.value.problems  # in reading order
    assert all(p.loc.file.endswith("child.yaml") for p in (divides, kv))
    # n_kv_heads is not set by the override, but the override caused it: shown at its `set:`
    assert kv.message == "sublayer 0 (A) with this override: n_kv_heads=2 does not divide n_heads=3"
    assert kv.path == ("overrides", 0, "set") and (kv.loc.line, kv.loc.col) == (4, 10)
    assert "does not divide d_model=64" in divides.message
    assert divides.path == ("overrides", 0, "set", "n_heads") and (divides.loc.line, divides.loc.col) == (4, 20)


def test_extends_in_a_subdirectory_is_relative_to_the_file(write):
    write(GOOD, "base.yaml")
    sub = write("extends: ../base.yaml\ncomponents: {F: {d_ff: 0}}\n", "sub/child.yaml")
    with pytest.raises(SpecError) as info:
        load(sub)
    [p] = info.value.problems
    assert p.loc.file.endswith("sub/child.yaml") and ".." not in p.loc.file.split("sub/")[0][-3:]


def test_extends_cycle_is_located(write):
    write("extends: b.yaml\nmodel: {d_model: 1}\n", "a.yaml")
    write("model: {vocab_size: 3}\nextends: a.yaml\n", "b.yaml")
    p = one(write("extends: b.yaml\n", "a.yaml").parent / "a.yaml")
    assert "cycle" in p.message and "a.yaml -> b.yaml -> a.yaml" in p.message
    assert p.loc.file.endswith("b.yaml") and p.loc.line == 2 and p.path == ("extends",)


def test_extends_itself_is_a_cycle(write):
    p = one(write("extends: spec.yaml\n"))
    assert "cycle" in p.message


def test_missing_extends_base_is_located(write):
    p = one(write("model: {d_model: 1}\nextends: [nope.yaml]\n"))
    assert "'nope.yaml'" in p.message and "does not exist" in p.message
    assert (p.loc.line, p.loc.col) == (2, 11) and p.hint


def test_extends_must_name_files(write):
    p = one(write("extends: {a: 1}\n"))
    assert "`extends` must be" in p.message and p.loc.line == 1


def test_broken_base_reports_its_own_file(write):
    write(b"model: [\n", "base.yaml")
    p = one(write("extends: base.yaml\n", "child.yaml"))
    assert p.loc.file.endswith("base.yaml") and "YAML syntax error" in p.message


def test_load_document_ignores_extends(write):
    doc = load_document(write("extends: missing.yaml\nmodel: {}\n"))
    assert doc.data["extends"] == "missing.yaml"


def test_device_files_are_refused_without_reading(tmp_path):
    p = one(FsPath("/dev/zero"), file_error=FileProblem)
    assert "not a regular file" in p.message


@pytest.mark.parametrize("make, words", [
    (lambda d: (d / "base").mkdir(), "which is a directory, not a spec file"),
    (lambda d: (d / "base").symlink_to("/dev/null"), "which is not a regular file (a device, pipe or socket)"),
    (lambda d: ((d / "base").symlink_to(d / "loop"), (d / "loop").symlink_to(d / "base")),
     "which is a symbolic link that loops back on itself"),
    (lambda d: (d / "base").symlink_to("gone.yaml"), "which is a symbolic link to 'gone.yaml', which does not exist"),
    (lambda d: None, "which does not exist"),
])
def test_extends_says_what_the_base_is(write, tmp_path, make, words):
    make(tmp_path)
    p = one(write("extends: base\nlayout: A\n"))
    assert p.path == ("extends",) and (p.loc.line, p.loc.col) == (1, 10) and words in p.message and p.hint


def test_unreadable_extends_base_is_located_at_the_extends_line(write, monkeypatch):
    """A base the process may not read (chmod 0 does not stop root, so the refusal is simulated
    at open(), where the loader meets it)."""
    import builtins
    base = write(GOOD, "base.yaml")
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(base):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    p = one(write("extends: base.yaml\n", "child.yaml"))
    assert p.path == ("extends",) and p.loc.file.endswith("child.yaml") and "cannot read" in p.message
    assert "Permission denied" in p.message


def test_symlink_loop_given_on_the_command_line_is_named(tmp_path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    p = one(tmp_path / "a.yaml", file_error=FileProblem)
    assert "is a symbolic link that loops back on itself" in p.message


def test_extends_with_an_empty_list_is_an_error(write):
    p = one(write("extends: []\nlayout: A\n"))
    assert p.path == ("extends",) and p.message.endswith("(this list is empty)") and p.hint
