"""Values that reference other values, with safe integer arithmetic: `d_ff: ${d_model} * 4`.

A string containing `${path}` is an expression. `path` is dotted from the spec root
(`${model.d_model}`, `${components.A.n_heads}`, `${vars.width}`); a bare name is looked up in
`vars`, then in `model` (`${d_model}`). After substitution:
  * a string that is exactly one reference takes the referenced value, whatever its type;
  * a string that parses as arithmetic is evaluated: + - * / // % **, unary minus, parentheses,
    min() and max(); `/` gives an exact integer when it divides and a float otherwise;
  * anything else is text with the references' values interpolated (`"(A F) x ${n_layers}"`).
The evaluator walks a restricted Python AST; it never calls `eval`. References see the values
written in the spec (after `extends`), not defaults filled in later.
"""
from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from typing import Any

from .errors import Path, Problem, did_you_mean, format_path
from .loader import Document

REF = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\s*\}")
MAX_EXPR_CHARS = 500
MAX_ABS_VALUE = 1 << 62  # beyond any real model size; stops 10**10**10
MAX_REFERENCE_DEPTH = 64  # a reference to a reference to ...: a spec needs 2 or 3
SHORTHAND_SCOPES = ("vars", "model")

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_FUNCS = {"min": min, "max": max}


class ExprError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def evaluate_arithmetic(text: str) -> int | float:
    """Evaluate an arithmetic string of numbers; raises ExprError when it is not one."""
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"expression longer than {MAX_EXPR_CHARS} characters")
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" (`3and`) is ours to report
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ExprError(f"'{text}' is not an arithmetic expression") from None
    try:
        return _eval_node(tree.body, text)
    except (ZeroDivisionError, OverflowError):
        raise ExprError(f"value of '{text}' is out of range or undefined") from None
    except RecursionError:
        raise ExprError(f"'{text}' is nested too deeply") from None


def _finite(value, text: str) -> int | float:
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        raise ExprError(f"value of '{text}' is not a finite real number")
    if abs(value) > MAX_ABS_VALUE:
        raise ExprError(f"value of '{text}' is out of range")
    return value


