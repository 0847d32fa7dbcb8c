"""Stage 4: analytic accounting of a plan, per node (component instance), per sublayer and
in total: parameters (total, active, embedding, head, non-embedding), forward and training
FLOPs, inference state and a training activation-memory estimate.

Conventions (also printed by the report):
  * 1 FLOP is one multiply or one add; a multiply-accumulate (MAC) is 2 FLOPs.
  * Forward FLOPs are for one sequence of `seq_len` tokens, reported per token (divided by
    seq_len). Causal attention counts the query-key pairs the mask keeps, T(T+1)/2 per head
    (`causal_attention='dense'` counts T^2 as FlopCounterMode does).
  * Training FLOPs per token = 3 x forward (the backward pass costs twice the forward).
  * Embedding parameters = the token embedding; head = the untied LM head (0 when tied);
    non-embedding = total - embedding - head. Tied weights are counted once.
  * Inference state: bytes kept per sequence after seq_len tokens (KV cache, recurrent state).
  * Activation memory: bytes the reference path saves for backward, per sequence, without
    recomputation (an estimate; see each component's activation_bytes).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from .components.base import FlopConvention, Flops, numel
from .plan import EMBEDDING, HEAD, MEMBER, SHARED, Node, Plan, plan
from .spec import ResolvedSpec

TRAIN_FLOPS_FACTOR = 3


@dataclass
class Cost:
    """Accounting of one part of the model at one sequence length."""

    params: int = 0
    active_params: int = 0
    flops: Flops = field(default_factory=Flops)
    state_bytes: int = 0
    activation_bytes: int = 0

    def __add__(self, o: "Cost") -> "Cost":
        return Cost(self.params + o.params, self.active_params + o.active_params, self.flops + o.flops,
                    self.state_bytes + o.state_bytes, self.activation_bytes + o.activation_bytes)


def sum_costs(costs: Iterable[Cost]) -> Cost:
    """The sum of many costs, most of them the same objects (every sublayer using an instance
    shares its Cost): each distinct one is multiplied by its count, so a long layout sums in one
    cheap pass. Integers only, so the result is exact."""
    costs = list(costs)
    counts = Counter(map(id, costs))
    distinct = {id(c): c for c in costs}

    def total(get) -> int:
        return sum(n * get(distinct[k]) for k, n in counts.items())

    return Cost(total(lambda c: c.params), total(lambda c: c.active_params),
                Flops(total(lambda c: c.flops.matmul), total(lambda c: c.flops.attention),
                      total(lambda c: c.flops.other)),
                total(lambda c: c.state_bytes), total(lambda c: c.activation_bytes))


@dataclass
class PartCost:
    """A row of the report: one node of the plan."""

    node: Node
    cost: Cost
    param_shapes: dict[str, tuple[int, ...]]

    @property
    def name(self) -> str:  # e.g. 'embedding', 'sublayers.3.A', 'sublayers.3.norm'
        return self.node.name

    @property
    def type(self) -> str:
        return self.node.type

    @property
    def role(self) -> str:
        return self.node.role

    @property
    def sublayer(self) -> int | None:
        return self.node.sublayer

    @property
    def module_path(self) -> str:  # where its parameters live in the built model
        return self.node.module_path


@dataclass
class Accounting:
    spec: ResolvedSpec
    seq_len: int
    convention: FlopConvention
    parts: list[PartCost]
    plan: Plan

    def total(self) -> Cost:
        return sum_costs([p.cost for p in self.parts])

    def params_of_type(self, type_name: str) -> int:
        """Parameters of the nodes of one component type (shared weights count with their type)."""
        return sum(p.cost.params for p in self.parts if p.type == type_name)

    def params_of_role(self, role: str) -> int:
        return sum(p.cost.params for p in self.parts if p.role == role)

    @property
    def embedding_params(self) -> int:
        return self.params_of_role(EMBEDDING)

    @property
    def head_params(self) -> int:
        return self.params_of_role(HEAD)

    def sublayer_costs(self) -> list[Cost]:
        """Each sublayer's cost (its norm, members and residual), in one pass over the parts."""
        members: list[list[Cost]] = [[] for _ in self.spec.sublayers]
        for p in self.parts:
            if p.sublayer is not None:
                members[p.sublayer].append(p.cost)
        summed: dict[tuple, Cost] = {}  # sublayers made of the same costs sum once
        out = []
        for costs in members:
            key = tuple(map(id, costs))
            if key not in summed:
                summed[key] = sum_costs(costs)
            out.append(summed[key])
        return out

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter of the built model by its full name in `named_parameters()`."""
        return {p.node.param_name(k): s for p in self.parts for k, s in p.param_shapes.items()}


def account(spec: ResolvedSpec, seq_len: int | None = None,
            convention: FlopConvention = FlopConvention(), the_plan: Plan | None = None) -> Accounting:
    """Accounting of every node of the model at `seq_len` (default: the model's max_seq_len)."""
    t = spec.model.max_seq_len if seq_len is None else seq_len
    if not isinstance(t, int) or isinstance(t, bool) or t < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    the_plan = the_plan or plan(spec)
    active = shared_active(the_plan)
    costs: dict[int, tuple[Cost, dict]] = {}  # by instance: every sublayer using it costs the same
    parts = []
    for node in the_plan:
        if node.role == SHARED:
            parts.append(_shared_part(node, spec.model, active))
            continue
        key = id(node.instance)
        if key not in costs:
            costs[key] = _cost(node, spec.model, t, convention)
        parts.append(PartCost(node, *costs[key]))
    return Accounting(spec, t, convention, parts, the_plan)


def _cost(node: Node, model, seq_len: int, conv: FlopConvention) -> tuple[Cost, dict]:
    """One instance's cost and parameter shapes (shared, read-only, by the nodes that use it)."""
    comp, cfg = node.component, node.instance.config
    shapes = comp.param_shapes(cfg, model)
    cost = Cost(params=numel(shapes), active_params=comp.active_param_count(cfg, model),
                flops=comp.flops(cfg, model, seq_len, conv),
                state_bytes=comp.state_bytes(cfg, model, seq_len),
                activation_bytes=comp.activation_bytes(cfg, model, seq_len))
    return cost, shapes


def _shared_part(node: Node, model, active: dict[str, int]) -> PartCost:
    """Shared weights, counted once each; their work is in the members that read them."""
    inst = node.instance
    shapes = dict(inst.component.shared_params(inst.config, model)[node.shared_key])
    return PartCost(node, Cost(params=numel(shapes), active_params=active[node.shared_key]), shapes)


def shared_active(the_plan: Plan) -> dict[str, int]:
    """Per shared key: parameters used per token, summed over its readers, capped at its size."""
    model = the_plan.spec.model
    used: dict[str, int] = {}
    for node in the_plan.with_role(MEMBER):
        if not node.reads_shared:
            continue
        comp, cfg = node.component, node.instance.config
        for key, shapes in comp.shared_params(cfg, model).items():
            used[key] = min(numel(shapes), used.get(key, 0) + comp.shared_active_param_count(key, cfg, model))
    return used


def training_flops_per_token(acc: Accounting) -> float:
    return TRAIN_FLOPS_FACTOR * acc.total().flops.total / acc.seq_len
