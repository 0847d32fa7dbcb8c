"""Which sublayer of A is which sublayer of B, and which members of two matched sublayers
correspond (docs/diff.md, "Alignment rule").

A sublayer's key is the tuple of (type, symbol) of its members, A's symbols mapped through the
detected renames; its type key is the tuple of member types alone. The common prefix and suffix
of the two key sequences match as they are. The differing middle is aligned at minimum cost (an
edit distance, `_min_cost_steps`) with the costs below; beyond MAX_DP_CELLS pairs it is aligned
by difflib instead (`_difflib_steps`: fast, not minimal). Hyperparameters never take part.
"""
from __future__ import annotations

import difflib
from typing import Any

from ..spec import ComponentInstance, Sublayer

# alignment costs: matching keys 0; same member types, another symbol 2; other types 4; a
# sublayer added or removed 3. A type change (4) is cheaper than a removal plus an addition (6),
# so equal-length replaced runs pair up; an insertion (3) is cheaper than shifting everything.
COST_SYMBOL, COST_TYPE, COST_INDEL = 2, 4, 3
MAX_DP_CELLS = 1_000_000  # beyond this the middle is aligned by difflib (see docs/diff.md)

Step = tuple  # (i, j) matched, (i, None) removed from A, (None, j) added in B


def sublayer_key(sub: Sublayer, renames: dict[str, str]) -> tuple:
    """(type, symbol) of each member, symbols mapped through `renames`: what identifies it."""
    return tuple((m.type, renames.get(m.name, m.name)) for m in sub.members)


def type_key(sub: Sublayer) -> tuple:
    """The member types alone: equal type keys with other symbols cost less than other types."""
    return tuple(m.type for m in sub.members)


class _Keys:
    """Both sides' keys and type keys, and the cost of matching sublayer i of A with j of B."""

    def __init__(self, subs_a: list[Sublayer], subs_b: list[Sublayer], renames: dict[str, str]):
        self.a = [sublayer_key(s, renames) for s in subs_a]
        self.b = [sublayer_key(s, {}) for s in subs_b]
        self.types_a = [type_key(s) for s in subs_a]
        self.types_b = [type_key(s) for s in subs_b]

    def cost(self, i: int, j: int) -> int:
        if self.a[i] == self.b[j]:
            return 0
        return COST_SYMBOL if self.types_a[i] == self.types_b[j] else COST_TYPE

    def common_ends(self) -> tuple[int, int]:
        """Lengths of the common prefix and of the common suffix (not overlapping it)."""
        n, m = len(self.a), len(self.b)
        lo = 0
        while lo < min(n, m) and self.a[lo] == self.b[lo]:
            lo += 1
        hi = 0
        while hi < min(n, m) - lo and self.a[n - 1 - hi] == self.b[m - 1 - hi]:
            hi += 1
        return lo, hi


def align(subs_a: list[Sublayer], subs_b: list[Sublayer], renames: dict[str, str]):
    """(matched pairs, added B indices, removed A indices, pairs whose types differ).

    The common prefix and suffix of the (type, symbol) keys match as they are; the middle is a
    minimum-cost alignment (edit distance with the costs above; on ties, earlier sublayers
    match and the additions or removals come last)."""
    keys = _Keys(subs_a, subs_b, renames)
    n, m = len(keys.a), len(keys.b)
    lo, hi = keys.common_ends()
    mid_a, mid_b = range(lo, n - hi), range(lo, m - hi)
    steps = (_min_cost_steps(keys, mid_a, mid_b) if len(mid_a) * len(mid_b) <= MAX_DP_CELLS
             else _difflib_steps(keys, mid_a, mid_b))
    pairs = [(i, i) for i in range(lo)] + [(n - hi + k, m - hi + k) for k in range(hi)]
    added, removed, retyped = [], [], set()
    for i, j in steps:
        if i is None:
            added.append(j)
        elif j is None:
            removed.append(i)
        else:
            pairs.append((i, j))
            if keys.types_a[i] != keys.types_b[j]:
                retyped.add((i, j))
    return sorted(pairs), added, removed, retyped


def _min_cost_steps(keys: _Keys, rows: range, cols: range) -> list[Step]:
    """Minimum-cost alignment of A's sublayers `rows` with B's `cols`, as steps."""
    cost = _suffix_costs(keys, rows, cols)
    n, m = len(rows), len(cols)
    steps, x, y = [], 0, 0
    while x < n or y < m:  # follow the cheapest path, preferring a match, then a removal
        if x < n and y < m and cost[x][y] == keys.cost(rows[x], cols[y]) + cost[x + 1][y + 1]:
            steps.append((rows[x], cols[y]))
            x, y = x + 1, y + 1
        elif x < n and cost[x][y] == COST_INDEL + cost[x + 1][y]:
            steps.append((rows[x], None))
            x += 1
        else:
            steps.append((None, cols[y]))
            y += 1
    return steps


def _suffix_costs(keys: _Keys, rows: range, cols: range) -> list[list[int]]:
    """cost[x][y]: the cheapest alignment of the suffixes rows[x:] and cols[y:]."""
    n, m = len(rows), len(cols)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for y in range(m - 1, -1, -1):
        cost[n][y] = cost[n][y + 1] + COST_INDEL
    for x in range(n - 1, -1, -1):
        row, below = cost[x], cost[x + 1]
        row[m] = below[m] + COST_INDEL
        i = rows[x]
        for y in range(m - 1, -1, -1):
            row[y] = min(keys.cost(i, cols[y]) + below[y + 1], COST_INDEL + below[y],
                         COST_INDEL + row[y + 1])
    return cost


def _difflib_steps(keys: _Keys, rows: range, cols: range) -> list[Step]:
    """For very long differing runs: difflib on the keys, differing runs again on member types;
    equal-length replaced runs pair up, the rest is added / removed."""
    steps: list[Step] = []
    outer = difflib.SequenceMatcher(None, [keys.a[i] for i in rows], [keys.b[j] for j in cols],
                                    autojunk=False)
    for tag, i1, i2, j1, j2 in outer.get_opcodes():
        ia, ib = rows[i1:i2], cols[j1:j2]
        steps += list(zip(ia, ib)) if tag == "equal" else _difflib_by_type(keys, ia, ib)
    return steps


def _difflib_by_type(keys: _Keys, ia: range, ib: range) -> list[Step]:
    inner = difflib.SequenceMatcher(None, [keys.types_a[i] for i in ia],
                                    [keys.types_b[j] for j in ib], autojunk=False)
    steps: list[Step] = []
    for tag, p1, p2, q1, q2 in inner.get_opcodes():
        xa, xb = ia[p1:p2], ib[q1:q2]
        if tag == "equal" or (tag == "replace" and len(xa) == len(xb)):
            steps += zip(xa, xb)
        else:
            steps += [(i, None) for i in xa] + [(None, j) for j in xb]
    return steps


def pair_members(ma: list[ComponentInstance], mb: list[ComponentInstance],
                 renames: dict[str, str]) -> list[tuple]:
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
