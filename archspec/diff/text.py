"""How the diff writes numbers and values in text: signed deltas, percentages of A, config
values (shared by the rendering and the budget messages)."""
from __future__ import annotations

import json

from ..units import human
from .changes import ABSENT
from .costs import CostDelta


def signed(v: int | float, unit: str = "", exact: bool = True) -> str:
    """'+1,234' (exact integers), '+1.50M' (otherwise, or exact=False), '0'."""
    if v == 0:
        return "0"
    sign = "+" if v > 0 else "-"
    if exact and float(v).is_integer():
        return f"{sign}{abs(int(v)):,}"
    return f"{sign}{human(abs(v), unit)}"


def pct(d: CostDelta) -> str:
    """The change in percent of A: '+25.77%', '0%', or 'new' when A is 0."""
    p = d.pct
    if p is None:
        return "new"
    return "0%" if p == 0 else f"{p:+.2f}%"


def value(v) -> str:
    """A config value as the spec would write it; '(absent)' for a key one side lacks."""
    if v is ABSENT:
        return "(absent)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)
