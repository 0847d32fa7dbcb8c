"""Stage 1: load a YAML spec safely, keeping the file:line:column of every key and value, and
merge its `extends` chain.

Safety: only plain YAML types are built (no tag constructs an object), duplicate keys are an
error, alias expansion and file size are bounded, and an unreadable, empty, binary or
non-mapping file is a clean error naming the file.
"""
from __future__ import annotations

import errno
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath

import yaml

from .errors import FileProblem, Loc, Path, Problem, SpecError

MAX_FILE_BYTES = 1 << 20  # a spec is a few KB; 1 MiB leaves room and stops accidents
MAX_NODES = 100_000  # values built after alias expansion (bounds "billion laughs")
MAX_EXTENDS_DEPTH = 16
MAX_DEPTH = 64  # nesting of mappings and lists; a spec needs about 6


@dataclass
class Document:
    """A parsed spec: plain data plus where each value (and each mapping key) came from."""

    data: dict
    locs: dict[Path, Loc] = field(default_factory=dict)
    key_locs: dict[Path, Loc] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def loc(self, path: Path) -> Loc | None:
        """The location of `path`, or of its nearest located ancestor."""
        path = tuple(path)
        while True:
            if path in self.locs:
                return self.locs[path]
            if not path:
                return None
            path = path[:-1]

    def key_loc(self, path: Path) -> Loc | None:
        return self.key_locs.get(tuple(path)) or self.loc(path)


