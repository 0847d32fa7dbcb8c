"""`archspec diff`: a structural diff of two resolved specs (not of their YAML text), what the
change costs, and what a warm start from A's checkpoint can reuse in B.

    d = diff(a, b, seq_lens=(2048, 32768), ignore=("model.dtype",), max_params_delta="5%")
    d.different, d.exit_code        # 0 same, 1 different, 4 a budget crossed
    print(render(d, "table"))       # or "markdown", "json"; to_json(d) is the JSON-ready dict
    b_state = d.compatibility.warm_start(model_a.state_dict())   # A's reusable tensors, B's names

The pipeline: definitions (symbols used by the layout, renames detected) -> sublayer alignment
-> member comparison -> accounting deltas -> checkpoint compatibility -> budgets.

Alignment (docs/diff.md): sublayers are compared by identity, not by index. A sublayer's key is
the tuple of (type, symbol) of its members, with A's symbols mapped through detected renames;
difflib's SequenceMatcher (autojunk off) aligns the two key sequences, so an inserted sublayer is
one 'added' entry and everything after it is matched to its shifted self. Runs that differ are
aligned again on member types alone: equal types pair up as 'changed' (another symbol), equal-
length runs of other types pair up as 'type changed', and what is left is 'added' / 'removed'.
Hyperparameters never affect the alignment; matched members' resolved configs (defaults filled,
overrides applied) are compared key by key.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from . import components as C
from .accounting import Accounting, account
from .components.base import FlopConvention, ModelConfig
from .errors import did_you_mean
from .layout import compact
from .schema import component_schema
from .spec import ResolvedSpec, Sublayer, load
from .units import human

SCHEMA_VERSION = 1
EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE, EXIT_BUDGET = 0, 1, 2, 4
MODEL_FIELDS = ("vocab_size", "d_model", "max_seq_len", "dtype", "tie_embeddings", "init_std")


class _Absent:
    """A key one side's config does not have (null in JSON, '(absent)' in text)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()
COMPAT_KINDS = ("unchanged", "renamed", "reshaped", "new", "removed")


class DiffOptionError(ValueError):
    """A bad option (ignore path, sequence length, budget): a usage error, not a spec problem."""


# --- results --------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class CostDelta:
    """A figure in A and B; per-token FLOPs are exact quotients of per-sequence integers."""

    a: int | float
    b: int | float

    @property
    def delta(self) -> int | float:
        return self.b - self.a

    @property
    def pct(self) -> float | None:
        """Relative change in percent of A; None when A is 0 and B is not (new)."""
        if self.a == 0:
            return 0.0 if self.b == 0 else None
        return (self.b - self.a) / abs(self.a) * 100.0

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "delta": self.delta, "pct": self.pct}


@dataclass
class TypeCost:
    """Accounting of every part of one component type (as the report's `by_type`)."""

    type: str
    count: CostDelta
    params: CostDelta
    active_params: CostDelta
    flops_per_token: dict[int, CostDelta]  # forward, by sequence length
    state_bytes: dict[int, CostDelta]

    @property
    def changed(self) -> bool:
        return any(d.delta != 0 for d in self._all())

    def _all(self):
        return [self.count, self.params, self.active_params, *self.flops_per_token.values(),
                *self.state_bytes.values()]


@dataclass
class Costs:
    seq_lens: tuple[int, ...]
    params: CostDelta
    active_params: CostDelta
    flops_per_token: dict[int, CostDelta]  # forward FLOPs per token at each sequence length
    state_bytes: dict[int, CostDelta]  # inference state per sequence after seq_len tokens
    by_type: list[TypeCost]

    @property
    def changed(self) -> bool:
        return any(d.delta != 0 for d in (self.params, self.active_params,
                                          *self.flops_per_token.values(), *self.state_bytes.values()))


@dataclass
class Compatibility:
    """Which of A's parameter tensors load into B. Names are `named_parameters()` names (equal
    to the state dict's keys); shapes come from the analytic accounting, which equals the built
    modules' exactly (tested)."""

    unchanged: list[tuple[str, tuple]]  # (name, shape): same name, same shape
    renamed: list[tuple[str, str, tuple]]  # (name in A, name in B, shape)
    reshaped: list[tuple[str, str, tuple, tuple]]  # (name in A, name in B, shape in A, in B)
    new: list[tuple[str, tuple]]  # in B only: initialised fresh
    removed: list[tuple[str, tuple]]  # in A only: dropped
    dtype_a: str
    dtype_b: str

    def mapping(self) -> dict[str, str]:
        """A's name -> B's name for every tensor that loads unchanged (same shape)."""
        return {**{n: n for n, _ in self.unchanged}, **{a: b for a, b, _ in self.renamed}}

    def warm_start(self, state_dict_a: dict) -> dict:
        """B's state-dict entries filled from A's: load with `load_state_dict(..., strict=False)`;
        the missing keys are exactly the new and reshaped tensors. Tensors are cast to B's dtype."""
        import torch
        from .components.modules import TORCH_DTYPES
        dtype = TORCH_DTYPES[self.dtype_b]
        out = {}
        for a, b in self.mapping().items():
            t = state_dict_a[a]
            out[b] = t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        return out

    @staticmethod
    def _numel(shape) -> int:
        return math.prod(shape)

    def count(self, kind: str) -> tuple[int, int]:
        """(tensors, parameters) of one kind; reshaped counts B's shapes."""
        rows = getattr(self, kind)
        shape = {"unchanged": 1, "renamed": 2, "reshaped": 3, "new": 1, "removed": 1}[kind]
        return len(rows), sum(self._numel(r[shape]) for r in rows)

    @property
    def reusable_params(self) -> int:
        return self.count("unchanged")[1] + self.count("renamed")[1]

    @property
    def params_b(self) -> int:
        return sum(self.count(k)[1] for k in ("unchanged", "renamed", "reshaped", "new"))

    @property
    def params_a(self) -> int:
        return (self.count("unchanged")[1] + self.count("renamed")[1] + self.count("removed")[1]
                + sum(self._numel(r[2]) for r in self.reshaped))

    @property
    def identical(self) -> bool:
        return not (self.renamed or self.reshaped or self.new or self.removed)


