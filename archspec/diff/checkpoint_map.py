"""Which of A's parameter tensors a warm start can load into B, and under which names.

Each part of A maps to the part of B in the same role: model parts (embedding, final norm, LM
head, shared weights) by name; a matched sublayer's norm, its gates and its members of the same
type through the alignment. Each mapped tensor is then unchanged, renamed or reshaped by its
name and shape in B; the rest of A's are removed, the rest of B's new. Shapes come from the
analytic accounting, which equals the built modules' exactly (tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..accounting import Accounting
from ..plan import MEMBER, NORM, POST_NORM, RESIDUAL, Node, Plan

COMPAT_KINDS = ("unchanged", "renamed", "reshaped", "new", "removed")
_SHAPE_COLUMN = {"unchanged": 1, "renamed": 2, "reshaped": 3, "new": 1, "removed": 1}  # B's shape


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
    owners: dict[str, str]  # every tensor's name (A's and B's) -> the module holding it

    def mapping(self) -> dict[str, str]:
        """A's name -> B's name for every tensor that loads unchanged (same shape)."""
        return {**{n: n for n, _ in self.unchanged}, **{a: b for a, b, _ in self.renamed}}

    def warm_start(self, state_dict_a: dict) -> dict:
        """B's state-dict entries filled from A's: load with `load_state_dict(..., strict=False)`;
        the missing keys are exactly the new and reshaped tensors. Tensors are cast to B's dtype."""
        import torch

        from ..components.modules import TORCH_DTYPES
        dtype = TORCH_DTYPES[self.dtype_b]
        out = {}
        for a, b in self.mapping().items():
            t = state_dict_a[a]
            out[b] = t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        return out

    def count(self, kind: str) -> tuple[int, int]:
        """(tensors, parameters) of one kind; reshaped counts B's shapes."""
        rows = getattr(self, kind)
        return len(rows), sum(math.prod(r[_SHAPE_COLUMN[kind]]) for r in rows)

    @property
    def reusable_params(self) -> int:
        return self.count("unchanged")[1] + self.count("renamed")[1]

    @property
    def params_b(self) -> int:
        return sum(self.count(k)[1] for k in ("unchanged", "renamed", "reshaped", "new"))

    @property
    def params_a(self) -> int:
        return (self.count("unchanged")[1] + self.count("renamed")[1] + self.count("removed")[1]
                + sum(math.prod(r[2]) for r in self.reshaped))

    @property
    def identical(self) -> bool:
        return not (self.renamed or self.reshaped or self.new or self.removed)


def compatibility(acc_a: Accounting, acc_b: Accounting, pairs, member_pairs) -> Compatibility:
    """Map each of A's nodes to the node of B in the same role (model parts by name; a matched
    sublayer's norm, residual gates and same-type members through the alignment), then compare
    the shapes of their parameters."""
    b_of_a = dict(pairs)
    targets = _node_targets(acc_a.plan, acc_b.plan, member_pairs)
    sorting = _Sorting(acc_b.param_shapes())
    for part in acc_a.parts:
        if part.sublayer is None:
            to = acc_b.plan.by_name.get(part.name)
        else:
            to = targets.get(part.name) if part.sublayer in b_of_a else None
        for key, shape in part.param_shapes.items():
            sorting.add(part.node.param_name(key), to.param_name(key) if to is not None else None, tuple(shape))
    owners = {p.node.param_name(k): p.module_path for acc in (acc_a, acc_b) for p in acc.parts
              for k in p.param_shapes}
    return sorting.result(acc_a.spec.model.dtype, acc_b.spec.model.dtype, owners)


class _Sorting:
    """A's tensors sorted into kinds by the name each maps to in B (None: no counterpart)."""

    def __init__(self, shapes_b: dict[str, tuple]):
        self.shapes_b = shapes_b
        self.unchanged, self.renamed, self.reshaped, self.removed = [], [], [], []
        self.taken: set[str] = set()

    def add(self, name: str, new_name: str | None, shape: tuple) -> None:
        if new_name is None or new_name not in self.shapes_b:
            self.removed.append((name, shape))
            return
        self.taken.add(new_name)
        b_shape = tuple(self.shapes_b[new_name])
        if b_shape != shape:
            self.reshaped.append((name, new_name, shape, b_shape))
        elif new_name == name:
            self.unchanged.append((name, b_shape))
        else:
            self.renamed.append((name, new_name, b_shape))

    def result(self, dtype_a: str, dtype_b: str, owners: dict[str, str]) -> Compatibility:
        """The kinds in B's parameter order (the built module's); B's untaken tensors are new."""
        new = [(n, tuple(s)) for n, s in self.shapes_b.items() if n not in self.taken]
        order = {n: k for k, n in enumerate(self.shapes_b)}
        self.renamed.sort(key=lambda r: order[r[1]])
        self.reshaped.sort(key=lambda r: order[r[1]])
        self.unchanged.sort(key=lambda r: order[r[0]])
        return Compatibility(self.unchanged, self.renamed, self.reshaped, new, self.removed,
                             dtype_a, dtype_b, owners)


def _node_targets(plan_a: Plan, plan_b: Plan, member_pairs: dict) -> dict[str, Node]:
    """A's node name -> B's node, for the nodes of every matched sublayer: its norm and residual
    (the gates), and each member paired with one of the same type."""
    targets: dict[str, Node] = {}
    for (i, j), mps in member_pairs.items():
        a_nodes, b_nodes = plan_a.of_sublayer(i), plan_b.of_sublayer(j)
        for role in (NORM, POST_NORM, RESIDUAL):
            found = [[n for n in nodes if n.role == role] for nodes in (a_nodes, b_nodes)]
            if all(found):  # a post norm (model: post_norm) maps when both models have one; a feed sublayer (plan.is_feed) has no norm or residual
                targets[found[0][0].name] = found[1][0]
        b_members = {n.symbol: n for n in b_nodes if n.role == MEMBER}
        for a in (n for n in a_nodes if n.role == MEMBER):
            for ma, mb in mps:
                if ma is not None and mb is not None and ma.name == a.symbol and ma.type == mb.type:
                    targets[a.name] = b_members[mb.name]
    return targets