def file_fault(p: FsPath) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) when `p` is not a regular file that exists, else None."""
    try:
        p.stat()
    except OSError as e:
        if os.path.islink(p):
            if e.errno == errno.ELOOP:
                return "is a symbolic link that loops back on itself", "point the link at a spec file"
            return f"is a symbolic link to '{os.readlink(p)}', which does not exist", "fix or remove the link"
        if e.errno == errno.ENOENT:
            return "does not exist", "check the path"
        return f"cannot be read: {e.strerror}", "check the path and its permissions"
    if p.is_dir():
        return "is a directory, not a spec file", "name a .yaml file"
    if not p.is_file():
        return "is not a regular file (a device, pipe or socket)", "name a .yaml file"
    return None


def read_text(path: str | os.PathLike) -> str:
    """Read a spec file, refusing what is not a small UTF-8 text file."""
    name = str(path)
    p = FsPath(path)
    fault = file_fault(p)
    if fault:
        what, hint = fault
        raise FileProblem([Problem(f"spec file '{name}' {what}", loc=Loc(name, 1, 1), hint=hint)])
    try:
        with open(p, "rb") as f:  # read at most one byte past the limit (stat can under-report)
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise SpecError([Problem(f"spec file is over the {MAX_FILE_BYTES:,}-byte limit",
                                     loc=Loc(name, 1, 1), hint="a spec is a few kilobytes; is this the right file?")])
    except OSError as e:
        raise FileProblem([Problem(f"cannot read '{name}': {e.strerror}", loc=Loc(name, 1, 1),
                                   hint="check the file's permissions")]) from None
    if b"\x00" in raw:
        raise SpecError([Problem("file is binary (contains NUL bytes), not a YAML spec",
                                 loc=Loc(name, 1, 1), hint="pass a YAML text file")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError([Problem(f"file is not valid UTF-8 text (byte {e.start})",
                                 loc=Loc(name, line, 1), hint="save the spec as UTF-8")]) from None
    if not text.strip() or all(l.strip().startswith("#") or not l.strip() for l in text.splitlines()):
        raise SpecError([Problem("spec file is empty", loc=Loc(name, 1, 1),
                                 hint="a spec needs at least `model:`, `components:` and `layout:`")])
    return text


# --- parsing: YAML events -> nodes -> plain data ------------------------------------------------
# PyYAML only tokenises and parses here (libyaml's C parser when PyYAML was built with it, about
# ten times faster than its pure-Python one; same events either way). Composing the events into
# nodes and the nodes into values is ours: no tag ever constructs an object, scalars resolve by
# YAML 1.2's core schema, and nesting, alias expansion and node counts are bounded as we go,
# without recursion that a hostile file could drive deep.
_EventParser = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader

_T = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, MAP, SEQ, OMAP, MERGE = (
    _T + k for k in ("str", "int", "float", "bool", "null", "map", "seq", "omap", "merge"))
_SCALAR_TAGS = {STR, INT, FLOAT, BOOL, NULL}

# YAML 1.2 core schema (plus `_` between digits, as `1_000`): `yes`, `off`, `1:30`, `010` as
# octal and `=` are YAML 1.1 and stay strings (or read as decimal: `010` is 10)
_NULL_RX = re.compile(r"(?:~|null|Null|NULL|)")
_BOOL_RX = re.compile(r"(?:true|True|TRUE|false|False|FALSE)")
_INT_RX = re.compile(r"(?:[-+]?[0-9][0-9_]*|0o[0-7][0-7_]*|0x[0-9a-fA-F][0-9a-fA-F_]*)")
_FLOAT_RX = re.compile(
    r"""(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))""", re.X)
_MAYBE_NOT_STR = set("~nNtTfF-+0123456789.<")  # first characters of anything but a string


def _resolve_plain(text: str) -> str:
    """The tag of a plain (unquoted, untagged) scalar."""
    if text and text[0] not in _MAYBE_NOT_STR:
        return STR
    for tag, rx in ((NULL, _NULL_RX), (BOOL, _BOOL_RX), (INT, _INT_RX), (FLOAT, _FLOAT_RX)):
        if rx.fullmatch(text):
            return tag
    return MERGE if text == "<<" else STR


def _scalar_value(tag: str, text: str):
    """The value of a scalar with a plain-type tag; ValueError when an explicit tag does not fit
    the text (`!!int abc`, `!!bool yes`)."""
    if tag == STR:
        return text
    if tag == NULL:
        if not _NULL_RX.fullmatch(text):
            raise ValueError
        return None
    if tag == BOOL:
        if not _BOOL_RX.fullmatch(text):
            raise ValueError
        return text.lower() == "true"
    digits = text.replace("_", "")
    if tag == INT:
        if not _INT_RX.fullmatch(text):
            raise ValueError
        base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
        return int(digits[2:] if base != 10 else digits, base)
    special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    return special[digits.lower()] if digits.lower() in special else float(digits)  # ValueError if not


class _Node:
    """A composed YAML node: kind 'scalar' (value: the text), 'seq' (value: nodes) or 'map'
    (value: key and value nodes alternating); `size` and `depth` once measured."""

    __slots__ = ("kind", "tag", "value", "line", "col", "size", "depth")

    def __init__(self, kind: str, tag: str, value, mark):
        self.kind, self.tag, self.value = kind, tag, value
        self.line, self.col = mark.line + 1, mark.column + 1
        self.size = self.depth = None


def _problem_at(name: str, mark, message: str, hint: str | None = None) -> SpecError:
    return SpecError([Problem(message, loc=Loc(name, mark.line + 1, mark.column + 1), hint=hint)])


def _compose(text: str, name: str) -> _Node | None:
    """The single document's root node (None for an empty stream), from the parser's events,
    with a stack instead of recursion. Nesting deeper than MAX_DEPTH and more than MAX_NODES
    nodes are refused while reading, before the rest of the file is parsed."""
    parser = _EventParser(text)
    try:
        parser.get_event()  # StreamStart
        if parser.check_event(yaml.StreamEndEvent):
            return None
        parser.get_event()  # DocumentStart
        root = _compose_node(parser, name)
        parser.get_event()  # DocumentEnd
        if not parser.check_event(yaml.StreamEndEvent):
            raise _problem_at(name, parser.peek_event().start_mark,
                              "YAML error: a spec is one YAML document, but the file holds another "
                              "(a `---` line starts a new one)", "remove the `---` line and what follows")
        return root
    finally:
        parser.dispose()


def _compose_node(parser, name: str) -> _Node:
    anchors: dict[str, _Node] = {}
    stack: list[_Node] = []
    count = 0
    while True:
        event = parser.get_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise _problem_at(name, event.start_mark, f"YAML error: alias '*{event.anchor}' names no anchor "
                                  "defined before it", f"define `&{event.anchor}` on a value above this line")
            node = anchors[event.anchor]
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            node = stack.pop()
        else:
            count += 1
            if count > MAX_NODES:
                raise _too_many(name, event.start_mark)
            node = _start_node(event)
            if event.anchor is not None:
                anchors[event.anchor] = node  # before its children: `&a [*a]` is caught as a cycle
            if node.kind != "scalar":
                stack.append(node)
                if len(stack) > MAX_DEPTH:
                    raise _problem_at(name, event.start_mark, f"values nested more than {MAX_DEPTH} levels deep",
                                      "a spec nests a few levels; is this the right file?")
                continue
        if not stack:
            return node
        stack[-1].value.append(node)


def _start_node(event) -> _Node:
    """The node an event starts; an untagged scalar's tag is resolved (YAML 1.2 core schema)."""
    tag = event.tag if event.tag not in (None, "!") else None
    if isinstance(event, yaml.ScalarEvent):
        if tag is None:
            tag = _resolve_plain(event.value) if event.implicit[0] else STR  # [0]: plain
        return _Node("scalar", tag, event.value, event.start_mark)
    kind = "seq" if isinstance(event, yaml.SequenceStartEvent) else "map"
    return _Node(kind, tag or (SEQ if kind == "seq" else MAP), [], event.start_mark)


