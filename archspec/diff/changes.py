"""What changed in the structure: model fields, component definitions (by symbol) and matched,
added or removed sublayers, each hyperparameter as old -> new of the resolved configs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec import ComponentInstance, ResolvedSpec, Sublayer
from .definitions import definition, used
from .options import MODEL_FIELDS, Ignore


class _Absent:
    """A key one side's config does not have (null in JSON, '(absent)' in text)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


@dataclass(frozen=True)
class FieldChange:
    """One hyperparameter or model field: its value in A and in B (None where absent)."""

    field: str  # 'model.dtype', 'model.norm.eps', or a component key such as 'n_memories'
    a: Any
    b: Any


@dataclass
class ComponentChange:
    """A component definition (a `components:` symbol used by the layout), compared by symbol."""

    change: str  # 'added' | 'removed' | 'changed' | 'renamed'
    symbol_a: str | None
    symbol_b: str | None
    type_a: str | None
    type_b: str | None
    fields: list[FieldChange]
    uses_a: int  # sublayers using it in A
    uses_b: int


@dataclass
class MemberChange:
    """A member of a changed sublayer; one side is None for a member added to or removed from a
    parallel group."""

    symbol_a: str | None
    symbol_b: str | None
    type_a: str | None
    type_b: str | None
    fields: list[FieldChange]

    @property
    def kind(self) -> str:
        if self.symbol_a is None:
            return "added"
        if self.symbol_b is None:
            return "removed"
        return "type changed" if self.type_a != self.type_b else "changed"


@dataclass
class SublayerChange:
    change: str  # 'added' | 'removed' | 'changed' | 'type changed'
    a_index: int | None
    b_index: int | None
    a_members: list[tuple[str, str]]  # (symbol, type) in A; empty when added
    b_members: list[tuple[str, str]]
    members: list[MemberChange]  # what changed, for 'changed' and 'type changed'
    overrides_a: dict = field(default_factory=dict)  # {symbol: {key: value}} as the spec wrote them
    overrides_b: dict = field(default_factory=dict)
    gates: tuple | None = None  # (A's, B's) gates of a parallel group when they differ (group_gates)


# --- fields ---------------------------------------------------------------------------------------
def config_changes(type_name: str, ca: dict, cb: dict, backend_a: str, backend_b: str,
                   skip: Ignore) -> list[FieldChange]:
    """Every key whose value differs (A's keys first, then B's own), and the backend."""
    out = [FieldChange(k, ca.get(k, ABSENT), cb.get(k, ABSENT))
           for k in [*ca, *(k for k in cb if k not in ca)]
           if ca.get(k, ABSENT) != cb.get(k, ABSENT) and not skip.key(type_name, k)]
    if backend_a != backend_b and not skip.key(type_name, "backend"):
        out.append(FieldChange("backend", backend_a, backend_b))
    return out


def _instance_changes(x: ComponentInstance, y: ComponentInstance, skip: Ignore) -> list[FieldChange]:
    """Config changes of two instances of one type, ignored keys left out."""
    return config_changes(x.type, x.config, y.config, x.backend, y.backend, skip)


def model_changes(a: ResolvedSpec, b: ResolvedSpec, skip: Ignore) -> list[FieldChange]:
    """The model's fields and its norm (type and every key, as `model.norm.KEY`)."""
    out = [FieldChange(f"model.{f}", getattr(a.model, f), getattr(b.model, f)) for f in MODEL_FIELDS
           if getattr(a.model, f) != getattr(b.model, f) and not skip.model(f)]
    na, nb = a.norm, b.norm
    if na.type != nb.type and not skip.model("norm.type"):
        out.append(FieldChange("model.norm.type", na.type, nb.type))
    for fc in _instance_changes(na, nb, Ignore(())):
        if not skip.model(f"norm.{fc.field}"):
            out.append(FieldChange(f"model.norm.{fc.field}", fc.a, fc.b))
    if set(a.freeze) != set(b.freeze):  # what trains (the order of the list means nothing)
        out.append(FieldChange("freeze", list(a.freeze), list(b.freeze)))
    return out


# --- components -----------------------------------------------------------------------------------
def component_changes(a: ResolvedSpec, b: ResolvedSpec, renames: dict[str, str],
                      skip: Ignore) -> list[ComponentChange]:
    """A's used symbols in first-use order (renamed, removed or changed), then B's new ones."""
    used_a, used_b = used(a), used(b)
    out: list[ComponentChange] = []
    for s, n in used_a.items():
        change = _symbol_change(a, b, s, n, used_b, renames, skip)
        if change is not None:
            out.append(change)
    renamed_to = set(renames.values())
    for s, n in used_b.items():
        if s not in used_a and s not in renamed_to:
            out.append(ComponentChange("added", None, s, None, definition(b, s).type, [], 0, n))
    return out


