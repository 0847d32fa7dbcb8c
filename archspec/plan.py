"""Stage 3: the plan. A resolved spec becomes, once, the ordered list of the model's nodes; every
later stage (accounting, graph, report, build, diff, the CLI) iterates it, and nobody else
formats or parses node names.

    embedding                         role 'embedding'   module 'embedding'
    for each sublayer i:
        sublayers.i.norm              role 'norm'        module 'sublayers.i.norm'
        sublayers.i.<symbol>          role 'member'      module 'sublayers.i.members.<symbol>'
        sublayers.i.post_norm         role 'post_norm'   module 'sublayers.i.post_norm' (only with
                                                         model: post_norm, the sandwich norm)
        sublayers.i.residual          role 'residual'    module 'sublayers.i' (the gates of a
                                                         parallel group: 'sublayers.i.gates', or
                                                         token gates 'sublayers.i.gates.weight')
                                      (a feed sublayer, Component.feeds_next, has only its member:
                                      its output goes into the next sublayer's input)
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
from functools import lru_cache

from .components import REGISTRY
from .spec import NORM_NAME, ComponentInstance, ResolvedSpec

EMBEDDING, NORM, MEMBER, RESIDUAL, SHARED, FINAL_NORM, HEAD, CHILD = (
    "embedding", "norm", "member", "residual", "shared", "final_norm", "head", "child")
POST_NORM = "post_norm"
ROLES = (EMBEDDING, NORM, MEMBER, POST_NORM, RESIDUAL, SHARED, FINAL_NORM, HEAD)  # the plan's own nodes
CONFIGURABLE = (NORM, MEMBER, POST_NORM, FINAL_NORM)  # nodes whose backend the spec or the caller chooses


@dataclass(frozen=True, slots=True)  # slots: a deep model has hundreds of thousands of nodes
class Node:
    """One node of the model: a component instance at one place."""

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
    frozen: bool = False  # its parameters (its children's included) do not train (freeze.py)

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
    """The ordered nodes of the model a spec describes (module docstring). What a node's
    instance decides (its shared keys, its children's configs) is asked once per instance, and
    residuals of the same shape share one instance: a deep layout repeats a few instances, and
    the accounting computes each once."""
    model = spec.model
    freeze = set(spec.freeze)
    below = _frozen_below(freeze)
    nodes = [Node("embedding", EMBEDDING, _model_part("embedding", {}), "embedding",
                  frozen=EMBEDDING in freeze)]
    owners: dict[str, ComponentInstance] = {}
    shared_keys: dict[int, tuple[str, ...]] = {}
    children: dict[int, dict] = {}
    residuals: dict[tuple[bool, int, str], ComponentInstance] = {}
    for sub in spec.sublayers:
        prefix = sublayer_path(sub.index)
        feeds = is_feed(sub)
        if not feeds:
            nodes.append(Node(f"{prefix}.norm", NORM, spec.norm, f"{prefix}.norm", sub.index, NORM_NAME,
                              frozen="norms" in freeze))
        for m in sub.members:
            if id(m) not in shared_keys:
                shared_keys[id(m)] = tuple(m.component.shared_params(m.config, model))
                # a `share` group's instance holds no weights: its children live in shared.<key>
                children[id(m)] = {} if m.component.whole_share_key(m.config) else m.component.children(m.config, model)
            keys = shared_keys[id(m)]
            for key in keys:
                owners.setdefault(key, m)
            name, path = f"{prefix}.{m.name}", member_path(sub.index, m.name)
            nodes.append(Node(name, MEMBER, m, path, sub.index, m.name, reads_shared=keys,
                              children=_children(m, model, name, path, sub.index, children[id(m)],
                                                 below.get(m.name, frozenset())),
                              frozen=m.name in freeze))
        if feeds:
            continue
        if model.post_norm:
            nodes.append(Node(f"{prefix}.post_norm", POST_NORM, spec.norm, f"{prefix}.post_norm", sub.index,
                              NORM_NAME, frozen="norms" in freeze))
        shape = (sub.parallel, len(sub.members), sub.gates)
        if shape not in residuals:
            token = {"gate": sub.gates} if sub.gates != "scalar" else {}  # token gates (residual/spec.py)
            residuals[shape] = _model_part("residual", {"gated": shape[0], "members": shape[1], **token})
        nodes.append(Node(f"{prefix}.residual", RESIDUAL, residuals[shape], prefix, sub.index,
                          frozen="gates" in freeze))
    # shared weights freeze with their readers (validation makes those agree: freeze.py)
    nodes += [Node(shared_path(key), SHARED, inst, shared_path(key), shared_key=key, frozen=inst.name in freeze)
              for key, inst in owners.items()]
    nodes.append(Node("final_norm", FINAL_NORM, spec.norm, "final_norm", symbol=NORM_NAME,
                      frozen="norms" in freeze))
    nodes.append(Node("lm_head", HEAD, _model_part("head", {"tied": model.tie_embeddings}), "lm_head",
                      frozen=HEAD in freeze))
    return Plan(spec, nodes)


def is_feed(sub) -> bool:
    """Whether a sublayer is a feed (Component.feeds_next): its member reads the stream
    un-normed and its output is added to the next sublayer's input, so it has no norm and no
    residual node."""
    return any(m.component.feeds_next for m in sub.members)


def _children(inst: ComponentInstance, model, name: str, path: str, sublayer: int,
              of_instance: dict | None = None, frozen: frozenset = frozenset()) -> tuple[Node, ...]:
    """The child nodes of an instance (and theirs), named and placed under it; `of_instance`:
    the instance's children when already asked; `frozen`: the paths of its frozen children
    ('ffn', 'adapters.0'), whose own children freeze with them."""
    out = []
    kids = inst.component.children(inst.config, model) if of_instance is None else of_instance
    for key, c in kids.items():
        child_inst = ComponentInstance(key, c.type, c.config, "reference")
        child_name, child_path = f"{name}.{key}", f"{path}.{key}"
        below = frozenset(p[len(key) + 1:] for p in frozen if p.startswith(key + "."))
        out.append(Node(child_name, CHILD, child_inst, child_path, sublayer,
                        children=_children(child_inst, model, child_name, child_path, sublayer, frozen=below),
                        frozen=key in frozen))
    return tuple(out)


def _frozen_below(freeze: set[str]) -> dict[str, frozenset]:
    """Per symbol, the paths of its children a freeze list names (`D.ffn` -> {'D': {'ffn'}})."""
    out: dict[str, set] = {}
    for entry in freeze:
        symbol, dot, path = entry.partition(".")
        if dot:
            out.setdefault(symbol, set()).add(path)
    return {k: frozenset(v) for k, v in out.items()}


def _model_part(role: str, config: dict) -> ComponentInstance:
    """The instance of the one component type registered with `role` (embedding, head, residual)."""
    return ComponentInstance(role if role != "head" else "lm_head", _type_with_role(role), config)


@lru_cache(maxsize=None)
def _type_with_role(role: str) -> str:
    (type_name,) = [t for t, c in REGISTRY.items() if c.role == role]
    return type_name


def sublayer_path(index: int) -> str:
    return f"sublayers.{index}"


def member_path(index: int, symbol: str) -> str:
    return f"{sublayer_path(index)}.members.{symbol}"


def shared_path(key: str) -> str:
    return f"shared.{key}"