TOO_MANY = f"spec expands to more than {MAX_NODES:,} values (too large, or aliases nested too deep)"
TOO_MANY_HINT = "a spec holds a few hundred values; is this the right file? reduce alias use"


def _too_many(name: str, mark) -> SpecError:
    return _problem_at(name, mark, TOO_MANY, TOO_MANY_HINT)


def parse(text: str, name: str = "<string>") -> Document:
    """Parse YAML text into a Document; raises SpecError with every problem found."""
    try:
        root = _compose(text, name)
    except yaml.MarkedYAMLError as e:
        raise SpecError([_syntax_problem(e, text, name)]) from None
    except yaml.YAMLError as e:
        raise SpecError([Problem(f"YAML error: {e}", loc=Loc(name, 1, 1))]) from None
    if root is None:
        raise SpecError([Problem("spec file is empty", loc=Loc(name, 1, 1))])
    builder = _Builder(name)
    builder.measure(root)
    data = builder.build(root, ())
    if builder.problems:
        raise SpecError(builder.problems)
    if not isinstance(data, dict):
        raise SpecError([Problem(f"a spec must be a mapping of keys to values, not a {_kind(data)}",
                                 loc=Loc(name, root.line, root.col), hint="start the file with `model:`")])
    return Document(data, builder.locs, builder.key_locs, [name])


MAX_PLAIN_KEY = 1024  # YAML's limit on an implicit (plain or quoted) mapping key


def _syntax_problem(e: yaml.MarkedYAMLError, text: str, name: str) -> Problem:
    """A parser error as a located Problem; a key longer than YAML's 1,024-character limit for
    an implicit key (which the parser reports as a stray colon) is named as such."""
    mark = e.problem_mark or e.context_mark
    loc = Loc(name, mark.line + 1, mark.column + 1) if mark else Loc(name, 1, 1)
    what = " ".join(x for x in (e.context, e.problem) if x)
    if "nesting depth" in what:  # libyaml's own limit (1,000 levels) met while scanning ahead
        return Problem(f"values nested more than {MAX_DEPTH} levels deep", loc=loc,
                       hint="a spec nests a few levels; is this the right file?")
    if mark and mark.line < len(lines := text.splitlines()):
        head = re.split(r"[,{\[]|^\s*[-?]\s", lines[mark.line][: mark.column])[-1].strip().strip("'\"")
        if len(head) > MAX_PLAIN_KEY and ":" not in head:
            return Problem(f"a mapping key {len(head):,} characters long: YAML allows at most "
                           f"{MAX_PLAIN_KEY:,} characters in a key", loc=loc,
                           hint="use a shorter name (a component name is at most 64 characters)")
    return Problem(f"YAML syntax error: {what}", loc=loc,
                   hint="check indentation, colons and quoting on this line")