@dataclass(frozen=True)
class Budget:
    """A limit on the size of a change: relative ('5%' of A) or absolute ('10M', '2.5e9')."""

    text: str
    value: float
    relative: bool

    @classmethod
    def parse(cls, text: "str | Budget") -> "Budget":
        if isinstance(text, Budget):
            return text
        raw = str(text).strip().replace("_", "").replace(",", "")
        relative = raw.endswith("%")
        number, mult = (raw[:-1], 1.0) if relative else (raw, 1.0)
        if not relative and number[-1:] in _SUFFIXES:
            number, mult = number[:-1], _SUFFIXES[number[-1]]
        try:
            value = float(number) * mult
        except ValueError:
            raise DiffOptionError(f"budget '{text}' is not a number: write e.g. '5%', '10M' or "
                                  "'2.5e9'") from None
        if not math.isfinite(value) or value < 0:
            raise DiffOptionError(f"budget '{text}' must be a finite number >= 0")
        return cls(str(text).strip(), value, relative)

    def crossed(self, d: CostDelta) -> bool:
        """The change's size (either direction) is above the limit; at the limit is within."""
        if self.relative:
            return abs(d.delta) * 100 > self.value * abs(d.a)  # A == 0: any change crosses
        return abs(d.delta) > self.value


_SUFFIXES = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}


@dataclass
class BudgetCheck:
    metric: str  # 'params' | 'forward_flops_per_token'
    seq_len: int | None
    budget: Budget
    delta: CostDelta

    @property
    def crossed(self) -> bool:
        return self.budget.crossed(self.delta)

    def describe(self) -> str:
        what = "parameters" if self.metric == "params" else f"forward FLOPs/token at seq_len {self.seq_len}"
        verdict = "crossed" if self.crossed else "within"
        return (f"{what} changed by {_signed(self.delta.delta)} ({_pct(self.delta)}): {verdict} "
                f"the budget of {self.budget.text}")


@dataclass
class SpecDiff:
    a: ResolvedSpec
    b: ResolvedSpec
    seq_lens: tuple[int, ...]
    ignore: tuple[str, ...]
    convention: FlopConvention
    model: list[FieldChange]
    components: list[ComponentChange]
    sublayers: list[SublayerChange]
    alignment: list[tuple[int, int]]  # every matched (A index, B index) pair, changed or not
    costs: Costs
    compatibility: Compatibility
    budgets: list[BudgetCheck]
    warnings: list[str]

    @property
    def layout_a(self) -> str:
        return self.a.layout_text

    @property
    def layout_b(self) -> str:
        return self.b.layout_text

    @property
    def different(self) -> bool:
        """Something structural is listed (ignored fields excepted). Costs and checkpoint names
        follow from the structure, so they never make two specs different on their own."""
        return bool(self.model or self.components or self.sublayers)

    @property
    def budget_crossed(self) -> bool:
        return any(c.crossed for c in self.budgets)

    @property
    def exit_code(self) -> int:
        if self.budget_crossed:
            return EXIT_BUDGET
        return EXIT_DIFFERENT if self.different else EXIT_SAME

    @property
    def shifted(self) -> list[tuple[int, int]]:
        """Matched sublayers whose index moved (an inserted or removed sublayer before them)."""
        return [(i, j) for i, j in self.alignment if i != j]


# --- ignore paths ---------------------------------------------------------------------------------
def _component_keys(type_name: str) -> set[str]:
    """Keys a resolved config of the type may hold: the schema's and the derived ones."""
    from .spec import _fill_defaults
    comp = C.get(type_name)
    keys = set(component_schema(type_name)["properties"]) - {"type"}
    try:
        cfg = comp.derive(_fill_defaults(type_name, comp.example), ModelConfig(97, 64, 64))
        keys |= set(cfg)
    except Exception:  # noqa: BLE001 - an example that fails to derive only narrows the check
        pass
    return keys | {"backend"}


