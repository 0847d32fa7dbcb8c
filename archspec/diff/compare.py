"""The diff itself: `diff(a, b)` runs the stages and returns a SpecDiff."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..accounting import account
from ..costs import FlopConvention
from ..spec import ResolvedSpec, load
from .align import align, pair_members
from .budgets import Budget, BudgetCheck, budget_checks
from .changes import (ComponentChange, FieldChange, SublayerChange, component_changes,
                      model_changes, sublayer_changes)
from .checkpoint_map import Compatibility, compatibility
from .costs import Costs, cost_deltas
from .definitions import renames as find_renames
from .options import Ignore, check_ignore, check_seq_lens

EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE, EXIT_BUDGET = 0, 1, 2, 4


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


def diff(a: "ResolvedSpec | str | os.PathLike", b: "ResolvedSpec | str | os.PathLike",
         seq_lens: Sequence[int] | int | None = None, ignore: Iterable[str] = (),
         max_params_delta: "str | Budget | None" = None, max_flops_delta: "str | Budget | None" = None,
         convention: FlopConvention = FlopConvention()) -> SpecDiff:
    """Compare two specs (resolved, or paths to load). `seq_lens` defaults to the smaller
    max_seq_len; a length above either spec's max_seq_len is a DiffOptionError, as in `report`."""
    a = a if isinstance(a, ResolvedSpec) else load(a)
    b = b if isinstance(b, ResolvedSpec) else load(b)
    ignored = check_ignore(ignore)
    lens = check_seq_lens(a, b, seq_lens)
    skip = Ignore(ignored)
    accs_a = {t: account(a, t, convention) for t in lens}
    accs_b = {t: account(b, t, convention) for t in lens}
    renames = find_renames(a, b)
    pairs, added, removed, retyped = align(a.sublayers, b.sublayers, renames)
    member_pairs = {(i, j): pair_members(a.sublayers[i].members, b.sublayers[j].members, renames)
                    for i, j in pairs}
    costs = cost_deltas(accs_a, accs_b, lens)
    return SpecDiff(
        a=a, b=b, seq_lens=lens, ignore=ignored, convention=convention,
        model=model_changes(a, b, skip),
        components=component_changes(a, b, renames, skip),
        sublayers=sublayer_changes(a, b, pairs, added, removed, retyped, member_pairs, renames, skip),
        alignment=sorted(pairs),
        costs=costs,
        compatibility=compatibility(accs_a[lens[0]], accs_b[lens[0]], pairs, member_pairs),
        budgets=budget_checks(costs, max_params_delta, max_flops_delta),
        warnings=_warnings(a, b))


def _warnings(a: ResolvedSpec, b: ResolvedSpec) -> list[str]:
    if a.model.dtype != b.model.dtype:
        return [f"dtype {a.model.dtype} -> {b.model.dtype}: a warm start casts A's tensors"]
    return []
