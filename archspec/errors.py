"""Located spec errors: every problem carries file:line:column, the path in the spec, what is
wrong and how to fix it. Validation collects them all and raises once."""
from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

Path = tuple  # keys (str) and list indices (int) from the spec root


@dataclass(frozen=True)
class Loc:
    """A position in a source file; line and column are 1-based as editors show them."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Problem:
    """One thing wrong with a spec."""

    message: str
    path: Path = ()
    loc: Loc | None = None
    hint: str | None = None

    def format(self) -> str:
        where = str(self.loc) if self.loc else "<spec>"
        at = f" at {format_path(self.path)}" if self.path else ""
        text = f"{where}: error{at}: {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def to_dict(self) -> dict:
        return {
            "file": self.loc.file if self.loc else None,
            "line": self.loc.line if self.loc else None,
            "column": self.loc.col if self.loc else None,
            "path": format_path(self.path),
            "message": self.message,
            "hint": self.hint,
        }


class SpecError(Exception):
    """Raised with every problem found in a spec (never just the first)."""

    def __init__(self, problems: Sequence[Problem]):
        # in reading order: by file (first seen first), then line and column; unlocated last
        files: dict = {}
        for p in problems:
            if p.loc:
                files.setdefault(p.loc.file, len(files))
        self.problems = sorted(problems, key=lambda p: (files[p.loc.file], p.loc.line, p.loc.col)
                               if p.loc else (len(files), 0, 0))
        super().__init__(self.format())

    def format(self) -> str:
        n = len(self.problems)
        lines = [p.format() for p in self.problems]
        lines.append(f"{n} error{'s' if n != 1 else ''} found")
        return "\n".join(lines)


class FileProblem(SpecError):
    """The file itself could not be read (missing, a directory, no permission): a usage error."""


class CheckpointError(ValueError):
    """A saved-model directory that cannot be written or read back (missing, damaged, from a
    newer archspec): the message names the directory or file, the entry (a tensor, a key of
    archspec.json, with its line and column) and how to fix it."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        self.problems = list(problems)
        super().__init__("\n".join([message, *(p.format() for p in self.problems)]))


class BuildRefused(Exception):
    """Building was refused (e.g. it would exhaust memory); the message says why and how to force it."""


class KernelFallbackWarning(UserWarning):
    """Under backend `auto`, a component's Triton kernel does not compile (or does not fit) on the
    device, so the build gave that component its reference backend: slower, never wrong. The
    message names the component, the kernel, its launch configuration and the compiler's reason."""


def format_path(path: Iterable) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


MANY_CHOICES = 256  # past this, suggestions come from an index of the choices (_nearby)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelled word, or None when nothing is close. Among many
    choices (thousands of components or vars, each misspelled once) only those of about the
    word's length and first letter are compared: a spec's errors cost linear time, not
    errors x choices."""
    if isinstance(choices, (set, frozenset, list, tuple, dict)) and len(choices) > MANY_CHOICES:
        choices = _nearby(str(word), choices)
    choices = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if str(word).lower() in lowered:
            close = [lowered[str(word).lower()]]
    return f"did you mean '{close[0]}'?" if close else None


_INDEXES: "OrderedDict[int, tuple[object, dict]]" = OrderedDict()


def _nearby(word: str, choices) -> list[str]:
    """The choices of length len(word) +- 2 starting with its first letter (either case), from an
    index built once per collection (callers pass the same set or dict for all their errors)."""
    entry = _INDEXES.get(id(choices))
    if entry is None or entry[0] is not choices:
        index: dict[tuple[str, int], list[str]] = {}
        for c in choices:
            if isinstance(c, str):
                index.setdefault((c[:1].lower(), len(c)), []).append(c)
        entry = _INDEXES[id(choices)] = (choices, index)  # the collection is held: its id stays its own
        if len(_INDEXES) > 8:
            _INDEXES.popitem(last=False)
    index = entry[1]
    first = word[:1].lower()
    return [c for n in range(len(word) - 2, len(word) + 3) for c in index.get((first, n), ())]


def one_of(choices: Iterable[str]) -> str:
    return ", ".join(f"'{c}'" for c in sorted(choices))