def _kind(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__)


class _Builder:
    """Turns a composed node tree into plain data, recording locations; refuses tags that would
    construct objects, duplicate keys and runaway alias expansion."""

    def __init__(self, name: str):
        self.name = name
        self.locs: dict[Path, Loc] = {}
        self.key_locs: dict[Path, Loc] = {}
        self.problems: list[Problem] = []

    def _loc(self, node: _Node) -> Loc:
        return Loc(self.name, node.line, node.col)

    def measure(self, root: _Node) -> None:
        """Refuse, before building anything, a tree whose aliases expand past MAX_NODES values
        ("billion laughs"), nest deeper than MAX_DEPTH, or refer to themselves (`a: &a [*a]`).
        An alias's target is complete, so measured, before the alias (anchors come first in the
        file, and the walk is in file order): the recursion is as deep as the file's nesting."""
        active: set[int] = set()

        def measure(node: _Node) -> None:
            if node.size is not None:
                return
            if id(node) in active:
                raise SpecError([Problem("an alias refers to the value that contains it (a cycle)",
                                         loc=self._loc(node),
                                         hint="anchors may only be reused after their value ends")])
            active.add(id(node))
            size, depth = 1, 0
            if node.kind != "scalar":
                for child in node.value:
                    measure(child)
                    size += child.size
                    depth = max(depth, child.depth)
                    if size > MAX_NODES:
                        raise SpecError([Problem(TOO_MANY, loc=self._loc(node), hint=TOO_MANY_HINT)])
                if depth + 1 > MAX_DEPTH:
                    raise SpecError([Problem(f"values nested more than {MAX_DEPTH} levels deep (aliases "
                                             "included)", loc=self._loc(node),
                                             hint="a spec nests a few levels; reduce alias use")])
            active.discard(id(node))
            node.size, node.depth = size, depth + 1

        measure(root)

    def build(self, node: _Node, path: Path):
        # measure() has bounded the expanded tree's size and depth, so this recursion is bounded
        self.locs[path] = self._loc(node)
        if node.kind == "map" and node.tag in (MAP, OMAP):
            return self._mapping(node, path)
        if node.kind == "seq" and node.tag == SEQ:
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if node.kind == "scalar" and node.tag in _SCALAR_TAGS:
            try:
                return _scalar_value(node.tag, node.value)
            except ValueError:
                short = node.tag.replace(_T, "!!")
                self.problems.append(Problem(f"'{node.value}' is not a valid {short} value", path,
                                             self._loc(node), f"remove the {short} tag, or write a value of that kind"))
                return None
        what = f"YAML tag '{node.tag}' is not allowed"
        if node.tag in _SCALAR_TAGS | {MAP, SEQ, OMAP}:  # a plain type's tag on the wrong kind of node
            what += f" on a {'list' if node.kind == 'seq' else 'mapping' if node.kind == 'map' else 'scalar'}"
        self.problems.append(Problem(what, path, self._loc(node),
                                     "specs hold plain values only (strings, numbers, booleans, lists, mappings)"))
        return None

    def _mapping(self, node: _Node, path: Path) -> dict:
        out: dict = {}
        seen: dict = {}
        merged: dict = {}
        items = node.value
        for key_node, value_node in zip(items[::2], items[1::2]):
            if key_node.tag == MERGE and key_node.kind == "scalar":
                merged.update(self._merge_source(value_node, path))
                continue
            if key_node.kind != "scalar" or key_node.tag not in _SCALAR_TAGS:
                self.problems.append(Problem("mapping keys must be plain strings", path, self._loc(key_node)))
                continue
            try:
                key = str(_scalar_value(key_node.tag, key_node.value))
            except ValueError:
                key = key_node.value
            if key in seen:
                self.problems.append(Problem(
                    f"duplicate key '{key}' (first defined at line {seen[key].line})",
                    path + (key,), self._loc(key_node), "remove or rename one of them"))
                continue
            seen[key] = self._loc(key_node)
            self.key_locs[path + (key,)] = seen[key]
            out[key] = self.build(value_node, path + (key,))
        return {**merged, **out} if merged else out

    def _merge_source(self, node: _Node, path: Path) -> dict:
        """`<<: *anchor` merge keys: explicit keys of the mapping win."""
        sources = node.value if node.kind == "seq" else [node]
        merged: dict = {}
        for src in reversed(sources):
            value = self.build(src, path)
            if isinstance(value, dict):
                merged.update(value)
            else:
                self.problems.append(Problem("`<<` must merge a mapping", path, self._loc(src)))
        return merged


