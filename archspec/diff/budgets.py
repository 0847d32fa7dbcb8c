"""Limits on the size of a change (`--max-params-delta`, `--max-flops-delta`): crossing one
makes the diff exit 4."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .costs import CostDelta, Costs
from .options import DiffOptionError
from .text import pct, signed

_SUFFIXES = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}


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
        return (f"{what} changed by {signed(self.delta.delta)} ({pct(self.delta)}): {verdict} "
                f"the budget of {self.budget.text}")


def budget_checks(costs: Costs, max_params, max_flops) -> list[BudgetCheck]:
    """One check for parameters, and one per sequence length for forward FLOPs per token."""
    out = []
    if max_params is not None:
        out.append(BudgetCheck("params", None, Budget.parse(max_params), costs.params))
    if max_flops is not None:
        budget = Budget.parse(max_flops)
        out += [BudgetCheck("forward_flops_per_token", t, budget, costs.flops_per_token[t])
                for t in costs.seq_lens]
    return out
