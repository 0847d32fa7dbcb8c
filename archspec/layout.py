"""The layout: from any of its written forms to one canonical list of sublayers, each a tuple
of component symbols (one symbol, or several run in parallel).

Pattern strings:
    (M M S E) x 6       a group repeated ('x 6', 'x6' or '× 6')
    [M | S | E]         a parallel group: one sublayer whose members are summed with learned gates
    MMSE, M-M*-         Megatron style: a word made only of one-character symbols is split
Explicit list: ["A", "F", ["M", "S"]]: each item a pattern or a list of parallel symbols.
Rules (Jamba): {layers: 32, sublayers: [{use: M, where: [{period: 8, offset: 4, use: A}]}, ...]}:
each layer has the sublayers in order; at layer i the last rule with i % period == offset wins.
"""
from __future__ import annotations

import heapq
import re
from dataclasses import dataclass

from . import limits as L
from .errors import Path, Problem, did_you_mean

Sublayer = tuple  # of symbols; length > 1 is a parallel group
MAX_SUBLAYERS = L.SUBLAYERS.value  # a typo like `x 1000000` stops here instead of eating memory
MAX_GROUP_DEPTH = 32  # `((A F) x 2 M) x 4` is 2 deep; the parser recurses per level
_TOKEN = re.compile(r"\s*(?:(?P<open>[(\[])|(?P<close>[)\]])|(?P<bar>\|)|(?P<rep>[x×]\s*\d+(?:\.\d*)?\b)|(?P<word>[^\s()\[\]|]+))")


class LayoutError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def parse_pattern(text: str, symbols: set[str]) -> list[Sublayer]:
    """Expand a pattern string into sublayers; raises LayoutError naming the position."""
    tokens = _tokenize(text, symbols)
    out, pos = _parse_seq(tokens, 0, text, symbols, closer=None)
    if pos != len(tokens):
        raise LayoutError(f"unexpected '{tokens[pos][1]}' at position {tokens[pos][2] + 1} of the pattern "
                          f"'{text}'", "check the brackets")
    return out


def _tokenize(text: str, symbols: set[str]) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            break
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return tokens


def _parse_seq(tokens, pos, text, symbols, closer, depth: int = 0):
    """Sublayers of tokens[pos:] up to `closer`; groups recurse, `depth` levels deep so far."""
    if depth > MAX_GROUP_DEPTH:
        raise LayoutError(f"groups nested more than {MAX_GROUP_DEPTH} deep at position {tokens[pos - 1][2] + 1} "
                          f"of the pattern", "a layout nests groups a level or two; check the brackets")
    out: list[Sublayer] = []
    while pos < len(tokens):
        kind, value, col = tokens[pos]
        if kind == "close" or kind == "bar":
            if closer is None:
                raise LayoutError(f"unmatched '{value}' at position {col + 1} of the pattern '{text}'",
                                  "check the brackets")
            return out, pos
        if kind == "rep":
            raise LayoutError(f"repetition '{value}' at position {col + 1} follows nothing",
                              "write the repeated part first, e.g. '(A F) x 4'")
        if kind == "open" and value == "(":
            items, pos = _parse_seq(tokens, pos + 1, text, symbols, closer=")", depth=depth + 1)
            if pos >= len(tokens) or tokens[pos][1] != ")":
                raise LayoutError(f"'(' at position {col + 1} of the pattern '{text}' is never closed",
                                  "add the missing ')'")
            pos += 1
        elif kind == "open":
            items, pos = [_parse_parallel(tokens, pos + 1, text, symbols, col)], None
            pos = items[0][1]
            items = [items[0][0]]
        else:
            items = [(s,) for s in _symbols_of_word(value, col, text, symbols)]
            pos += 1
        if pos < len(tokens) and tokens[pos][0] == "rep":
            count = _repetition_count(tokens[pos], text)
            if len(out) + len(items) * count > MAX_SUBLAYERS:
                raise LayoutError(f"pattern expands to more than {MAX_SUBLAYERS:,} sublayers",
                                  "check the repetition counts")
            items = items * count
            pos += 1
        out += items
        if len(out) > MAX_SUBLAYERS:  # also without repetition: a long pattern or Megatron word
            raise LayoutError(f"pattern expands to more than {MAX_SUBLAYERS:,} sublayers",
                              "check the pattern's length and repetition counts")
    if closer is not None:
        raise LayoutError(f"missing '{closer}' in the pattern '{text}'", f"add the closing '{closer}'")
    return out, pos


