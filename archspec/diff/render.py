"""The diff for people ('table'), for pull-request comments ('markdown') or CI ('json')."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

from ..layout import compact
from ..units import human
from . import names
from .as_json import to_json
from .changes import ComponentChange, FieldChange, MemberChange, SublayerChange
from .checkpoint_map import COMPAT_KINDS, Compatibility
from .compare import SpecDiff
from .text import pct, signed, value

FORMATS = ("table", "markdown", "json")


def render(d: SpecDiff, fmt: str = "table") -> str:
    """The diff for people ('table'), for pull-request comments ('markdown') or CI ('json')."""
    if fmt == "json":
        return json.dumps(to_json(d), indent=2) + "\n"
    if fmt not in ("table", "markdown"):
        raise ValueError(f"unknown format '{fmt}' (table, markdown or json)")
    style = _Style(fmt == "markdown")
    lines = _heading_lines(d, style)
    lines += _change_section(d, style) if d.different else ["no differences", ""]
    if d.different or d.costs.changed:
        lines += _cost_section(d, style)
    if d.different or not d.compatibility.identical:
        lines += _compat_section(d, style)
    if d.warnings:
        lines += [f"note: {w}" for w in d.warnings] + [""]
    if d.budgets:
        lines += [style.heading("Budgets"), ""]
        lines += [f"- {'CROSSED' if x.crossed else 'ok'}: {x.describe()}" for x in d.budgets]
    return "\n".join(lines).rstrip("\n") + "\n"


@dataclass(frozen=True)
class _Style:
    """What differs between the table and markdown forms."""

    markdown: bool

    @property
    def arrow(self) -> str:
        return "→" if self.markdown else "->"

    def code(self, s: str) -> str:
        return f"`{s}`" if self.markdown else s

    def heading(self, s: str) -> str:
        return f"#### {s}" if self.markdown else s

    def table(self, headers: list[str], rows: list[list[str]], text_columns=(0,)) -> str:
        from ..report import _table  # escapes markdown cells itself
        return _table(headers, rows, self.markdown, text_columns)


# --- sections -------------------------------------------------------------------------------------
def _heading_lines(d: SpecDiff, style: _Style) -> list[str]:
    a, b, code, arrow = d.a, d.b, style.code, style.arrow
    title = (f"### archspec diff: `{a.name}` → `{b.name}`" if style.markdown else
             f"archspec diff: {a.name} ({a.source}) -> {b.name} ({b.source})")
    layout = (f"layout: {code(d.layout_a)}" if d.layout_a == d.layout_b else
              f"layout: {code(d.layout_a)} {arrow} {code(d.layout_b)}")
    na, nb = len(a.sublayers), len(b.sublayers)
    layout += f" ({na} sublayers)" if na == nb else f" ({na} {arrow} {nb} sublayers)"
    lines = [title, "", layout]
    if d.ignore:
        lines.append(f"ignoring: {', '.join(code(p) for p in d.ignore)}")
    return lines + [""]


def _change_section(d: SpecDiff, style: _Style) -> list[str]:
    rows = _change_rows(d, style.arrow)
    if style.markdown:  # names in code spans; '*' (a Megatron symbol) must not start emphasis
        rows = [[mark, style.code(where), what.replace("*", "\\*")] for mark, where, what in rows]
    lines = [style.heading("Changes"), "", style.table(["", "where", "what"], rows, text_columns=(0, 1, 2)), ""]
    shift = _index_shift(d, style.arrow)
    if shift:
        lines += [f"shifted sublayers (A {style.arrow} B, unchanged): {shift}", ""]
    return lines


def _cost_section(d: SpecDiff, style: _Style) -> list[str]:
    lines = [style.heading(f"Costs (B - A; forward FLOPs counting {d.convention.causal_attention} "
                           "attention pairs)"), "",
             style.table(["", "A", "B", "delta", "%"], _cost_rows(d)), ""]
    headers, rows = _type_rows(d, style.arrow)
    if rows:
        lines += [style.heading("By component type (changed only)"), "",
                  style.table(headers, rows, text_columns=(0, 1)), ""]
    return lines


def _compat_section(d: SpecDiff, style: _Style) -> list[str]:
    head, rows = _compat_lines(d, style.arrow, limit=3, code=style.code)
    lines = [style.heading("Checkpoint compatibility"), "", head, "",
             style.table(["kind", "tensors", "params", "e.g."], rows, text_columns=(0, 3)), ""]
    if style.markdown:
        lines += _markdown_tensor_lists(d.compatibility, style.code)
    return lines


# --- changes --------------------------------------------------------------------------------------
def _field_text(fields: list[FieldChange], arrow: str) -> str:
    return ", ".join(f"{f.field} {value(f.a)} {arrow} {value(f.b)}" for f in fields)


def _members_text(members: list[tuple[str, str]]) -> str:
    inner = " | ".join(f"{s}:{t}" for s, t in members)
    return f"[{inner}]" if len(members) > 1 else inner


def _member_change_text(m: MemberChange, arrow: str) -> str:
    if m.kind == "added":
        return f"+ {m.symbol_b}:{m.type_b}"
    if m.kind == "removed":
        return f"- {m.symbol_a}:{m.type_a}"
    if m.kind == "type changed":
        return f"{m.symbol_a}:{m.type_a} {arrow} {m.symbol_b}:{m.type_b}"
    name = m.symbol_a if m.symbol_a == m.symbol_b else f"{m.symbol_a} {arrow} {m.symbol_b}"
    return f"{name}: " + (_field_text(m.fields, arrow) if m.fields else "same config")


def _uses(n: int) -> str:
    return f"{n} sublayer{'s' if n != 1 else ''}"


def _uses_ab(x: ComponentChange, arrow: str) -> str:
    return _uses(x.uses_a) if x.uses_a == x.uses_b else f"{x.uses_a} {arrow} {_uses(x.uses_b)}"


def _change_rows(d: SpecDiff, arrow: str) -> list[list[str]]:
    """[mark, where, what] for the model, component and sublayer changes."""
    rows = [["~", f.field, f"{value(f.a)} {arrow} {value(f.b)}"] for f in d.model]
    rows += [_component_row(x, arrow) for x in d.components]
    for s in _runs(d.sublayers):
        rows.append(_run_row(s, arrow) if isinstance(s, list) else _sublayer_row(s, arrow))
    return rows


def _component_row(x: ComponentChange, arrow: str) -> list[str]:
    if x.change == "added":
        return ["+", f"components.{x.symbol_b}", f"{x.type_b}, added ({_uses(x.uses_b)})"]
    if x.change == "removed":
        return ["-", f"components.{x.symbol_a}", f"{x.type_a}, removed ({_uses(x.uses_a)})"]
    if x.change == "renamed":
        return ["=", f"components.{x.symbol_a} {arrow} {x.symbol_b}",
                f"{x.type_a}, renamed, same config ({_uses(x.uses_b)})"]
    what = (f"{x.type_a}: {_field_text(x.fields, arrow)} ({_uses_ab(x, arrow)})"
            if x.type_a == x.type_b else f"type {x.type_a} {arrow} {x.type_b} ({_uses_ab(x, arrow)})")
    return ["~", f"components.{x.symbol_a}", what]


def _run_row(run: list[SublayerChange], arrow: str) -> list[str]:
    """One row for a run of consecutive added (or removed) sublayers."""
    added = run[0].change == "added"
    idx = [x.b_index if added else x.a_index for x in run]
    span = f"{idx[0]}-{idx[-1]}"
    where = f"sublayers - {arrow} {span}" if added else f"sublayers {span} {arrow} -"
    pattern = compact([tuple(m for m, _ in (x.b_members if added else x.a_members)) for x in run])
    return ["+" if added else "-", where,
            f"{pattern} {'added' if added else 'removed'} ({len(run)} sublayers)"]


def _sublayer_row(s: SublayerChange, arrow: str) -> list[str]:
    ia = "-" if s.a_index is None else str(s.a_index)
    ib = "-" if s.b_index is None else str(s.b_index)
    where = f"sublayer {ia} {arrow} {ib}"
    if s.change == "added":
        return ["+", where, f"{_members_text(s.b_members)} added"]
    if s.change == "removed":
        return ["-", where, f"{_members_text(s.a_members)} removed"]
    text = "; ".join(_member_change_text(m, arrow) for m in s.members)
    if s.gates:
        text += ("; " if text else "") + f"gates {s.gates[0]} {arrow} {s.gates[1]}"
    return ["~", where, text + _overrides_text(s)]


def _overrides_text(s: SublayerChange) -> str:
    """' (override: F: d_ff=96)', or one per side when A's and B's overrides differ."""
    sides = [("", s.overrides_a)] if s.overrides_a == s.overrides_b else \
        [(" in A", s.overrides_a), (" in B", s.overrides_b)]
    text = ""
    for side, ov in sides:
        if ov:
            text += f" (override{side}: " + "; ".join(
                f"{sym}: " + ", ".join(f"{k}={value(v)}" for k, v in kv.items())
                for sym, kv in ov.items()) + ")"
    return text


def _runs(changes: list[SublayerChange]) -> list:
    """Changes with each run of 3+ consecutive added (or removed) sublayers as one list."""
    out: list = []
    k = 0
    while k < len(changes):
        end = _run_end(changes, k)
        if end - k >= 3:
            out.append(changes[k:end])
        else:
            out += changes[k:end]
        k = end
    return out


def _run_end(changes: list[SublayerChange], k: int) -> int:
    """The end of the run of consecutive additions (or removals) starting at k; k + 1 else."""
    c, end = changes[k], k + 1
    if c.change not in ("added", "removed"):
        return end
    index = (lambda x: x.b_index) if c.change == "added" else (lambda x: x.a_index)
    while (end < len(changes) and changes[end].change == c.change
           and index(changes[end]) == index(changes[end - 1]) + 1):
        end += 1
    return end


def _index_shift(d: SpecDiff, arrow: str) -> str | None:
    """Shifted sublayers as runs: '2-5 -> 3-6'."""
    runs, start = [], None
    for k, (i, j) in enumerate(d.shifted):
        if start is None:
            start = (i, j)
        nxt = d.shifted[k + 1] if k + 1 < len(d.shifted) else None
        if nxt is None or nxt != (i + 1, j + 1) or nxt[1] - nxt[0] != j - i:
            a = f"{start[0]}" if start[0] == i else f"{start[0]}-{i}"
            b = f"{start[1]}" if start[1] == j else f"{start[1]}-{j}"
            runs.append(f"{a} {arrow} {b}")
            start = None
    return ", ".join(runs) if runs else None


# --- costs ----------------------------------------------------------------------------------------
def _cost_rows(d: SpecDiff) -> list[list[str]]:
    c = d.costs
    rows = [["parameters", f"{c.params.a:,}", f"{c.params.b:,}", signed(c.params.delta), pct(c.params)],
            ["active parameters", f"{c.active_params.a:,}", f"{c.active_params.b:,}",
             signed(c.active_params.delta), pct(c.active_params)]]
    for t in c.seq_lens:
        f = c.flops_per_token[t]
        rows.append([f"fwd FLOPs/token @{t}", human(f.a), human(f.b), signed(f.delta, exact=False), pct(f)])
    for t in c.seq_lens:
        s = c.state_bytes[t]
        rows.append([f"inference state @{t}", human(s.a, "B"), human(s.b, "B"),
                     signed(s.delta, "B", exact=False), pct(s)])
    return rows


def _type_rows(d: SpecDiff, arrow: str) -> tuple[list[str], list[list[str]]]:
    lens = d.costs.seq_lens
    headers = ["type", "count", "params", "%"] + [f"fwd FLOPs/token @{t}" for t in lens] + \
              [f"state @{t}" for t in lens]
    rows = []
    for r in d.costs.by_type:
        if not r.changed:
            continue
        count = str(r.count.a) if r.count.delta == 0 else f"{r.count.a} {arrow} {r.count.b}"
        rows.append([r.type, count, signed(r.params.delta), pct(r.params)]
                    + [f"{signed(r.flops_per_token[t].delta, exact=False)} ({pct(r.flops_per_token[t])})"
                       for t in lens]
                    + [f"{signed(r.state_bytes[t].delta, 'B', exact=False)} ({pct(r.state_bytes[t])})"
                       for t in lens])
    return headers, rows


# --- checkpoint compatibility ---------------------------------------------------------------------
def _renamed_modules(c: Compatibility) -> dict[tuple[str, str], int]:
    """Renamed tensors grouped by the part of the name that changed: a shifted sublayer is one
    'sublayers.2.* -> sublayers.3.*' entry, a renamed symbol 'sublayers.0.members.A.* -> ...attn.*'."""
    out: dict[tuple[str, str], int] = {}
    for a, b, _ in c.renamed:
        key = names.changed_modules(a, b)
        out[key] = out.get(key, 0) + 1
    return out


def _by_owner(tensors: list[str], owners: dict[str, str], code: Callable[[str], str]) -> list[str]:
    """Names grouped by owning module: 'sublayers.2.members.M.* (9)'; single tensors in full."""
    groups: dict[str, list[str]] = {}
    for n in tensors:
        groups.setdefault(owners[n], []).append(n)
    return [code(ns[0]) if len(ns) == 1 else f"{code(names.everything_under(owner))} ({len(ns)})"
            for owner, ns in groups.items()]


def _compat_lines(d: SpecDiff, arrow: str, limit: int, code=lambda s: s) -> tuple[str, list[list[str]]]:
    c = d.compatibility
    share = f" ({c.reusable_params / c.params_b * 100:.1f}%)" if c.params_b else ""
    reshaped_a = sum(math.prod(r[2]) for r in c.reshaped)
    head = (f"a warm start from A can reuse {c.reusable_params:,} of B's {c.params_b:,} parameters"
            f"{share}; of A's {c.params_a:,}, {reshaped_a:,} are in reshaped tensors and "
            f"{c.count('removed')[1]:,} in removed ones")
    examples = _compat_examples(c, arrow, code)
    rows = []
    for kind in COMPAT_KINDS:
        n, p = c.count(kind)
        shown = examples[kind][:limit] if kind != "unchanged" else []  # the rest need no action
        more = len(examples[kind]) - len(shown)
        text = ", ".join(shown) + (f" and {more} more" if shown and more > 0 else "")
        rows.append([kind, str(n), f"{p:,}", text])
    return head, rows


def _compat_examples(c: Compatibility, arrow: str, code) -> dict[str, list[str]]:
    under = names.everything_under
    return {
        "unchanged": [code(n) for n, _ in c.unchanged],
        "renamed": [f"{code(under(pa))} {arrow} {code(under(pb))} ({n})"
                    for (pa, pb), n in _renamed_modules(c).items()],
        "reshaped": [f"{code(a)} {list(sa)} {arrow} {list(sb)}" for a, b, sa, sb in c.reshaped],
        "new": _by_owner([n for n, _ in c.new], c.owners, code),
        "removed": _by_owner([n for n, _ in c.removed], c.owners, code),
    }


def _markdown_tensor_lists(c: Compatibility, code, limit: int = 200) -> list[str]:
    """Every renamed, reshaped, new and removed tensor, in collapsed <details> blocks."""
    out = []
    lists = {"renamed": [f"{code(a)} → {code(b)}" for a, b, _ in c.renamed],
             "reshaped": [f"{code(a)} {list(sa)} → {code(b)} {list(sb)}" for a, b, sa, sb in c.reshaped],
             "new": [f"{code(n)} {list(s)}" for n, s in c.new],
             "removed": [f"{code(n)} {list(s)}" for n, s in c.removed]}
    for kind, items in lists.items():
        if not items:
            continue
        out += [f"<details><summary>{kind} tensors ({len(items)})</summary>", ""]
        out += [f"- {x}" for x in items[:limit]]
        if len(items) > limit:
            out.append(f"- ... and {len(items) - limit} more (see `--format json`)")
        out += ["", "</details>", ""]
    return out