def load_document(path: str | os.PathLike) -> Document:
    """Load one file (no `extends` processing)."""
    return parse(read_text(path), str(path))


def load_with_extends(path: str | os.PathLike, _chain: tuple[str, ...] = ()) -> Document:
    """Load a spec and merge the files it `extends` (mappings merge key by key; lists and scalars
    replace). The chain is followed depth first; a cycle or a missing base is a located error."""
    doc = load_document(path)
    real = os.path.realpath(path)
    chain = _chain + (real,)
    bases = doc.data.pop("extends", None)
    if bases is None:
        return doc
    base_path_key = ("extends",)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) for b in bases):
        raise SpecError([Problem("`extends` must be a file name or a list of file names"
                                 + (" (this list is empty)" if bases == [] else ""),
                                 base_path_key, doc.loc(base_path_key), "e.g. `extends: base.yaml`")])
    merged = Document({}, {}, {}, [])
    for i, base in enumerate(bases):
        where = doc.loc(base_path_key + (i,)) if (base_path_key + (i,)) in doc.locs else doc.loc(base_path_key)
        base_file = os.path.normpath(os.path.join(os.path.dirname(str(path)), base))
        if os.path.realpath(base_file) in chain:
            cycle = " -> ".join(os.path.basename(c) for c in chain + (os.path.realpath(base_file),))
            raise SpecError([Problem(f"`extends` cycle: {cycle}", base_path_key, where,
                                     "a spec cannot extend itself, directly or through others")])
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise SpecError([Problem(f"`extends` chain deeper than {MAX_EXTENDS_DEPTH}",
                                     base_path_key, where)])
        fault = file_fault(FsPath(base_file))
        if fault:
            what, hint = fault
            raise SpecError([Problem(f"`extends` names '{base}', which {what} ({base_file})", base_path_key,
                                     where, hint + ("; paths are relative to the extending file"
                                                    if what == "does not exist" else ""))])
        try:
            base_doc = load_with_extends(base_file, chain)
        except FileProblem as e:  # unreadable: the spec that names it is where to fix it
            raise SpecError([Problem(f"`extends` names '{base}': {e.problems[0].message}", base_path_key,
                                     where, e.problems[0].hint)]) from None
        merged = _merge(merged, base_doc)
    return _merge(merged, doc)


def _merge(base: Document, child: Document) -> Document:
    data, replaced = _merge_data(base.data, child.data, ())
    keep = lambda p: not any(p[: len(r)] == r for r in replaced)  # noqa: E731
    locs = {p: l for p, l in base.locs.items() if keep(p)}
    locs.update(child.locs)
    key_locs = {p: l for p, l in base.key_locs.items() if keep(p)}
    key_locs.update(child.key_locs)
    return Document(data, locs, key_locs, base.files + child.files)


def _merge_data(base, child, path: Path):
    """Deep-merge child over base; returns the data and the paths whose base subtree was replaced."""
    if isinstance(base, dict) and isinstance(child, dict):
        out, replaced = dict(base), []
        for key, value in child.items():
            if key in base:
                out[key], sub = _merge_data(base[key], value, path + (key,))
                replaced += sub
            else:
                out[key] = value
        return out, replaced
    return child, [path]
