"""Stage 1: load a YAML spec safely, keeping the file:line:column of every key and value, and
merge its `extends` chain.

Safety: only plain YAML types are built (no tag constructs an object), duplicate keys are an
error, alias expansion and file size are bounded, and an unreadable, empty, binary or
non-mapping file is a clean error naming the file.
"""
from __future__ import annotations

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

_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


class _TooDeep(yaml.MarkedYAMLError):
    pass


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader whose float resolver also accepts `1e-5` (YAML 1.2), which YAML 1.1 reads as a
    string: `eps: 1e-5` must be a number. Nesting is bounded (PyYAML's composer recurses), and an
    unquoted date stays a string (no timestamp objects)."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(None, None, f"values nested more than {MAX_DEPTH} levels deep",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_SpecLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


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


def _mark(file: str, node: yaml.Node) -> Loc:
    return Loc(file, node.start_mark.line + 1, node.start_mark.column + 1)


def read_text(path: str | os.PathLike) -> str:
    """Read a spec file, refusing what is not a small UTF-8 text file."""
    name = str(path)
    p = FsPath(path)
    if not p.exists():
        raise FileProblem([Problem(f"spec file '{name}' does not exist", loc=Loc(name, 1, 1),
                                   hint="check the path")])
    if p.is_dir():
        raise FileProblem([Problem(f"'{name}' is a directory, not a spec file", loc=Loc(name, 1, 1),
                                   hint="pass a .yaml file")])
    if not p.is_file():
        raise FileProblem([Problem(f"'{name}' is not a regular file", loc=Loc(name, 1, 1),
                                   hint="pass a .yaml file")])
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


def parse(text: str, name: str = "<string>") -> Document:
    """Parse YAML text into a Document; raises SpecError with every problem found."""
    try:
        root = yaml.compose(text, Loader=_SpecLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = Loc(name, mark.line + 1, mark.column + 1) if mark else Loc(name, 1, 1)
        what = " ".join(x for x in (e.context, e.problem) if x)
        if isinstance(e, _TooDeep):
            raise SpecError([Problem(what, loc=loc, hint="a spec nests a few levels; is this the right file?")]) from None
        raise SpecError([Problem(f"YAML syntax error: {what}", loc=loc,
                                 hint="check indentation, colons and quoting on this line")]) from None
    except yaml.YAMLError as e:
        raise SpecError([Problem(f"YAML error: {e}", loc=Loc(name, 1, 1))]) from None
    if root is None:
        raise SpecError([Problem("spec file is empty", loc=Loc(name, 1, 1))])
    builder = _Builder(name)
    builder.check_size(root)
    data = builder.build(root, ())
    if builder.problems:
        raise SpecError(builder.problems)
    if not isinstance(data, dict):
        raise SpecError([Problem(f"a spec must be a mapping of keys to values, not a {_kind(data)}",
                                 loc=_mark(name, root), hint="start the file with `model:`")])
    return Document(data, builder.locs, builder.key_locs, [name])


def _kind(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__)


class _Builder:
    """Turns a composed YAML node tree into plain data, recording locations; refuses tags that
    would construct objects, duplicate keys and runaway alias expansion."""

    def __init__(self, name: str):
        self.name = name
        self.locs: dict[Path, Loc] = {}
        self.key_locs: dict[Path, Loc] = {}
        self.problems: list[Problem] = []
        self.constructor = yaml.SafeLoader(" ")

    def check_size(self, root: yaml.Node) -> None:
        """Refuse, before building anything, a tree whose aliases expand past MAX_NODES values
        ("billion laughs") or refer to themselves (`a: &a [*a]`)."""
        sizes: dict[int, int] = {}

        def size(node: yaml.Node, active: set) -> int:
            if id(node) in sizes:
                return sizes[id(node)]
            if id(node) in active:
                raise SpecError([Problem("an alias refers to the value that contains it (a cycle)",
                                         loc=_mark(self.name, node),
                                         hint="anchors may only be reused after their value ends")])
            active.add(id(node))
            total = 1
            if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
                for item in node.value:
                    for sub in (item if isinstance(node, yaml.MappingNode) else (item,)):
                        total += size(sub, active)
                        if total > MAX_NODES:
                            raise SpecError([Problem(
                                f"spec expands to more than {MAX_NODES:,} values (aliases nested too deep?)",
                                loc=_mark(self.name, node),
                                hint="a spec this large is an error; reduce alias use")])
            active.discard(id(node))
            sizes[id(node)] = total
            return total

        size(root, set())

    def build(self, node: yaml.Node, path: Path):
        # check_size has bounded the expanded tree, so this recursion is bounded too
        self.locs[path] = _mark(self.name, node)
        if node.tag not in _PLAIN_TAGS and not (
            isinstance(node, yaml.MappingNode) and node.tag == "tag:yaml.org,2002:omap"
        ):
            self.problems.append(Problem(
                f"YAML tag '{node.tag}' is not allowed", path, _mark(self.name, node),
                "specs hold plain values only (strings, numbers, booleans, lists, mappings)"))
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        out: dict = {}
        seen: dict = {}
        merged: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged.update(self._merge_source(value_node, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN_TAGS:
                self.problems.append(Problem("mapping keys must be plain strings", path,
                                             _mark(self.name, key_node)))
                continue
            key = str(self.constructor.construct_object(key_node))
            if key in seen:
                self.problems.append(Problem(
                    f"duplicate key '{key}' (first defined at line {seen[key].line})",
                    path + (key,), _mark(self.name, key_node), "remove or rename one of them"))
                continue
            seen[key] = _mark(self.name, key_node)
            self.key_locs[path + (key,)] = seen[key]
            out[key] = self.build(value_node, path + (key,))
        return {**merged, **out} if merged else out

    def _merge_source(self, node: yaml.Node, path: Path) -> dict:
        """`<<: *anchor` merge keys: explicit keys of the mapping win."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict = {}
        for src in reversed(sources):
            value = self.build(src, path)
            if isinstance(value, dict):
                merged.update(value)
            else:
                self.problems.append(Problem("`<<` must merge a mapping", path, _mark(self.name, src)))
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
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise SpecError([Problem("`extends` must be a file name or a list of file names",
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
        if not os.path.isfile(base_file):
            raise SpecError([Problem(f"`extends` names '{base}', which does not exist ({base_file})",
                                     base_path_key, where, "paths are relative to the extending file")])
        merged = _merge(merged, load_with_extends(base_file, chain))
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