def _symbol_change(a, b, s: str, n: int, used_b: dict[str, int], renames: dict[str, str],
                   skip: Ignore) -> ComponentChange | None:
    """How A's symbol `s` (used by n sublayers) fares in B; None when it is the same."""
    da = definition(a, s)
    if s in renames:
        t = renames[s]
        return ComponentChange("renamed", s, t, da.type, da.type, [], n, used_b[t])
    if s not in used_b:
        return ComponentChange("removed", s, None, da.type, None, [], n, 0)
    db = definition(b, s)
    if da.type != db.type:
        return ComponentChange("changed", s, s, da.type, db.type,
                               [FieldChange("type", da.type, db.type)], n, used_b[s])
    fields = _instance_changes(da, db, skip)
    return ComponentChange("changed", s, s, da.type, db.type, fields, n, used_b[s]) if fields else None


# --- sublayers ------------------------------------------------------------------------------------
def _members(sub: Sublayer) -> list[tuple[str, str]]:
    return [(m.name, m.type) for m in sub.members]


def _overrides(sub: Sublayer) -> dict:
    return {m.name: dict(m.overrides) for m in sub.members if m.overrides}


def sublayer_changes(a: ResolvedSpec, b: ResolvedSpec, pairs, added, removed, retyped,
                     member_pairs, renames: dict[str, str], skip: Ignore) -> list[SublayerChange]:
    """Matched sublayers that differ beyond their definitions' changes, and the added and
    removed ones, in B's order (a removed one where it sat in A)."""
    out: list[tuple[tuple, SublayerChange]] = []
    for i, j in pairs:
        members = _member_changes(a, b, member_pairs[(i, j)], renames, skip)
        sa, sb = a.sublayers[i], b.sublayers[j]
        # a group's gates, unless the model's group_gates changed them all (listed there)
        gates = (sa.gates, sb.gates) if sa.gates != sb.gates and sa.parallel and sb.parallel and not (
            sa.gates == a.model.group_gates and sb.gates == b.model.group_gates) else None
        if members or gates:
            kind = "type changed" if (i, j) in retyped else "changed"
            out.append(((i, j), SublayerChange(kind, i, j, _members(sa), _members(sb), members,
                                               _overrides(sa), _overrides(sb), gates)))
    out += _added(b, added, pairs) + _removed(a, removed, pairs)
    return [c for _, c in sorted(out, key=lambda kv: (kv[0][1], kv[0][0]))]


def _member_changes(a, b, member_pairs: list[tuple], renames: dict[str, str],
                    skip: Ignore) -> list[MemberChange]:
    changes: list[MemberChange] = []
    for ma, mb in member_pairs:
        if ma is None or mb is None or ma.type != mb.type:
            changes.append(MemberChange(ma and ma.name, mb and mb.name, ma and ma.type,
                                        mb and mb.type, []))
            continue
        fields = _instance_changes(ma, mb, skip)
        if mb.name == renames.get(ma.name, ma.name) and _only_definition_change(a, b, ma, mb, fields, skip):
            continue  # listed under components
        changes.append(MemberChange(ma.name, mb.name, ma.type, mb.type, fields))
    return changes


def _only_definition_change(a, b, ma, mb, fields: list[FieldChange], skip: Ignore) -> bool:
    """The member changed exactly as its definition did (or not at all)."""
    da, db = definition(a, ma.name), definition(b, mb.name)
    return da.type == db.type and fields == _instance_changes(da, db, skip)


def _added(b: ResolvedSpec, added: list[int], pairs) -> list[tuple[tuple, SublayerChange]]:
    """Each added sublayer, sorting where it sits in B (after A's last match before it)."""
    out = []
    for j in added:
        sb = b.sublayers[j]
        before = max((i for i, jj in pairs if jj < j), default=-1)
        out.append(((before + 0.5, j), SublayerChange("added", None, j, [], _members(sb), [], {},
                                                      _overrides(sb))))
    return out


def _removed(a: ResolvedSpec, removed: list[int], pairs) -> list[tuple[tuple, SublayerChange]]:
    """Each removed sublayer, sorting where it sat in A (after B's match of the one before)."""
    b_of_a = dict(pairs)
    out = []
    for i in removed:
        sa = a.sublayers[i]
        after = max((jj for ii, jj in b_of_a.items() if ii < i), default=-1)
        out.append(((i, after + 0.5), SublayerChange("removed", i, None, _members(sa), [], [],
                                                     _overrides(sa), {})))
    return out
