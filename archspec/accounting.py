"""Stage 4: analytic accounting of a resolved spec, per component instance, per sublayer and
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

from dataclasses import dataclass, field

from .components import get
from .components.base import FlopConvention, Flops, numel
from .spec import ResolvedSpec

TRAIN_FLOPS_FACTOR = 3
GATE_FLOPS_PER_ELEMENT = 2  # g_i * f_i(x), then the sum over members
RESIDUAL_FLOPS_PER_ELEMENT = 1


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


@dataclass
class PartCost:
    """A row of the report: one node of the graph."""

    name: str  # node name, e.g. 'embedding', 'sublayers.3.A', 'sublayers.3.norm'
    type: str
    module_path: str  # where its parameters live in the built model
    sublayer: int | None
    cost: Cost
    param_shapes: dict[str, tuple[int, ...]]


@dataclass
class Accounting:
    spec: ResolvedSpec
    seq_len: int
    convention: FlopConvention
    parts: list[PartCost]

    def total(self) -> Cost:
        out = Cost()
        for p in self.parts:
            out = out + p.cost
        return out

    def params_of_type(self, type_name: str) -> int:
        return sum(p.cost.params for p in self.parts if p.type == type_name)

    @property
    def embedding_params(self) -> int:
        return self.params_of_type("embedding")

    @property
    def head_params(self) -> int:
        return self.params_of_type("lm_head")

    def sublayer_cost(self, index: int) -> Cost:
        out = Cost()
        for p in self.parts:
            if p.sublayer == index:
                out = out + p.cost
        return out

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter of the built model by its full name in `named_parameters()`."""
        return {f"{p.module_path}.{k}": s for p in self.parts for k, s in p.param_shapes.items()}


def _cost(component, cfg, model, seq_len, conv, shapes=None) -> Cost:
    shapes = component.param_shapes(cfg, model) if shapes is None else shapes
    return Cost(params=numel(shapes), active_params=component.active_param_count(cfg, model),
                flops=component.flops(cfg, model, seq_len, conv),
                state_bytes=component.state_bytes(cfg, model, seq_len),
                activation_bytes=component.activation_bytes(cfg, model, seq_len))


def account(spec: ResolvedSpec, seq_len: int | None = None,
            convention: FlopConvention = FlopConvention()) -> Accounting:
    """Accounting of every part of the model at `seq_len` (default: the model's max_seq_len)."""
    model = spec.model
    t = model.max_seq_len if seq_len is None else seq_len
    if not isinstance(t, int) or t < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    parts: list[PartCost] = []

    def add(name, type_name, cfg, sublayer=None, module_path=None):
        comp = get(type_name)
        shapes = comp.param_shapes(cfg, model)
        cost = _cost(comp, cfg, model, t, convention, shapes)
        parts.append(PartCost(name, type_name, module_path or name, sublayer, cost, shapes))

    add("embedding", "embedding", {})
    for sub in spec.sublayers:
        prefix = f"sublayers.{sub.index}"
        add(f"{prefix}.norm", spec.norm.type, spec.norm.config, sub.index)
        for member in sub.members:
            add(f"{prefix}.{member.name}", member.type, member.config, sub.index,
                f"{prefix}.members.{member.name}")
        parts.append(_residual_part(prefix, sub, model, t))
    parts += _shared_parts(spec)
    add("final_norm", spec.norm.type, spec.norm.config)
    add("lm_head", "lm_head", {})
    return Accounting(spec, t, convention, parts)


def shared_active(spec: ResolvedSpec) -> dict[str, int]:
    """Per shared key: parameters used per token, summed over its users, capped at its size."""
    used: dict[str, int] = {}
    for sub in spec.sublayers:
        for m in sub.members:
            for key, shapes in m.component.shared_params(m.config, spec.model).items():
                used[key] = min(numel(shapes), used.get(key, 0)
                                + m.component.shared_active_param_count(key, m.config, spec.model))
    return used


def shared_owners(spec: ResolvedSpec) -> dict[str, tuple]:
    """Each shared-weight key -> (its first instance, the key's shapes), in layout order."""
    owners: dict[str, tuple] = {}
    for sub in spec.sublayers:
        for m in sub.members:
            for key, shapes in m.component.shared_params(m.config, spec.model).items():
                owners.setdefault(key, (m, shapes))
    return owners


def _shared_parts(spec: ResolvedSpec) -> list[PartCost]:
    """Shared weights, counted once each; their work is in the instances that use them."""
    parts = []
    active = shared_active(spec)
    for key, (inst, shapes) in shared_owners(spec).items():
        parts.append(PartCost(f"shared.{key}", inst.type, f"shared.{key}", None,
                              Cost(params=numel(shapes), active_params=active[key]), dict(shapes)))
    return parts


def _residual_part(prefix: str, sub, model, seq_len: int) -> PartCost:
    """The residual add, and for a parallel group its learned scalar gates [n_members]."""
    n = len(sub.members)
    elements = seq_len * model.d_model
    other = elements * RESIDUAL_FLOPS_PER_ELEMENT
    shapes: dict[str, tuple[int, ...]] = {}
    activation = 0
    if n > 1:
        shapes = {"gates": (n,)}
        other += elements * n * GATE_FLOPS_PER_ELEMENT - elements  # n products, n-1 sums
        member_outputs = n * elements * model.dtype_bytes  # kept for each gate's gradient
        # the members share their input h = norm(x): autograd saves it once, but each member's
        # own estimate counts it, so n - 1 copies come off here
        shared_input_recounted = (n - 1) * elements * model.dtype_bytes
        activation = member_outputs - shared_input_recounted
    cost = Cost(params=numel(shapes), active_params=numel(shapes), flops=Flops(other=other),
                activation_bytes=activation)
    return PartCost(f"{prefix}.residual", "residual", prefix, sub.index, cost, shapes)


def training_flops_per_token(acc: Accounting) -> float:
    return TRAIN_FLOPS_FACTOR * acc.total().flops.total / acc.seq_len