def _repetition_count(token: tuple[str, str, int], text: str) -> int:
    """The N of 'x N'; a fraction ('x 2.5', from a float in an expression) is an error."""
    _, value, col = token
    digits = re.sub(r"^[x×]\s*", "", value)
    if not digits.isdigit():
        raise LayoutError(f"repetition count '{digits}' at position {col + 1} of the pattern '{text}' "
                          "is not a whole number", "repeat a whole number of times, e.g. 'x 2'; in an "
                          "expression `//` divides to an integer")
    return int(digits)


def _parse_parallel(tokens, pos, text, symbols, open_col):
    """`[A | B | C]`: each branch one symbol; returns (sublayer, position after ']')."""
    members: list[str] = []
    while True:
        if pos >= len(tokens):
            raise LayoutError(f"'[' at position {open_col + 1} of the pattern '{text}' is never closed",
                              "add the missing ']'")
        kind, value, col = tokens[pos]
        if kind != "word":
            raise LayoutError(f"expected a symbol at position {col + 1} of the parallel group in '{text}'",
                              "a parallel group lists single symbols: '[M | S | E]'")
        branch = _symbols_of_word(value, col, text, symbols)
        if len(branch) != 1:
            raise LayoutError(f"parallel branch '{value}' holds {len(branch)} symbols, not one",
                              "separate parallel members with '|': '[M | S]'")
        members += branch
        pos += 1
        if pos < len(tokens) and tokens[pos][1] == "|":
            pos += 1
            continue
        if pos < len(tokens) and tokens[pos][1] == "]":
            break
        if pos >= len(tokens):
            continue  # reported as never closed
        raise LayoutError(f"expected '|' or ']' after '{value}' in the parallel group of '{text}'",
                          "write parallel groups as '[M | S | E]'")
    duplicates = {m for m in members if members.count(m) > 1}
    if duplicates:
        raise LayoutError(f"parallel group lists '{sorted(duplicates)[0]}' twice",
                          "each member of a parallel group must be a different component")
    return tuple(members), pos + 1


def _symbols_of_word(word: str, col: int, text: str, symbols: set[str]) -> list[str]:
    if word in symbols:
        return [word]
    if len(word) > 1 and all(ch in symbols for ch in word):
        return list(word)  # Megatron-style run of one-character symbols
    hint = did_you_mean(word, symbols)
    singles = _singles(symbols)
    if hint is None and len(word) > 1 and sum(ch in singles for ch in word) >= len(word) / 2:
        # a Megatron-style word with a stray character: name the character
        k = next(k for k, ch in enumerate(word) if ch not in singles)
        raise LayoutError(f"undefined layout symbol '{word[k]}' in '{word}' at position {col + k + 1} of "
                          f"the pattern '{text}'", did_you_mean(word[k], singles)
                          or f"one-character symbols defined: {', '.join(sorted(singles))}")
    hint = hint or (f"defined components: {_some(symbols)}" if symbols else "define components under `components:`")
    raise LayoutError(f"undefined layout symbol '{word}' at position {col + 1} of the pattern '{text}'",
                      hint)


_SINGLES: list = [None, frozenset()]  # (symbols, its one-character ones): the last set asked about


def _singles(symbols: set[str]) -> frozenset[str]:
    """The one-character symbols, found once per set of symbols (every undefined word of a
    layout asks, and a spec may define thousands of components)."""
    if _SINGLES[0] is not symbols:
        _SINGLES[:] = [symbols, frozenset(s for s in symbols if len(s) == 1)]
    return _SINGLES[1]


_SOME: list = [None, ""]  # (symbols, the text _some made of them)


def _some(names: set[str], shown: int = 20) -> str:
    """The first `shown` names in order, and how many more (a hint, not a listing of
    thousands), made once per set of names."""
    if _SOME[0] is not names:
        first = heapq.nsmallest(shown, names)
        more = len(names) - len(first)
        _SOME[:] = [names, ", ".join(first) + (f" and {more:,} more" if more > 0 else "")]
    return _SOME[1]


