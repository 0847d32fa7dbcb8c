"""Stage 4: the component graph. A networkx DiGraph, embedding -> sublayers -> final norm ->
head, whose nodes carry the resolved config and accounting; exported as JSON or Graphviz DOT.

Each sublayer i is three kinds of node: `sublayers.i.norm`, one node per member
(`sublayers.i.A`) and `sublayers.i.residual` (the add, with the gates of a parallel group);
a feed sublayer (feed_block) is its member alone, with a data edge into the next norm.
Edges have kind 'data', 'residual' (the skip connection around the sublayer), 'shared' (from
a `shared.<key>` node, weights stored once, to each member that reads them) or 'child' (from a
member to a component it is built from, e.g. MoE's shared experts `sublayers.i.E.shared`; such a
node is `included_in` its parent, whose figures already hold it: sum only nodes without it).
"""
from __future__ import annotations

import json
import math

import networkx as nx

from .accounting import Accounting, account
from .plan import EMBEDDING, FINAL_NORM, HEAD, MEMBER, NORM, POST_NORM, RESIDUAL, SHARED, Node, Plan
from .spec import ResolvedSpec


def component_graph(spec: ResolvedSpec, acc: Accounting | None = None) -> nx.DiGraph:
    """The model's nodes (the plan's, with their accounting) and the edges between them."""
    acc = acc or account(spec)
    g = nx.DiGraph(name=spec.name, seq_len=acc.seq_len, layout=spec.layout_text)
    for p in acc.parts:
        node = p.node
        config = {**node.instance.config, "backend": node.instance.backend} if node.role == MEMBER \
            else {"key": node.shared_key} if node.role == SHARED else dict(node.instance.config)
        g.add_node(node.name, type=node.type, role=node.role, sublayer=node.sublayer, config=config,
                   params=p.cost.params, active_params=p.cost.active_params,
                   flops_per_token=p.cost.flops.total / acc.seq_len, state_bytes=p.cost.state_bytes)
    for a, b, kind in _edges(acc.plan):
        g.add_edge(a, b, kind=kind)
    for node in acc.plan.with_role(MEMBER):
        _add_children(g, node, spec.model, acc)
    return g


def _add_children(g: nx.DiGraph, parent: Node, model, acc: Accounting) -> None:
    """Each component a node is built from, as a node `included_in` it (its parameters and
    FLOPs are already in the parent's figures) with a 'child' edge from the parent."""
    for node in parent.children:
        comp, cfg = node.component, node.instance.config
        g.add_node(node.name, type=node.type, role=node.role, sublayer=node.sublayer, config=dict(cfg),
                   params=sum(math.prod(s) for s in comp.param_shapes(cfg, model).values()),
                   active_params=comp.active_param_count(cfg, model),
                   flops_per_token=comp.flops(cfg, model, acc.seq_len, acc.convention).total / acc.seq_len,
                   state_bytes=comp.state_bytes(cfg, model, acc.seq_len), included_in=parent.name)
        g.add_edge(parent.name, node.name, kind="child")
        _add_children(g, node, model, acc)


def _edges(the_plan: Plan):
    """(from, to, kind) in model order: the data path, each sublayer's skip connection, and the
    shared weights to each member that reads them."""
    prev = the_plan.with_role(EMBEDDING)[0].name
    feed = None  # a feed sublayer's member: its output goes into the next norm's input
    for sub in the_plan.spec.sublayers:
        nodes = the_plan.of_sublayer(sub.index)
        if not any(n.role == NORM for n in nodes):
            (feed,) = [n.name for n in nodes if n.role == MEMBER]
            yield prev, feed, "data"
            continue
        (norm,) = [n.name for n in nodes if n.role == NORM]
        if feed is not None:
            yield feed, norm, "data"
            feed = None
        (res,) = [n.name for n in nodes if n.role == RESIDUAL]
        yield prev, norm, "data"
        post = [n.name for n in nodes if n.role == POST_NORM]
        for member in (n for n in nodes if n.role == MEMBER):
            yield norm, member.name, "data"
            yield member.name, (post or [res])[0], "data"
        if post:
            yield post[0], res, "data"
        yield prev, res, "residual"
        prev = res
    (final,) = the_plan.with_role(FINAL_NORM)
    yield prev, final.name, "data"
    if feed is not None:
        yield feed, final.name, "data"
    shared = {n.shared_key: n.name for n in the_plan.with_role(SHARED)}
    for member in the_plan.with_role(MEMBER):
        for key in member.reads_shared:
            yield shared[key], member.name, "shared"
    yield final.name, the_plan.with_role(HEAD)[0].name, "data"


def to_json(g: nx.DiGraph) -> str:
    data = nx.node_link_data(g, edges="edges")
    return json.dumps(data, indent=2, default=str)


def to_dot(g: nx.DiGraph) -> str:
    lines = [f'digraph "{_esc(g.graph.get("name", "model"))}" {{', "  rankdir=TB;",
             '  node [shape=box, fontname="Helvetica", fontsize=10];']
    for n, attrs in g.nodes(data=True):
        parts = [n, attrs["type"]] + ([f"{attrs['params']:,} params"] if attrs["params"] else [])
        label = "\\n".join(_esc(part) for part in parts)  # DOT's \n: a line break in the label
        shape = "ellipse" if attrs["role"] == RESIDUAL else "box"
        lines.append(f'  "{_esc(n)}" [label="{label}", shape={shape}];')
    for a, b, attrs in g.edges(data=True):
        style = {"residual": ' [style=dashed, label="residual"]',
                 "shared": ' [style=dotted, label="shared"]',
                 "child": ' [style=dotted, arrowhead=diamond, label="part of"]'}.get(attrs.get("kind"), "")
        lines.append(f'  "{_esc(a)}" -> "{_esc(b)}"{style};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(s) -> str:
    """A DOT double-quoted string's contents: backslashes and quotes escaped, line breaks as spaces."""
    s = str(s).replace("\\", "\\\\").replace('"', '\\"')
    return s.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
