"""What the change costs: parameters, forward FLOPs per token and inference state, A against B,
in total and per component type (as the report's `by_type`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..accounting import Accounting, Cost


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


Accounts = dict[int, Accounting]  # one accounting per sequence length


def cost_deltas(accs_a: Accounts, accs_b: Accounts, lens: tuple[int, ...]) -> Costs:
    """Totals and per-type figures of both sides; counts and parameters from the first length."""
    ta, tb = accs_a[lens[0]].total(), accs_b[lens[0]].total()
    return Costs(
        seq_lens=tuple(lens),
        params=CostDelta(ta.params, tb.params),
        active_params=CostDelta(ta.active_params, tb.active_params),
        flops_per_token={t: CostDelta(accs_a[t].total().flops.total / t, accs_b[t].total().flops.total / t)
                         for t in lens},
        state_bytes={t: CostDelta(accs_a[t].total().state_bytes, accs_b[t].total().state_bytes)
                     for t in lens},
        by_type=[_type_cost(typ, accs_a, accs_b, lens) for typ in _types(accs_a[lens[0]], accs_b[lens[0]])])


def _types(acc_a: Accounting, acc_b: Accounting) -> list[str]:
    """Every part type of A then of B, in first-seen order."""
    types: list[str] = []
    for p in acc_a.parts + acc_b.parts:
        if p.type not in types:
            types.append(p.type)
    return types


def _type_cost(typ: str, accs_a: Accounts, accs_b: Accounts, lens) -> TypeCost:
    first_a, first_b = accs_a[lens[0]], accs_b[lens[0]]

    def delta(acc_a: Accounting, acc_b: Accounting, what: Callable[[Cost], int]) -> CostDelta:
        return CostDelta(_sum(acc_a, typ, what), _sum(acc_b, typ, what))

    return TypeCost(
        type=typ,
        count=CostDelta(sum(p.type == typ for p in first_a.parts), sum(p.type == typ for p in first_b.parts)),
        params=delta(first_a, first_b, lambda c: c.params),
        active_params=delta(first_a, first_b, lambda c: c.active_params),
        flops_per_token={t: CostDelta(_sum(accs_a[t], typ, lambda c: c.flops.total) / t,
                                      _sum(accs_b[t], typ, lambda c: c.flops.total) / t) for t in lens},
        state_bytes={t: delta(accs_a[t], accs_b[t], lambda c: c.state_bytes) for t in lens})


def _sum(acc: Accounting, typ: str, what: Callable[[Cost], int]) -> int:
    return sum(what(p.cost) for p in acc.parts if p.type == typ)