@dataclass
class LayoutProblem:
    message: str
    path: Path
    hint: str | None = None


def expand_layout(layout, symbols: set[str]) -> tuple[list[Sublayer], list[LayoutProblem]]:
    """Canonical sublayers of any layout form, and the problems found (relative paths)."""
    problems: list[LayoutProblem] = []
    out: list[Sublayer] = []

    def pattern(text: str, path: Path) -> list[Sublayer]:
        try:
            return parse_pattern(text, symbols)
        except LayoutError as e:
            problems.append(LayoutProblem(str(e), path, e.hint))
            return []

    if isinstance(layout, str):
        out = pattern(layout, ())
    elif isinstance(layout, list):
        for i, item in enumerate(layout):
            if isinstance(item, list):
                out += pattern("[" + " | ".join(map(str, item)) + "]", (i,))
            else:
                out += pattern(str(item), (i,))
            if len(out) > MAX_SUBLAYERS:
                problems.append(LayoutProblem(f"the list expands to more than {MAX_SUBLAYERS:,} sublayers "
                                              f"by item {i}", (i,), "check the list's repetition counts"))
                return [], problems
    elif isinstance(layout, dict):
        out = _expand_rules(layout, pattern, problems)
    if not out and not problems:
        problems.append(LayoutProblem("layout expands to no sublayers", (),
                                      "list at least one component, e.g. '(A F) x 2'"))
    return out, problems


def _expand_rules(layout: dict, pattern, problems) -> list[Sublayer]:
    slots = []
    for j, slot in enumerate(layout["sublayers"]):
        default = _single(pattern(slot["use"], ("sublayers", j, "use")), ("sublayers", j, "use"), problems)
        rules = []
        for r, rule in enumerate(slot.get("where", [])):
            path = ("sublayers", j, "where", r)
            if rule.get("offset", 0) >= rule["period"]:
                problems.append(LayoutProblem(
                    f"offset {rule.get('offset', 0)} is not below period {rule['period']}, so the rule "
                    "never applies", path + ("offset",), f"use an offset from 0 to {rule['period'] - 1}"))
            chosen = _single(pattern(rule["use"], path + ("use",)), path + ("use",), problems)
            rules.append((rule["period"], rule.get("offset", 0), chosen))
        slots.append((default, rules))
    if layout["layers"] * len(slots) > MAX_SUBLAYERS:
        problems.append(LayoutProblem(f"{layout['layers']:,} layers of {len(slots)} sublayers is more than "
                                      f"{MAX_SUBLAYERS:,} sublayers", ("layers",), "check `layers`"))
        return []
    out = []
    for i in range(layout["layers"]):
        for default, rules in slots:
            chosen = default
            for period, offset, use in rules:
                if i % period == offset:
                    chosen = use
            if chosen is not None:
                out.append(chosen)
    return out


def _single(sublayers: list[Sublayer], path: Path, problems) -> Sublayer | None:
    if len(sublayers) == 1:
        return sublayers[0]
    if sublayers:
        problems.append(LayoutProblem(f"expected one symbol or parallel group, got {len(sublayers)} "
                                      "sublayers", path, "a rule chooses one sublayer, e.g. 'A' or '[M | S]'"))
    return None


def compact(sublayers: list[Sublayer]) -> str:
    """Short pattern text for a canonical list: the whole list as a repeated unit where it is
    periodic, else runs of equal sublayers."""
    words = [s[0] if len(s) == 1 else "[" + " | ".join(s) + "]" for s in sublayers]
    n = len(words)
    for period in range(1, n // 2 + 1):
        if n % period == 0 and words == words[:period] * (n // period):
            unit = " ".join(words[:period])
            return f"({unit}) x {n // period}" if period > 1 else f"{unit} x {n}"
    runs, i = [], 0
    while i < n:
        j = i
        while j < n and words[j] == words[i]:
            j += 1
        runs.append(words[i] if j - i == 1 else f"{words[i]} x {j - i}")
        i = j
    return " ".join(runs)
