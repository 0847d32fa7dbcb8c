"""Stage 4: analytic accounting of a plan, per node (component instance), per sublayer and
in total: parameters (total, active, embedding, head, non-embedding), forward and training
FLOPs, inference state and a training activation-memory estimate.

Conventions (also printed by the report):
  * 1 FLOP is one multiply or one add; a multiply-accumulate (MAC) is 2 FLOPs.
  * Forward FLOPs are for one sequence of `seq_len` tokens, reported per token (divided by
    seq_len). Causal attention counts the query-key pairs the mask keeps, T(T+1)/2 per head
    (`causal_attention='dense'` counts T^2 as FlopCounterMode does).
  * Training FLOPs per token = 3 x forward (the backward pass costs twice the forward).
  * Embedding parameters = the token embedding (and the learned position table, with
    model: learned_positions); head = the untied LM head (0 when tied);
    non-embedding = total - embedding - head. Tied weights are counted once.
  * Inference state: bytes kept per sequence after seq_len tokens (KV cache, recurrent state).
  * Activation memory: bytes the reference path saves for backward, per sequence, without
    recomputation (an estimate; see each component's activation_bytes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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


def sum_costs(costs) -> Cost:
    """The sum of Costs: each distinct Cost object (parts of one instance share one) counted
    and multiplied, not added once per part."""
    counts: dict[int, list] = {}
    for c in costs:
        entry = counts.get(id(c))
        if entry is None:
            counts[id(c)] = [c, 1]
        else:
            entry[1] += 1
    params = active = matmul = attention = other = state = activation = 0
    for c, n in counts.values():
        params += n * c.params
        active += n * c.active_params
        matmul += n * c.flops.matmul
        attention += n * c.flops.attention
        other += n * c.flops.other
        state += n * c.state_bytes
        activation += n * c.activation_bytes
    return Cost(params, active, Flops(matmul, attention, other), state, activation)


@dataclass(slots=True)  # one per node: a deep model has hundreds of thousands
class PartCost:
    """A row of the report: one node of the plan. Its parameter shapes are listed when asked
    (the report needs only their count; a diff's checkpoint map asks), once per instance."""

    node: Node
    cost: Cost
    shapes_of: Callable[[], dict[str, tuple[int, ...]]] = field(repr=False)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.shapes_of()

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
        return sum_costs(p.cost for p in self.parts)

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
        """Each sublayer's cost (its norm, members and residual), in one pass over the parts.
        Sublayers made of the same instances have the same cost: each such combination is
        summed once, and its sublayers share the result."""
        of_sublayer: list[list[Cost]] = [[] for _ in self.spec.sublayers]
        for p in self.parts:
            if p.node.sublayer is not None:
                of_sublayer[p.node.sublayer].append(p.cost)
        sums: dict[tuple, Cost] = {}
        out = []
        for costs in of_sublayer:
            key = tuple(map(id, costs))
            if key not in sums:
                sums[key] = sum_costs(costs)
            out.append(sums[key])
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
    # one computation per distinct instance: the sublayers that use a component unchanged share
    # its instance (and so its cost and shapes, which nobody changes), so a layout thousands of
    # sublayers deep costs a few computations, not one per node
    costs: dict[int, tuple[Cost, Callable]] = {}
    parts = [_shared_part(node, spec.model, active) if node.role == SHARED
             else _part(node, spec.model, t, convention, costs) for node in the_plan]
    return Accounting(spec, t, convention, parts, the_plan)


def _part(node: Node, model, seq_len: int, conv: FlopConvention, costs: dict) -> PartCost:
    """A node's cost; `costs` holds those computed already, by instance (its figures depend only
    on the instance's config, the model and seq_len)."""
    key = id(node.instance)
    if key not in costs:
        comp, cfg = node.component, node.instance.config
        costs[key] = (Cost(params=comp.param_count(cfg, model), active_params=comp.active_param_count(cfg, model),
                           flops=comp.flops(cfg, model, seq_len, conv),
                           state_bytes=comp.state_bytes(cfg, model, seq_len),
                           activation_bytes=comp.activation_bytes(cfg, model, seq_len)),
                      _once(lambda: comp.param_shapes(cfg, model)))
    cost, shapes_of = costs[key]
    return PartCost(node, cost, shapes_of)


def _once(fn: Callable[[], dict]) -> Callable[[], dict]:
    """fn, computed on the first call and remembered."""
    box: list = []

    def get() -> dict:
        if not box:
            box.append(fn())
        return box[0]
    return get


def _shared_part(node: Node, model, active: dict[str, int]) -> PartCost:
    """Shared weights, counted once each; their work is in the members that read them."""
    inst = node.instance
    shapes = dict(inst.component.shared_params(inst.config, model)[node.shared_key])
    return PartCost(node, Cost(params=numel(shapes), active_params=active[node.shared_key]), lambda: shapes)


def shared_active(the_plan: Plan) -> dict[str, int]:
    """Per shared key: parameters used per token, summed over its readers, capped at its size."""
    model = the_plan.spec.model
    used: dict[str, int] = {}
    per_instance: dict[int, list] = {}  # (key, size, used per reader) of each distinct instance
    for node in the_plan.with_role(MEMBER):
        if not node.reads_shared:
            continue
        comp, cfg = node.component, node.instance.config
        if id(node.instance) not in per_instance:
            per_instance[id(node.instance)] = [
                (key, numel(shapes), comp.shared_active_param_count(key, cfg, model))
                for key, shapes in comp.shared_params(cfg, model).items()]
        for key, size, reads in per_instance[id(node.instance)]:
            used[key] = min(size, used.get(key, 0) + reads)
    return used


def training_flops_per_token(acc: Accounting) -> float:
    return TRAIN_FLOPS_FACTOR * acc.total().flops.total / acc.seq_len