def check_ignore(paths: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise ignore paths (comma lists split). Forms: `model.FIELD`,
    `model.norm` or `model.norm.KEY`, `TYPE.KEY` (a component type's hyperparameter) and
    `*.KEY` (that key in every component type). Raises DiffOptionError naming a bad path."""
    out: list[str] = []
    paths = [paths] if isinstance(paths, str) else paths
    sublayer_types = C.types_with_role("sublayer")
    norm_types = C.types_with_role("norm")
    for raw in paths:
        for path in (p.strip() for p in str(raw).split(",")):
            if not path:
                continue
            head, _, rest = path.partition(".")
            if head == "model":
                if rest in MODEL_FIELDS or rest == "norm":
                    pass
                elif rest.startswith("norm."):
                    keys = set().union(*(_component_keys(t) for t in norm_types)) | {"type"}
                    if rest[5:] not in keys:
                        raise DiffOptionError(_unknown(path, rest[5:], keys, "a norm key"))
                elif rest == "name":
                    raise DiffOptionError("--ignore model.name: the model's name is shown, never "
                                          "compared")
                else:
                    raise DiffOptionError(_unknown(path, rest, set(MODEL_FIELDS) | {"norm"},
                                                   "a model field"))
            elif head == "*" and rest:
                keys = set().union(*(_component_keys(t) for t in sublayer_types))
                if rest not in keys:
                    raise DiffOptionError(_unknown(path, rest, keys, "a hyperparameter of any component"))
            elif head in sublayer_types and rest:
                keys = _component_keys(head)
                if rest not in keys:
                    raise DiffOptionError(_unknown(path, rest, keys, f"a hyperparameter of '{head}'"))
            else:
                hint = did_you_mean(head, [*sublayer_types, "model"])
                raise DiffOptionError(
                    f"--ignore '{path}' is not model.FIELD, TYPE.KEY or *.KEY"
                    + (f"; {hint}" if hint and rest else "")
                    + f" (component types: {', '.join(sublayer_types)})")
            if path not in out:
                out.append(path)
    return tuple(out)


def _unknown(path: str, key: str, choices: set[str], what: str) -> str:
    hint = did_you_mean(key, sorted(choices))
    return f"--ignore '{path}': '{key}' is not {what}" + (f"; {hint}" if hint else
                                                           f" (one of: {', '.join(sorted(choices))})")


class _Ignore:
    def __init__(self, paths: tuple[str, ...]):
        self.paths = set(paths)

    def model(self, name: str) -> bool:
        return (f"model.{name}" in self.paths
                or (name.startswith("norm.") and "model.norm" in self.paths))

    def key(self, type_name: str, key: str) -> bool:
        return f"{type_name}.{key}" in self.paths or f"*.{key}" in self.paths


# --- the diff -------------------------------------------------------------------------------------
def diff(a: "ResolvedSpec | str | os.PathLike", b: "ResolvedSpec | str | os.PathLike",
         seq_lens: Sequence[int] | int | None = None, ignore: Iterable[str] = (),
         max_params_delta: "str | Budget | None" = None, max_flops_delta: "str | Budget | None" = None,
         convention: FlopConvention = FlopConvention()) -> SpecDiff:
    """Compare two specs (resolved, or paths to load). `seq_lens` defaults to the smaller
    max_seq_len; a length above either spec's max_seq_len is a DiffOptionError, as in `report`."""
    a = a if isinstance(a, ResolvedSpec) else load(a)
    b = b if isinstance(b, ResolvedSpec) else load(b)
    ignored = check_ignore(ignore)
    lens = _check_seq_lens(a, b, seq_lens)
    skip = _Ignore(ignored)
    accs_a = {t: account(a, t, convention) for t in lens}
    accs_b = {t: account(b, t, convention) for t in lens}
    renames = _renames(a, b)
    pairs, added, removed, retyped = _align(a.sublayers, b.sublayers, renames)
    member_pairs = {(i, j): _pair_members(a.sublayers[i].members, b.sublayers[j].members, renames)
                    for i, j in pairs}
    d = SpecDiff(
        a=a, b=b, seq_lens=lens, ignore=ignored, convention=convention,
        model=_model_changes(a, b, skip),
        components=_component_changes(a, b, renames, skip),
        sublayers=_sublayer_changes(a, b, pairs, added, removed, retyped, member_pairs, renames, skip),
        alignment=sorted(pairs),
        costs=_costs(accs_a, accs_b, lens),
        compatibility=_compatibility(accs_a[lens[0]], accs_b[lens[0]], pairs, member_pairs),
        budgets=[], warnings=[])
    d.budgets = _budgets(d.costs, max_params_delta, max_flops_delta)
    if a.model.dtype != b.model.dtype:
        d.warnings.append(f"dtype {a.model.dtype} -> {b.model.dtype}: a warm start casts A's tensors")
    return d


def _check_seq_lens(a: ResolvedSpec, b: ResolvedSpec, seq_lens) -> tuple[int, ...]:
    if seq_lens is None:
        return (min(a.model.max_seq_len, b.model.max_seq_len),)
    lens = (seq_lens,) if isinstance(seq_lens, int) else tuple(seq_lens)
    if not lens:
        raise DiffOptionError("give at least one sequence length")
    out: list[int] = []
    for t in lens:
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise DiffOptionError(f"sequence lengths must be positive integers, got {t!r}")
        for side, spec in (("A", a), ("B", b)):
            if t > spec.model.max_seq_len:
                raise DiffOptionError(f"--seq-len {t} exceeds the max_seq_len {spec.model.max_seq_len} "
                                      f"of {side} ({spec.name}, {spec.source})")
        if t not in out:
            out.append(t)
    return tuple(out)


def _used(spec: ResolvedSpec) -> dict[str, int]:
    """Symbols the layout uses, in first-use order, with the number of sublayers using each."""
    out: dict[str, int] = {}
    for sub in spec.sublayers:
        for m in sub.members:
            out[m.name] = out.get(m.name, 0) + 1
    return out


def _definition(spec: ResolvedSpec, symbol: str):
    d = spec.components.get(symbol)
    if d is None:  # cannot happen for a resolved spec; fall back to the first use
        d = next(m for s in spec.sublayers for m in s.members if m.name == symbol)
    return d


def _same_definition(x, y) -> bool:
    return x.type == y.type and x.backend == y.backend and x.config == y.config


def _renames(a: ResolvedSpec, b: ResolvedSpec) -> dict[str, str]:
    """A symbol used only in A whose definition (type, backend, resolved config) equals that of
    a symbol used only in B: renamed, not removed and added. Paired in first-use order."""
    used_a, used_b = _used(a), _used(b)
    only_a = [s for s in used_a if s not in used_b]
    only_b = [s for s in used_b if s not in used_a]
    out: dict[str, str] = {}
    for s in only_a:
        da = _definition(a, s)
        hit = next((t for t in only_b if t not in out.values() and _same_definition(da, _definition(b, t))),
                   None)
        if hit is not None:
            out[s] = hit
    return out


def _config_changes(type_name: str, ca: dict, cb: dict, backend_a: str, backend_b: str,
                    skip: _Ignore) -> list[FieldChange]:
    out = [FieldChange(k, ca.get(k, ABSENT), cb.get(k, ABSENT))
           for k in [*ca, *(k for k in cb if k not in ca)]
           if ca.get(k, ABSENT) != cb.get(k, ABSENT) and not skip.key(type_name, k)]
    if backend_a != backend_b and not skip.key(type_name, "backend"):
        out.append(FieldChange("backend", backend_a, backend_b))
    return out


def _model_changes(a: ResolvedSpec, b: ResolvedSpec, skip: _Ignore) -> list[FieldChange]:
    out = [FieldChange(f"model.{f}", getattr(a.model, f), getattr(b.model, f)) for f in MODEL_FIELDS
           if getattr(a.model, f) != getattr(b.model, f) and not skip.model(f)]
    na, nb = a.norm, b.norm
    if na.type != nb.type:
        if not skip.model("norm.type"):
            out.append(FieldChange("model.norm.type", na.type, nb.type))
    for fc in _config_changes(na.type, na.config, nb.config, na.backend, nb.backend, _Ignore(())):
        if not skip.model(f"norm.{fc.field}"):
            out.append(FieldChange(f"model.norm.{fc.field}", fc.a, fc.b))
    return out


def _component_changes(a: ResolvedSpec, b: ResolvedSpec, renames: dict[str, str],
                       skip: _Ignore) -> list[ComponentChange]:
    used_a, used_b = _used(a), _used(b)
    out: list[ComponentChange] = []
    renamed_to = set(renames.values())
    for s, n in used_a.items():
        da = _definition(a, s)
        if s in renames:
            t = renames[s]
            out.append(ComponentChange("renamed", s, t, da.type, da.type, [], n, used_b[t]))
        elif s not in used_b:
            out.append(ComponentChange("removed", s, None, da.type, None, [], n, 0))
        else:
            db = _definition(b, s)
            if da.type != db.type:
                out.append(ComponentChange("changed", s, s, da.type, db.type,
                                           [FieldChange("type", da.type, db.type)], n, used_b[s]))
                continue
            fields = _config_changes(da.type, da.config, db.config, da.backend, db.backend, skip)
            if fields:
                out.append(ComponentChange("changed", s, s, da.type, db.type, fields, n, used_b[s]))
    for s, n in used_b.items():
        if s not in used_a and s not in renamed_to:
            out.append(ComponentChange("added", None, s, None, _definition(b, s).type, [], 0, n))
    return out


def _key(sub: Sublayer, renames: dict[str, str] | None) -> tuple:
    if renames is None:
        return tuple(m.type for m in sub.members)
    return tuple((m.type, renames.get(m.name, m.name)) for m in sub.members)


# alignment costs: matching keys 0; same member types, another symbol 2; other types 4; a
# sublayer added or removed 3. A type change (4) is cheaper than a removal plus an addition (6),
# so equal-length replaced runs pair up; an insertion (3) is cheaper than shifting everything.
COST_SYMBOL, COST_TYPE, COST_INDEL = 2, 4, 3
MAX_DP_CELLS = 1_000_000  # beyond this the middle is aligned by difflib (see docs/diff.md)


def _align(subs_a: list[Sublayer], subs_b: list[Sublayer], renames: dict[str, str]):
    """(matched pairs, added B indices, removed A indices, pairs whose types differ).

    The common prefix and suffix of the (type, symbol) keys match as they are; the middle is a
    minimum-cost alignment (edit distance with the costs above; on ties, earlier sublayers
    match and the additions or removals come last)."""
    ka = [_key(s, renames) for s in subs_a]
    kb = [_key(s, {}) for s in subs_b]
    ta = [_key(s, None) for s in subs_a]
    tb = [_key(s, None) for s in subs_b]
    n, m = len(ka), len(kb)
    lo = 0
    while lo < min(n, m) and ka[lo] == kb[lo]:
        lo += 1
    hi = 0
    while hi < min(n, m) - lo and ka[n - 1 - hi] == kb[m - 1 - hi]:
        hi += 1
    mid_a, mid_b = range(lo, n - hi), range(lo, m - hi)
    steps = (_dp(ka, kb, ta, tb, mid_a, mid_b) if len(mid_a) * len(mid_b) <= MAX_DP_CELLS
             else _difflib_steps(ka, kb, ta, tb, mid_a, mid_b))
    pairs = [(i, i) for i in range(lo)] + [(n - hi + k, m - hi + k) for k in range(hi)]
    added, removed, retyped = [], [], set()
    for i, j in steps:
        if i is None:
            added.append(j)
        elif j is None:
            removed.append(i)
        else:
            pairs.append((i, j))
            if ta[i] != tb[j]:
                retyped.add((i, j))
    return sorted(pairs), added, removed, retyped


def _dp(ka, kb, ta, tb, rows: range, cols: range) -> list[tuple]:
    """Minimum-cost alignment of ka[rows] and kb[cols] as (i, j), (i, None) or (None, j) steps."""
    n, m = len(rows), len(cols)

    def sub(i, j):
        if ka[i] == kb[j]:
            return 0
        return COST_SYMBOL if ta[i] == tb[j] else COST_TYPE

    # cost[x][y]: aligning the suffixes rows[x:] and cols[y:]
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for y in range(m - 1, -1, -1):
        cost[n][y] = cost[n][y + 1] + COST_INDEL
    for x in range(n - 1, -1, -1):
        row, below = cost[x], cost[x + 1]
        row[m] = below[m] + COST_INDEL
        i = rows[x]
        for y in range(m - 1, -1, -1):
            row[y] = min(sub(i, cols[y]) + below[y + 1], COST_INDEL + below[y], COST_INDEL + row[y + 1])
    steps, x, y = [], 0, 0
    while x < n or y < m:
        if x < n and y < m and cost[x][y] == sub(rows[x], cols[y]) + cost[x + 1][y + 1]:
            steps.append((rows[x], cols[y]))
            x, y = x + 1, y + 1
        elif x < n and cost[x][y] == COST_INDEL + cost[x + 1][y]:
            steps.append((rows[x], None))
            x += 1
        else:
            steps.append((None, cols[y]))
            y += 1
    return steps


def _difflib_steps(ka, kb, ta, tb, rows: range, cols: range) -> list[tuple]:
    """For very long differing runs: difflib on the keys, differing runs again on member types;
    equal-length replaced runs pair up, the rest is added / removed."""
    steps: list[tuple] = []
    outer = difflib.SequenceMatcher(None, [ka[i] for i in rows], [kb[j] for j in cols], autojunk=False)
    for tag, i1, i2, j1, j2 in outer.get_opcodes():
        ia, ib = rows[i1:i2], cols[j1:j2]
        if tag == "equal":
            steps += zip(ia, ib)
            continue
        inner = difflib.SequenceMatcher(None, [ta[i] for i in ia], [tb[j] for j in ib], autojunk=False)
        for t2, p1, p2, q1, q2 in inner.get_opcodes():
            xa, xb = ia[p1:p2], ib[q1:q2]
            if t2 == "equal" or (t2 == "replace" and len(xa) == len(xb)):
                steps += zip(xa, xb)
            else:
                steps += [(i, None) for i in xa] + [(None, j) for j in xb]
    return steps


def _pair_members(ma: list, mb: list, renames: dict[str, str]) -> list[tuple]:
    """Members of two matched sublayers paired by symbol (through renames), then by type, then
    by position; unpaired ones are (m, None) or (None, m). In A's order, additions last."""
    left = list(mb)
    chosen: dict[int, Any] = {}
    for rule in (lambda x, y: y.name == renames.get(x.name, x.name) and y.type == x.type,
                 lambda x, y: y.type == x.type,
                 lambda x, y: True):
        for k, m in enumerate(ma):
            if k in chosen:
                continue
            hit = next((y for y in left if rule(m, y)), None)
            if hit is not None:
                chosen[k] = hit
                left.remove(hit)
    return [(m, chosen.get(k)) for k, m in enumerate(ma)] + [(None, y) for y in left]


def _members(sub: Sublayer) -> list[tuple[str, str]]:
    return [(m.name, m.type) for m in sub.members]


def _overrides(sub: Sublayer) -> dict:
    return {m.name: dict(m.overrides) for m in sub.members if m.overrides}


def _sublayer_changes(a, b, pairs, added, removed, retyped, member_pairs, renames,
                      skip: _Ignore) -> list[SublayerChange]:
    out: list[tuple[tuple, SublayerChange]] = []
    for i, j in pairs:
        sa, sb = a.sublayers[i], b.sublayers[j]
        changes: list[MemberChange] = []
        for ma, mb in member_pairs[(i, j)]:
            if ma is None or mb is None or ma.type != mb.type:
                changes.append(MemberChange(ma and ma.name, mb and mb.name, ma and ma.type,
                                            mb and mb.type, []))
                continue
            fields = _config_changes(ma.type, ma.config, mb.config, ma.backend, mb.backend, skip)
            if mb.name == renames.get(ma.name, ma.name):
                da, db = _definition(a, ma.name), _definition(b, mb.name)
                if da.type == db.type and fields == _config_changes(
                        da.type, da.config, db.config, da.backend, db.backend, skip):
                    continue  # none, or exactly its definition's change (listed under components)
            changes.append(MemberChange(ma.name, mb.name, ma.type, mb.type, fields))
        if changes:
            kind = "type changed" if (i, j) in retyped else "changed"
            out.append(((i, j), SublayerChange(kind, i, j, _members(sa), _members(sb), changes,
                                               _overrides(sa), _overrides(sb))))
    # an added sublayer sorts where it sits in B; a removed one where it sat in A
    b_of_a = dict(pairs)
    for j in added:
        sb = b.sublayers[j]
        before = max((i for i, jj in pairs if jj < j), default=-1)
        out.append(((before + 0.5, j), SublayerChange("added", None, j, [], _members(sb), [], {},
                                                      _overrides(sb))))
    for i in removed:
        sa = a.sublayers[i]
        after = max((jj for ii, jj in b_of_a.items() if ii < i), default=-1)
        out.append(((i, after + 0.5), SublayerChange("removed", i, None, _members(sa), [], [],
                                                     _overrides(sa), {})))
    return [c for _, c in sorted(out, key=lambda kv: (kv[0][1], kv[0][0]))]


# --- accounting deltas ----------------------------------------------------------------------------
def _costs(accs_a: dict[int, Accounting], accs_b: dict[int, Accounting], lens) -> Costs:
    first_a, first_b = accs_a[lens[0]], accs_b[lens[0]]
    ta, tb = first_a.total(), first_b.total()
    types: list[str] = []
    for p in first_a.parts + first_b.parts:
        if p.type not in types:
            types.append(p.type)

    def by(acc: Accounting, type_name: str, what):
        return sum(what(p.cost) for p in acc.parts if p.type == type_name)

    by_type = []
    for typ in types:
        by_type.append(TypeCost(
            type=typ,
            count=CostDelta(sum(p.type == typ for p in first_a.parts),
                            sum(p.type == typ for p in first_b.parts)),
            params=CostDelta(by(first_a, typ, lambda c: c.params), by(first_b, typ, lambda c: c.params)),
            active_params=CostDelta(by(first_a, typ, lambda c: c.active_params),
                                    by(first_b, typ, lambda c: c.active_params)),
            flops_per_token={t: CostDelta(by(accs_a[t], typ, lambda c: c.flops.total) / t,
                                          by(accs_b[t], typ, lambda c: c.flops.total) / t) for t in lens},
            state_bytes={t: CostDelta(by(accs_a[t], typ, lambda c: c.state_bytes),
                                      by(accs_b[t], typ, lambda c: c.state_bytes)) for t in lens}))
    return Costs(
        seq_lens=tuple(lens),
        params=CostDelta(ta.params, tb.params),
        active_params=CostDelta(ta.active_params, tb.active_params),
        flops_per_token={t: CostDelta(accs_a[t].total().flops.total / t, accs_b[t].total().flops.total / t)
                         for t in lens},
        state_bytes={t: CostDelta(accs_a[t].total().state_bytes, accs_b[t].total().state_bytes)
                     for t in lens},
        by_type=by_type)


# --- checkpoint compatibility ---------------------------------------------------------------------
def _compatibility(acc_a: Accounting, acc_b: Accounting, pairs, member_pairs) -> Compatibility:
    """Map each of A's parts to the part of B in the same role (model parts by name; a matched
    sublayer's norm, gates and same-type members through the alignment), then compare shapes."""
    b_of_a = dict(pairs)
    target: dict[str, str] = {}  # A module path -> B module path
    for (i, j), mps in member_pairs.items():
        target[f"sublayers.{i}.norm"] = f"sublayers.{j}.norm"
        target[f"sublayers.{i}"] = f"sublayers.{j}"  # the residual's gates
        for ma, mb in mps:
            if ma is not None and mb is not None and ma.type == mb.type:
                target[f"sublayers.{i}.members.{ma.name}"] = f"sublayers.{j}.members.{mb.name}"
    shapes_b = acc_b.param_shapes()
    unchanged, renamed, reshaped, removed = [], [], [], []
    taken: set[str] = set()
    for part in acc_a.parts:
        if part.sublayer is None:
            to = part.module_path
        else:
            to = target.get(part.module_path) if part.sublayer in b_of_a else None
        for key, shape in part.param_shapes.items():
            name = f"{part.module_path}.{key}"
            new_name = f"{to}.{key}" if to is not None else None
            if new_name is None or new_name not in shapes_b:
                removed.append((name, tuple(shape)))
                continue
            taken.add(new_name)
            b_shape = tuple(shapes_b[new_name])
            if b_shape != tuple(shape):
                reshaped.append((name, new_name, tuple(shape), b_shape))
            elif new_name == name:
                unchanged.append((name, b_shape))
            else:
                renamed.append((name, new_name, b_shape))
    new = [(n, tuple(s)) for n, s in shapes_b.items() if n not in taken]
    order = {n: k for k, n in enumerate(shapes_b)}
    renamed.sort(key=lambda r: order[r[1]])
    reshaped.sort(key=lambda r: order[r[1]])
    unchanged.sort(key=lambda r: order[r[0]])
    return Compatibility(unchanged, renamed, reshaped, new, removed,
                         acc_a.spec.model.dtype, acc_b.spec.model.dtype)


# --- budgets --------------------------------------------------------------------------------------
def _budgets(costs: Costs, max_params, max_flops) -> list[BudgetCheck]:
    out = []
    if max_params is not None:
        out.append(BudgetCheck("params", None, Budget.parse(max_params), costs.params))
    if max_flops is not None:
        budget = Budget.parse(max_flops)
        out += [BudgetCheck("forward_flops_per_token", t, budget, costs.flops_per_token[t])
                for t in costs.seq_lens]
    return out


# --- JSON -----------------------------------------------------------------------------------------
def _json_value(v):
    if v is ABSENT:
        return None
    if isinstance(v, tuple):
        return list(v)
    return copy.deepcopy(v)


def _fields(fields: list[FieldChange]) -> list[dict]:
    return [{"field": f.field, "a": _json_value(f.a), "b": _json_value(f.b)} for f in fields]


def _spec_summary(spec: ResolvedSpec) -> dict:
    return {"name": spec.name, "source": spec.source, "files": list(spec.files),
            "layout": spec.layout_text, "n_sublayers": len(spec.sublayers),
            "max_seq_len": spec.model.max_seq_len, "dtype": spec.model.dtype}


def _by_len(ds: dict[int, CostDelta]) -> dict[str, dict]:
    return {str(t): d.to_dict() for t, d in ds.items()}


def to_json(d: SpecDiff) -> dict:
    """The JSON-ready dict of `archspec diff --format json` (docs/diff.md, schema_version 1)."""
    c = d.compatibility
    return {
        "schema_version": SCHEMA_VERSION,
        "a": _spec_summary(d.a),
        "b": _spec_summary(d.b),
        "different": d.different,
        "exit_code": d.exit_code,
        "ignored": list(d.ignore),
        "seq_lens": list(d.seq_lens),
        "attention_flops": d.convention.causal_attention,
        "layout": {"a": d.layout_a, "b": d.layout_b, "changed": d.layout_a != d.layout_b},
        "model": _fields(d.model),
        "components": [{"change": x.change, "symbol_a": x.symbol_a, "symbol_b": x.symbol_b,
                        "type_a": x.type_a, "type_b": x.type_b, "fields": _fields(x.fields),
                        "uses_a": x.uses_a, "uses_b": x.uses_b} for x in d.components],
        "sublayers": [{"change": s.change, "a_index": s.a_index, "b_index": s.b_index,
                       "a": [{"symbol": m, "type": t} for m, t in s.a_members],
                       "b": [{"symbol": m, "type": t} for m, t in s.b_members],
                       "members": [{"change": m.kind, "symbol_a": m.symbol_a, "symbol_b": m.symbol_b,
                                    "type_a": m.type_a, "type_b": m.type_b, "fields": _fields(m.fields)}
                                   for m in s.members],
                       "overrides_a": _json_value(s.overrides_a), "overrides_b": _json_value(s.overrides_b)}
                      for s in d.sublayers],
        "alignment": [[i, j] for i, j in d.alignment],
        "costs": {
            "params": d.costs.params.to_dict(),
            "active_params": d.costs.active_params.to_dict(),
            "forward_flops_per_token": _by_len(d.costs.flops_per_token),
            "inference_state_bytes_per_sequence": _by_len(d.costs.state_bytes),
            "by_type": [{"type": r.type, "count": r.count.to_dict(), "params": r.params.to_dict(),
                         "active_params": r.active_params.to_dict(),
                         "forward_flops_per_token": _by_len(r.flops_per_token),
                         "inference_state_bytes_per_sequence": _by_len(r.state_bytes)}
                        for r in d.costs.by_type],
        },
        "compatibility": {
            "params_a": c.params_a, "params_b": c.params_b, "reusable_params": c.reusable_params,
            "dtype_a": c.dtype_a, "dtype_b": c.dtype_b,
            "counts": {k: dict(zip(("tensors", "params"), c.count(k))) for k in COMPAT_KINDS},
            "unchanged": [n for n, _ in c.unchanged],
            "renamed": [{"a": x, "b": y, "shape": list(s)} for x, y, s in c.renamed],
            "reshaped": [{"a": x, "b": y, "shape_a": list(sa), "shape_b": list(sb)}
                         for x, y, sa, sb in c.reshaped],
            "new": [{"name": n, "shape": list(s)} for n, s in c.new],
            "removed": [{"name": n, "shape": list(s)} for n, s in c.removed],
        },
        "budgets": [{"metric": x.metric, "seq_len": x.seq_len, "limit": x.budget.text,
                     "relative": x.budget.relative, "delta": x.delta.delta, "pct": x.delta.pct,
                     "crossed": x.crossed} for x in d.budgets],
        "warnings": list(d.warnings),
    }


# --- rendering ------------------------------------------------------------------------------------
def _signed(v: int | float, unit: str = "", exact: bool = True) -> str:
    if v == 0:
        return "0"
    sign = "+" if v > 0 else "-"
    if exact and float(v).is_integer():
        return f"{sign}{abs(int(v)):,}"
    return f"{sign}{human(abs(v), unit)}"


def _pct(d: CostDelta) -> str:
    p = d.pct
    if p is None:
        return "new"
    return "0%" if p == 0 else f"{p:+.2f}%"


def _value(v) -> str:
    if v is ABSENT:
        return "(absent)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def _field_text(fields: list[FieldChange], arrow: str) -> str:
    return ", ".join(f"{f.field} {_value(f.a)} {arrow} {_value(f.b)}" for f in fields)


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
    rows = [["~", f.field, f"{_value(f.a)} {arrow} {_value(f.b)}"] for f in d.model]
    for x in d.components:
        if x.change == "added":
            rows.append(["+", f"components.{x.symbol_b}", f"{x.type_b}, added ({_uses(x.uses_b)})"])
        elif x.change == "removed":
            rows.append(["-", f"components.{x.symbol_a}", f"{x.type_a}, removed ({_uses(x.uses_a)})"])
        elif x.change == "renamed":
            rows.append(["=", f"components.{x.symbol_a} {arrow} {x.symbol_b}",
                         f"{x.type_a}, renamed, same config ({_uses(x.uses_b)})"])
        else:
            rows.append(["~", f"components.{x.symbol_a}",
                         f"{x.type_a}: {_field_text(x.fields, arrow)} ({_uses_ab(x, arrow)})"
                         if x.type_a == x.type_b else
                         f"type {x.type_a} {arrow} {x.type_b} ({_uses_ab(x, arrow)})"])
    for s in _runs(d.sublayers):
        if isinstance(s, list):  # a run of consecutive added or removed sublayers
            added = s[0].change == "added"
            idx = [x.b_index if added else x.a_index for x in s]
            span = f"{idx[0]}-{idx[-1]}"
            where = f"sublayers - {arrow} {span}" if added else f"sublayers {span} {arrow} -"
            pattern = compact([tuple(m for m, _ in (x.b_members if added else x.a_members)) for x in s])
            rows.append(["+" if added else "-", where,
                         f"{pattern} {'added' if added else 'removed'} ({len(s)} sublayers)"])
            continue
        ia = "-" if s.a_index is None else str(s.a_index)
        ib = "-" if s.b_index is None else str(s.b_index)
        where = f"sublayer {ia} {arrow} {ib}"
        if s.change == "added":
            rows.append(["+", where, f"{_members_text(s.b_members)} added"])
        elif s.change == "removed":
            rows.append(["-", where, f"{_members_text(s.a_members)} removed"])
        else:
            text = "; ".join(_member_change_text(m, arrow) for m in s.members)
            sides = [("", s.overrides_a)] if s.overrides_a == s.overrides_b else \
                [(" in A", s.overrides_a), (" in B", s.overrides_b)]
            for side, ov in sides:
                if ov:
                    text += f" (override{side}: " + "; ".join(
                        f"{sym}: " + ", ".join(f"{k}={_value(v)}" for k, v in kv.items())
                        for sym, kv in ov.items()) + ")"
            rows.append(["~", where, text])
    return rows


def _runs(changes: list[SublayerChange]) -> list:
    """Changes with each run of 3+ consecutive added (or removed) sublayers as one list."""
    out: list = []
    k = 0
    while k < len(changes):
        c, end = changes[k], k + 1
        if c.change in ("added", "removed"):
            index = (lambda x: x.b_index) if c.change == "added" else (lambda x: x.a_index)
            while (end < len(changes) and changes[end].change == c.change
                   and index(changes[end]) == index(changes[end - 1]) + 1):
                end += 1
        if end - k >= 3:
            out.append(changes[k:end])
        else:
            out += changes[k:end]
        k = end
    return out


def _cost_rows(d: SpecDiff) -> list[list[str]]:
    c = d.costs
    rows = [["parameters", f"{c.params.a:,}", f"{c.params.b:,}", _signed(c.params.delta), _pct(c.params)],
            ["active parameters", f"{c.active_params.a:,}", f"{c.active_params.b:,}",
             _signed(c.active_params.delta), _pct(c.active_params)]]
    for t in c.seq_lens:
        f = c.flops_per_token[t]
        rows.append([f"fwd FLOPs/token @{t}", human(f.a), human(f.b), _signed(f.delta, exact=False),
                     _pct(f)])
    for t in c.seq_lens:
        s = c.state_bytes[t]
        rows.append([f"inference state @{t}", human(s.a, "B"), human(s.b, "B"),
                     _signed(s.delta, "B", exact=False), _pct(s)])
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
        rows.append([r.type, count, _signed(r.params.delta), _pct(r.params)]
                    + [f"{_signed(r.flops_per_token[t].delta, exact=False)} ({_pct(r.flops_per_token[t])})"
                       for t in lens]
                    + [f"{_signed(r.state_bytes[t].delta, 'B', exact=False)} ({_pct(r.state_bytes[t])})"
                       for t in lens])
    return headers, rows


def _renamed_modules(c: Compatibility) -> dict[tuple[str, str], int]:
    """Renamed tensors grouped by the part of the name that changed: a shifted sublayer is one
    'sublayers.2.* -> sublayers.3.*' entry, a renamed symbol 'sublayers.0.members.A.* -> ...attn.*'."""
    out: dict[tuple[str, str], int] = {}
    for a, b, _ in c.renamed:
        pa, pb = a.split("."), b.split(".")
        while len(pa) > 1 and len(pb) > 1 and pa[-1] == pb[-1]:
            pa, pb = pa[:-1], pb[:-1]
        key = (".".join(pa), ".".join(pb))
        out[key] = out.get(key, 0) + 1
    return out


def _owner(name: str) -> str:
    """The module a parameter belongs to: 'sublayers.2.members.M', 'sublayers.2.norm', 'embedding'."""
    parts = name.split(".")
    if parts[0] == "sublayers" and len(parts) >= 4 and parts[2] == "members":
        return ".".join(parts[:4])
    if parts[0] in ("sublayers", "shared") and len(parts) >= 3:
        return ".".join(parts[:2 if parts[0] == "shared" else 3])
    return parts[0]


def _by_owner(names: list[str], code) -> list[str]:
    """Names grouped by owning module: 'sublayers.2.members.M.* (9)'; single tensors in full."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_owner(n), []).append(n)
    return [code(ns[0]) if len(ns) == 1 else f"{code(owner + '.*')} ({len(ns)})" for owner, ns in groups.items()]


def _compat_lines(d: SpecDiff, arrow: str, limit: int, code=lambda s: s) -> tuple[str, list[list[str]]]:
    c = d.compatibility
    share = f" ({c.reusable_params / c.params_b * 100:.1f}%)" if c.params_b else ""
    reshaped_a = sum(math.prod(r[2]) for r in c.reshaped)
    head = (f"a warm start from A can reuse {c.reusable_params:,} of B's {c.params_b:,} parameters"
            f"{share}; of A's {c.params_a:,}, {reshaped_a:,} are in reshaped tensors and "
            f"{c.count('removed')[1]:,} in removed ones")
    examples = {
        "unchanged": [code(n) for n, _ in c.unchanged],
        "renamed": [f"{code(pa + '.*')} {arrow} {code(pb + '.*')} ({n})" for (pa, pb), n in _renamed_modules(c).items()],
        "reshaped": [f"{code(a)} {list(sa)} {arrow} {list(sb)}" for a, b, sa, sb in c.reshaped],
        "new": _by_owner([n for n, _ in c.new], code),
        "removed": _by_owner([n for n, _ in c.removed], code),
    }
    rows = []
    for kind in COMPAT_KINDS:
        n, p = c.count(kind)
        shown = examples[kind][:limit] if kind != "unchanged" else []  # the rest need no action
        more = len(examples[kind]) - len(shown)
        text = ", ".join(shown) + (f" and {more} more" if shown and more > 0 else "")
        rows.append([kind, str(n), f"{p:,}", text])
    return head, rows


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


def render(d: SpecDiff, fmt: str = "table") -> str:
    """The diff for people ('table'), for pull-request comments ('markdown') or CI ('json')."""
    if fmt == "json":
        return json.dumps(to_json(d), indent=2) + "\n"
    if fmt not in ("table", "markdown"):
        raise ValueError(f"unknown format '{fmt}' (table, markdown or json)")
    from .report import _table
    md = fmt == "markdown"
    arrow = "→" if md else "->"
    code = (lambda s: f"`{s}`") if md else (lambda s: s)
    esc = (lambda s: s.replace("|", "\\|")) if md else (lambda s: s)
    table = lambda headers, rows, text_columns=(0,): _table(  # noqa: E731
        headers, [[esc(x) for x in r] for r in rows], md, text_columns)
    heading = (lambda s: f"#### {s}") if md else (lambda s: s)
    a, b = d.a, d.b
    title = (f"### archspec diff: `{a.name}` → `{b.name}`" if md else
             f"archspec diff: {a.name} ({a.source}) -> {b.name} ({b.source})")
    lines = [title, ""]
    layout = (f"layout: {code(d.layout_a)}" if d.layout_a == d.layout_b else
              f"layout: {code(d.layout_a)} {arrow} {code(d.layout_b)}")
    na, nb = len(a.sublayers), len(b.sublayers)
    layout += f" ({na} sublayers)" if na == nb else f" ({na} {arrow} {nb} sublayers)"
    lines += [layout]
    if d.ignore:
        lines.append(f"ignoring: {', '.join(code(p) for p in d.ignore)}")
    lines.append("")
    if not d.different:
        lines += ["no differences", ""]
    else:
        rows = _change_rows(d, arrow)
        if md:  # names in code spans; '*' (a Megatron symbol) must not start emphasis
            rows = [[mark, code(where), what.replace("*", "\\*")] for mark, where, what in rows]
        lines += [heading("Changes"), "", table(["", "where", "what"], rows, text_columns=(0, 1, 2)), ""]
        shift = _index_shift(d, arrow)
        if shift:
            lines += [f"shifted sublayers (A {arrow} B, unchanged): {shift}", ""]
    if d.different or d.costs.changed:
        lines += [heading(f"Costs (B - A; forward FLOPs counting {d.convention.causal_attention} "
                          "attention pairs)"), "",
                  table(["", "A", "B", "delta", "%"], _cost_rows(d)), ""]
        headers, rows = _type_rows(d, arrow)
        if rows:
            lines += [heading("By component type (changed only)"), "",
                      table(headers, rows, text_columns=(0, 1)), ""]
    if d.different or not d.compatibility.identical:
        head, rows = _compat_lines(d, arrow, limit=3, code=code)
        lines += [heading("Checkpoint compatibility"), "", head, "",
                  table(["kind", "tensors", "params", "e.g."], rows, text_columns=(0, 3)), ""]
        if md:
            lines += _markdown_tensor_lists(d, code)
    if d.warnings:
        lines += [f"note: {w}" for w in d.warnings] + [""]
    if d.budgets:
        lines += [heading("Budgets"), ""]
        lines += [f"- {'CROSSED' if x.crossed else 'ok'}: {x.describe()}" for x in d.budgets]
    return "\n".join(lines).rstrip("\n") + "\n"


def _markdown_tensor_lists(d: SpecDiff, code, limit: int = 200) -> list[str]:
    c = d.compatibility
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
