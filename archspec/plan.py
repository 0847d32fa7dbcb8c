"""Stage 3: the plan. A resolved spec becomes, once, the ordered list of the model's nodes; every
later stage (accounting, graph, report, build, diff, the CLI) iterates it, and nobody else
formats or parses node names.

    embedding                         role 'embedding'   module 'embedding'
    for each sublayer i:
        sublayers.i.norm              role 'norm'        module 'sublayers.i.norm'
        sublayers.i.<symbol>          role 'member'      module 'sublayers.i.members.<symbol>'
        sublayers.i.residual          role 'residual'    module 'sublayers.i' (the gates of a
                                                         parallel group: 'sublayers.i.gates')
    shared.<key>                      role 'shared'      module 'shared.<key>' (weights several
                                                         members read; counted and saved once)
    final_norm                        role 'final_norm'  module 'final_norm'
    lm_head                           role 'head'        module 'lm_head'

The embedding, head and residual are the components registered with those roles; no stage names
a component type. A node's `symbol` is how a user names it (a component's name in the spec;
'model.norm' for every norm): what a `backend` dict and the CLI's summaries use.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .components import REGISTRY
from .spec import NORM_NAME, ComponentInstance, ResolvedSpec

EMBEDDING, NORM, MEMBER, RESIDUAL, SHARED, FINAL_NORM, HEAD, CHILD = (
    "embedding", "norm", "member", "residual", "shared", "final_norm", "head", "child")
ROLES = (EMBEDDING, NORM, MEMBER, RESIDUAL, SHARED, FINAL_NORM, HEAD)  # the plan's own nodes
CONFIGURABLE = (NORM, MEMBER, FINAL_NORM)  # nodes whose backend the spec or the caller chooses


@dataclass(slots=True)
class Node:
    """One node of the model: a component instance at one place. Read-only by convention (not
    frozen: a plan of a 100k-sublayer layout builds 300k of them, and frozen dataclasses build
    several times slower)."""

    name: str  # 'sublayers.3.A': the report's and the graph's name
    role: str  # one of ROLES
    instance: ComponentInstance
    module_path: str  # where its parameters live in the built model: 'sublayers.3.members.A'
    sublayer: int | None = None
    symbol: str | None = None  # the spec's name for it ('A', 'model.norm'); None: not the user's
    shared_key: str | None = None  # role 'shared': the key of the weights it holds
    reads_shared: tuple[str, ...] = ()  # keys of the shared weights a member reads
    # components this one is built from (Component.children), role 'child': their parameters
    # and costs are part of this node's; the graph draws them
    children: tuple["Node", ...] = ()

    @property
    def type(self) -> str:
        return self.instance.type

    @property
    def component(self):
        return self.instance.component

    def param_name(self, local: str) -> str:
        """A parameter's full name in the built model's named_parameters()."""
        return f"{self.module_path}.{local}"


@dataclass
class Plan:
    spec: ResolvedSpec
    nodes: list[Node]
    by_name: dict[str, Node] = field(init=False, repr=False)

    def __post_init__(self):
        self.by_name = {n.name: n for n in self.nodes}

    def __iter__(self):
        return iter(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self.by_name[name]

    def with_role(self, *roles: str) -> list[Node]:
        return [n for n in self.nodes if n.role in roles]

    def of_sublayer(self, index: int) -> list[Node]:
        return [n for n in self.nodes if n.sublayer == index]

    def members(self, index: int) -> list[Node]:
        return [n for n in self.of_sublayer(index) if n.role == MEMBER]

    @property
    def configurable(self) -> list[Node]:
        """Nodes whose backend is chosen (norms and sublayer members), in model order."""
        return self.with_role(*CONFIGURABLE)


def plan(spec: ResolvedSpec) -> Plan:
    """The ordered nodes of the model a spec describes (module docstring)."""
    model = spec.model
    nodes = [Node("embedding", EMBEDDING, _model_part("embedding", {}), "embedding")]
    owners: dict[str, ComponentInstance] = {}
    # per instance, computed once however many sublayers use it (cost stays linear in the layout)
    shared_keys: dict[int, tuple[str, ...]] = {}
    residuals: dict[int, ComponentInstance] = {}
    for sub in spec.sublayers:
        prefix = sublayer_path(sub.index)
        nodes.append(Node(f"{prefix}.norm", NORM, spec.norm, f"{prefix}.norm", sub.index, NORM_NAME))
        for m in sub.members:
            if id(m) not in shared_keys:
                shared_keys[id(m)] = tuple(m.component.shared_params(m.config, model))
            keys = shared_keys[id(m)]
            for key in keys:
                owners.setdefault(key, m)
            name, path = f"{prefix}.{m.name}", member_path(sub.index, m.name)
            nodes.append(Node(name, MEMBER, m, path, sub.index, m.name, reads_shared=keys,
                              children=_children(m, model, name, path, sub.index)))
        n = len(sub.members)
        if n not in residuals:
            residuals[n] = _model_part("residual", {"gated": n > 1, "members": n})
        nodes.append(Node(f"{prefix}.residual", RESIDUAL, residuals[n], prefix, sub.index))
    nodes += [Node(shared_path(key), SHARED, inst, shared_path(key), shared_key=key)
              for key, inst in owners.items()]
    nodes.append(Node("final_norm", FINAL_NORM, spec.norm, "final_norm", symbol=NORM_NAME))
    nodes.append(Node("lm_head", HEAD, _model_part("head", {"tied": model.tie_embeddings}), "lm_head"))
    return Plan(spec, nodes)


def _children(inst: ComponentInstance, model, name: str, path: str, sublayer: int) -> tuple[Node, ...]:
    """The child nodes of an instance (and theirs), named and placed under it."""
    out = []
    for key, c in inst.component.children(inst.config, model).items():
        child_inst = ComponentInstance(key, c.type, c.config, "reference")
        child_name, child_path = f"{name}.{key}", f"{path}.{key}"
        out.append(Node(child_name, CHILD, child_inst, child_path, sublayer,
                        children=_children(child_inst, model, child_name, child_path, sublayer)))
    return tuple(out)


def _model_part(role: str, config: dict) -> ComponentInstance:
    """The instance of the one component type registered with `role` (embedding, head, residual)."""
    (type_name,) = [t for t, c in REGISTRY.items() if c.role == role]
    return ComponentInstance(role if role != "head" else "lm_head", type_name, config)


def sublayer_path(index: int) -> str:
    return f"sublayers.{index}"


def member_path(index: int, symbol: str) -> str:
    return f"{sublayer_path(index)}.members.{symbol}"


def shared_path(key: str) -> str:
    return f"shared.{key}"