def number_fault(value) -> str | None:
    """Why a value is not an acceptable number (NaN, an infinity, beyond MAX_ABS_VALUE), or None.
    JSON Schema's type check accepts NaN and infinities as numbers, so this one rule covers
    every number of a spec, hyperparameter or not; expressions obey the same cap (_finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if abs(value) > MAX_ABS_VALUE:
        return (f"is out of range: a number in a spec is at most 2**62 = {MAX_ABS_VALUE:,} in size, "
                f"got {value:.3g}")
    return None


def _eval_node(node: ast.AST, text: str) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _finite(node.value, text)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand, text)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _eval_node(node.left, text), _eval_node(node.right, text)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > MAX_ABS_VALUE):
            raise ExprError(f"power too large in '{text}'")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ExprError(f"division by zero in '{text}'")
        if isinstance(node.op, ast.Div):
            result = left / right
            if isinstance(left, int) and isinstance(right, int) and left % right == 0:
                result = left // right
        elif type(node.op) in _BINOPS:
            result = _BINOPS[type(node.op)](left, right)
        else:
            raise ExprError(f"operator not allowed in '{text}'", "use + - * / // % ** min() max()")
        return _finite(result, text)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
            and node.args and not node.keywords):
        return _FUNCS[node.func.id](*(_eval_node(a, text) for a in node.args))
    raise ExprError(f"'{text}' is not an arithmetic expression",
                    "expressions may use numbers, ${references}, + - * / // % **, min() and max()")


class _Broken(ExprError):
    """A value that cannot be evaluated because of an error already reported (at its own path,
    or at a value it references): reported once, at the cause, not again at every dependent."""


class _Resolver:
    def __init__(self, doc: Document):
        self.doc = doc
        self.data = doc.data
        self.done: dict[Path, Any] = {}
        self.active: list[Path] = []
        self.failed: set[Path] = set()
        self.reports: dict[Path, ExprError] = {}  # each error once, at the path that causes it
        self._names: list[str] | None = None

    def value_at(self, path: Path, from_path: Path):
        """Look up a reference target (evaluating it first if it is an expression)."""
        node: Any = self.data
        for i, part in enumerate(path):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                choices = node if isinstance(node, dict) else []  # the dict itself: did_you_mean indexes it once
                raise ExprError(
                    f"reference '${{{'.'.join(path)}}}' is undefined: "
                    f"'{format_path(path[: i + 1])}' does not exist",
                    did_you_mean(part, choices) or "references are dotted paths from the spec root, "
                    "e.g. ${model.d_model}, or a bare name from `vars` or `model`")
        value = self.resolve(node, tuple(int(p) if p.isdigit() else p for p in path))
        if number_fault(value):  # reported where it is written (validate.number_problems), once
            raise _Broken(f"{format_path(path)} is not an acceptable number")
        return value

    def shorthand_names(self) -> list[str]:
        """The names a bare `${name}` may mean (vars, then model), listed once per resolver."""
        if self._names is None:
            self._names = [n for s in SHORTHAND_SCOPES if isinstance(self.data.get(s), dict) for n in self.data[s]]
        return self._names

    def lookup(self, ref: str, from_path: Path):
        parts = tuple(ref.split("."))
        if len(parts) == 1:
            for scope in SHORTHAND_SCOPES:
                if isinstance(self.data.get(scope), dict) and parts[0] in self.data[scope]:
                    return self.value_at((scope,) + parts, from_path)
            names = self.shorthand_names()
            raise ExprError(
                f"reference '${{{ref}}}' is undefined: no '{ref}' in `vars` or `model`",
                did_you_mean(ref, names) or "define it under `vars:` or use a dotted path")
        return self.value_at(parts, from_path)

    def resolve(self, value, path: Path):
        if isinstance(value, dict):
            return {k: self.resolve(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, path + (i,)) for i, v in enumerate(value)]
        if not (isinstance(value, str) and "${" in value):
            return value
        if path in self.done:
            return self.done[path]
        if path in self.failed:
            raise _Broken(f"{format_path(path)} has an error")
        if path in self.active:
            cycle = self.active[self.active.index(path):] + [path]
            self.reports.setdefault(path, ExprError(
                "references form a cycle: " + " -> ".join(format_path(p) for p in cycle),
                "break the cycle by writing one of the values as a number"))
            self.failed.update(cycle)
            raise _Broken(f"{format_path(path)} is in a cycle")
        if len(self.active) >= MAX_REFERENCE_DEPTH:  # resolution recurses: bound it, as nesting is
            chain = [format_path(p) for p in (*self.active[:2], self.active[-1], path)]
            raise ExprError(f"references nested more than {MAX_REFERENCE_DEPTH} deep: {chain[0]} -> "
                            f"{chain[1]} -> ... -> {chain[2]} -> {chain[3]}",
                            "a spec's references go a few levels deep; write a value along the chain "
                            "as a number")
        self.active.append(path)
        try:
            result = self._expression(value, path)
        except ExprError as err:
            if not isinstance(err, _Broken):
                self.reports.setdefault(path, err)
            self.failed.add(path)
            raise _Broken(f"{format_path(path)} has an error") from None
        finally:
            self.active.pop()
        self.done[path] = result
        return result

    def _expression(self, text: str, path: Path):
        refs = list(REF.finditer(text))
        if not refs or REF.sub("", text).count("${"):
            raise ExprError(f"malformed reference in '{text}'", "write references as ${name} or ${a.b}")
        values = [self.lookup(m.group(1), path) for m in refs]
        if len(refs) == 1 and refs[0].group(0) == text.strip():
            return values[0]
        pieces, last = [], 0
        for m, v in zip(refs, values):
            pieces += [text[last : m.start()], _as_text(v, m.group(0))]
            last = m.end()
        substituted = "".join(pieces) + text[last:]
        try:
            return evaluate_arithmetic(substituted)
        except ExprError as err:
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and \
                    re.fullmatch(r"[\s\d.+\-*/%()eE,minax]*", substituted):
                raise  # it was meant as arithmetic: report why it failed
            return substituted


def _as_text(value, ref: str) -> str:
    if isinstance(value, (dict, list)):
        raise ExprError(f"{ref} is a {'mapping' if isinstance(value, dict) else 'list'}, "
                        "which cannot be used inside an expression")
    return str(value)


def resolve_references(doc: Document) -> tuple[dict, list[Problem], set[Path]]:
    """Evaluate every expression in the document. Returns the new data, the problems found, and
    the paths left as None because an expression failed (there, or in a value it references), so
    that later checks do not report them again."""
    resolver = _Resolver(doc)

    def walk(value, path: Path):
        if isinstance(value, dict):
            return {k: walk(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, path + (i,)) for i, v in enumerate(value)]
        try:
            return resolver.resolve(value, path)
        except ExprError:
            return None

    data = walk(doc.data, ())
    problems = [Problem(str(err), path, doc.loc(path), err.hint) for path, err in resolver.reports.items()]
    return data, problems, set(resolver.failed)
