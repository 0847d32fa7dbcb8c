"""Stage 3: the component graph. A networkx DiGraph, embedding -> sublayers -> final norm ->
head, whose nodes carry the resolved config and accounting; exported as JSON or Graphviz DOT.

Each sublayer i is three kinds of node: `sublayers.i.norm`, one node per member
(`sublayers.i.A`) and `sublayers.i.residual` (the add, with the gates of a parallel group).
Edges have kind 'data', 'residual' (the skip connection around the sublayer) or 'shared' (from
a `shared.<key>` node, weights stored once, to each member that reads them).
"""
from __future__ import annotations

import json

import networkx as nx

from .accounting import Accounting, account
from .spec import ResolvedSpec


def component_graph(spec: ResolvedSpec, acc: Accounting | None = None) -> nx.DiGraph:
    acc = acc or account(spec)
    g = nx.DiGraph(name=spec.name, seq_len=acc.seq_len, layout=spec.layout_text)
    configs = {"embedding": {}, "lm_head": {"tied": spec.model.tie_embeddings},
               "final_norm": spec.norm.config}
    for sub in spec.sublayers:
        configs[f"sublayers.{sub.index}.norm"] = spec.norm.config
        for m in sub.members:
            configs[f"sublayers.{sub.index}.{m.name}"] = {**m.config, "backend": m.backend}
        configs[f"sublayers.{sub.index}.residual"] = {"gated": sub.parallel}
    for p in acc.parts:
        g.add_node(p.name, type=p.type, sublayer=p.sublayer, config=configs.get(p.name, {}),
                   params=p.cost.params, active_params=p.cost.active_params,
                   flops_per_token=p.cost.flops.total / acc.seq_len,
                   state_bytes=p.cost.state_bytes)
    prev = "embedding"
    for sub in spec.sublayers:
        i = sub.index
        norm, res = f"sublayers.{i}.norm", f"sublayers.{i}.residual"
        g.add_edge(prev, norm, kind="data")
        for m in sub.members:
            g.add_edge(norm, f"sublayers.{i}.{m.name}", kind="data")
            g.add_edge(f"sublayers.{i}.{m.name}", res, kind="data")
        g.add_edge(prev, res, kind="residual")
        prev = res
    g.add_edge(prev, "final_norm", kind="data")
    for sub in spec.sublayers:  # shared weights -> every sublayer member that reads them
        for m in sub.members:
            for key in m.component.shared_params(m.config, spec.model):
                g.add_edge(f"shared.{key}", f"sublayers.{sub.index}.{m.name}", kind="shared")
    g.add_edge("final_norm", "lm_head", kind="data")
    return g


def to_json(g: nx.DiGraph) -> str:
    data = nx.node_link_data(g, edges="edges")
    return json.dumps(data, indent=2, default=str)


def to_dot(g: nx.DiGraph) -> str:
    lines = [f'digraph "{_esc(g.graph.get("name", "model"))}" {{', "  rankdir=TB;",
             '  node [shape=box, fontname="Helvetica", fontsize=10];']
    for n, attrs in g.nodes(data=True):
        parts = [n, attrs["type"]] + ([f"{attrs['params']:,} params"] if attrs["params"] else [])
        label = "\\n".join(_esc(part) for part in parts)  # DOT's \n: a line break in the label
        shape = "ellipse" if attrs["type"] == "residual" else "box"
        lines.append(f'  "{_esc(n)}" [label="{label}", shape={shape}];')
    for a, b, attrs in g.edges(data=True):
        style = {"residual": ' [style=dashed, label="residual"]',
                 "shared": ' [style=dotted, label="shared"]'}.get(attrs.get("kind"), "")
        lines.append(f'  "{_esc(a)}" -> "{_esc(b)}"{style};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _esc(s) -> str:
    """A DOT double-quoted string's contents: backslashes and quotes escaped, line breaks as spaces."""
    s = str(s).replace("\\", "\\\\").replace('"', '\\"')
    return s.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
