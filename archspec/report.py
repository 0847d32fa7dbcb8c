"""Stage 5: the report: accounting per component, per sublayer, per component type and in total,
as a dict (the stable JSON of `archspec report --format json`, documented in
docs/report-json.md) or rendered as a table or markdown."""
from __future__ import annotations

import json
from collections import OrderedDict

from .accounting import TRAIN_FLOPS_FACTOR, Accounting, account
from .components.base import FlopConvention
from .backends import check_override, planned
from .plan import MEMBER, Plan
from .spec import ResolvedSpec
from .units import human

SCHEMA_VERSION = 1

CONVENTIONS = {
    "flop": "1 FLOP = one multiply or one add; a multiply-accumulate (MAC) is 2 FLOPs",
    "forward_flops_per_token": "forward FLOPs of one sequence of seq_len tokens, divided by seq_len",
    "causal_attention": "",  # filled from the FlopConvention
    "training_flops_per_token": f"{TRAIN_FLOPS_FACTOR} x forward (backward = 2 x forward)",
    "params": "tied weights counted once; embedding = token embedding; head = untied LM head; "
              "non_embedding = total - embedding - head",
    "inference_state_bytes": "bytes kept per sequence after seq_len tokens (KV cache, recurrent state)",
    "activation_bytes": "estimate of the bytes saved for backward per sequence by the reference "
                        "path, without recomputation",
}


def report(spec: ResolvedSpec, seq_len: int | None = None,
           convention: FlopConvention = FlopConvention(), device: str = "cpu",
           backend: str | dict | None = None) -> dict:
    """The report of a resolved spec as a JSON-ready dict (schema_version 1). Backends are those
    `build(spec, device, backend=backend)` would choose by rule (backends.planned)."""
    check_override(spec, backend)
    acc = account(spec, seq_len, convention)
    t = acc.seq_len
    total = acc.total()
    conventions = dict(CONVENTIONS)
    conventions["causal_attention"] = (
        "attended pairs only: T(T+1)/2 query-key pairs per head for full causal attention, fewer "
        "with a window" if convention.causal_attention == "attended"
        else "dense: T^2 query-key pairs per head, as FlopCounterMode and fvcore count SDPA")
    backends = planned(acc.plan, device, backend)
    return {
        "schema_version": SCHEMA_VERSION,
        "spec": {
            "name": spec.name, "source": spec.source, "files": spec.files, "layout": spec.layout_text,
            "n_sublayers": len(spec.sublayers), "d_model": spec.model.d_model,
            "vocab_size": spec.model.vocab_size, "max_seq_len": spec.model.max_seq_len,
            "dtype": spec.model.dtype, "tie_embeddings": spec.model.tie_embeddings,
        },
        "seq_len": t,
        "conventions": conventions,
        "totals": {
            "params": total.params,
            "active_params": total.active_params,
            "embedding_params": acc.embedding_params,
            "head_params": acc.head_params,
            "non_embedding_params": total.params - acc.embedding_params - acc.head_params,
            "weight_bytes": total.params * spec.model.dtype_bytes,
            "forward_flops_per_sequence": total.flops.total,
            "forward_flops_per_token": total.flops.total / t,
            "forward_flops_per_token_by_kind": {k: v / t for k, v in total.flops.to_dict().items()
                                                if k != "total"},
            "training_flops_per_token": TRAIN_FLOPS_FACTOR * total.flops.total / t,
            "inference_state_bytes_per_sequence": total.state_bytes,
            "activation_bytes_per_sequence": total.activation_bytes,
        },
        "notes": _notes(acc.plan),
        "by_type": _by_type(acc),
        "sublayers": [_sublayer_row(sub, cost, t) for sub, cost in zip(spec.sublayers, acc.sublayer_costs())],
        "components": _component_rows(acc, backends),
    }


def _component_rows(acc: Accounting, backends: dict[str, str]) -> list[dict]:
    """One row per node; the figures of a cost shared by many nodes are formatted once."""
    figures: dict[int, dict] = {}
    rows = []
    for p in acc.parts:
        if id(p.cost) not in figures:
            c = p.cost
            figures[id(c)] = {"params": c.params, "active_params": c.active_params,
                              "forward_flops_per_token": c.flops.total / acc.seq_len,
                              "forward_flops_by_kind": c.flops.to_dict(),
                              "state_bytes": c.state_bytes, "activation_bytes": c.activation_bytes}
        row = {"name": p.name, "type": p.type, "role": p.role, "sublayer": p.sublayer, **figures[id(p.cost)]}
        if p.name in backends:
            row["backend"] = backends[p.name]
        rows.append(row)
    return rows


def _notes(the_plan: Plan) -> list[str]:
    """Each member's notes, once per distinct text, prefixed by the component names."""
    by_text: "OrderedDict[str, list[str]]" = OrderedDict()
    for node in the_plan.with_role(MEMBER):
        for text in node.component.notes(node.instance.config, the_plan.spec.model):
            names = by_text.setdefault(text, [])
            if node.symbol not in names:
                names.append(node.symbol)
    return [f"{', '.join(names)}: {text}" for text, names in by_text.items()]


def _by_type(acc: Accounting) -> list[dict]:
    rows: "OrderedDict[str, dict]" = OrderedDict()
    for p in acc.parts:
        row = rows.setdefault(p.type, {"type": p.type, "count": 0, "params": 0, "active_params": 0,
                                       "forward_flops_per_token": 0.0, "state_bytes": 0})
        row["count"] += 1
        row["params"] += p.cost.params
        row["active_params"] += p.cost.active_params
        row["forward_flops_per_token"] += p.cost.flops.total / acc.seq_len
        row["state_bytes"] += p.cost.state_bytes
    return list(rows.values())


def _sublayer_row(sub, cost, seq_len: int) -> dict:
    return {"index": sub.index, "symbols": list(sub.symbols), "types": [m.type for m in sub.members],
            "overrides": {m.name: m.overrides for m in sub.members if m.overrides},
            "params": cost.params, "forward_flops_per_token": cost.flops.total / seq_len,
            "state_bytes": cost.state_bytes, "activation_bytes": cost.activation_bytes}


# ---------------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[str]], markdown: bool, text_columns=(0,)) -> str:
    """Numbers right-aligned, the `text_columns` left-aligned. In markdown every cell is
    escaped (_md_cell), so a parallel group's `[A | F]` stays one cell."""
    if markdown:
        align = lambda i: ":---" if i in text_columns else "---:"  # noqa: E731
        row = lambda cells: "| " + " | ".join(_md_cell(c) for c in cells) + " |"  # noqa: E731
        out = [row(headers), "|" + "|".join(align(i) for i in range(len(headers))) + "|"]
        return "\n".join(out + [row(r) for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = lambda r: "  ".join(c.ljust(w) if i in text_columns else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _md_cell(text: str) -> str:
    """A markdown table cell: `|` escaped (it would end the cell) and line breaks made spaces
    (a row is one line)."""
    return " ".join(text.replace("|", "\\|").splitlines())


def render(rep: dict, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(rep, indent=2)
    md = fmt == "markdown"
    s, t = rep["spec"], rep["totals"]
    title = f"## {s['name']}" if md else f"{s['name']}  ({s['source']})"
    lines = [title, "",
             f"layout: {s['layout']}  ({s['n_sublayers']} sublayers)",
             f"d_model {s['d_model']}, vocab {s['vocab_size']}, max_seq_len {s['max_seq_len']}, "
             f"{s['dtype']}, embeddings {'tied' if s['tie_embeddings'] else 'untied'}; "
             f"accounting at seq_len {rep['seq_len']}", ""]
    totals = [
        ["parameters", f"{t['params']:,}", human(t["params"])],
        ["  active per token", f"{t['active_params']:,}", human(t["active_params"])],
        ["  embedding", f"{t['embedding_params']:,}", human(t["embedding_params"])],
        ["  LM head (untied)", f"{t['head_params']:,}", human(t["head_params"])],
        ["  non-embedding", f"{t['non_embedding_params']:,}", human(t["non_embedding_params"])],
        ["weights", f"{t['weight_bytes']:,} B", human(t["weight_bytes"], "B")],
        ["forward FLOPs / token", f"{t['forward_flops_per_token']:,.0f}", human(t["forward_flops_per_token"])],
        ["training FLOPs / token", f"{t['training_flops_per_token']:,.0f}", human(t["training_flops_per_token"])],
        ["inference state / sequence", f"{t['inference_state_bytes_per_sequence']:,} B",
         human(t["inference_state_bytes_per_sequence"], "B")],
        ["activations / sequence (est.)", f"{t['activation_bytes_per_sequence']:,} B",
         human(t["activation_bytes_per_sequence"], "B")],
    ]
    lines += ["Totals" if not md else "### Totals", "", _table(["", "exact", "approx"], totals, md), ""]
    by_type = [[r["type"], str(r["count"]), f"{r['params']:,}", human(r["forward_flops_per_token"]),
                human(r["state_bytes"], "B")] for r in rep["by_type"]]
    lines += ["By component type" if not md else "### By component type", "",
              _table(["type", "count", "params", "fwd FLOPs/token", "state/seq"], by_type, md), ""]
    members: dict[int, list[dict]] = {}
    for c in rep["components"]:
        if c.get("role") == "member":
            members.setdefault(c["sublayer"], []).append(c)
    sub_rows = []
    for r in rep["sublayers"]:
        what = " | ".join(f"{sym}:{typ}" for sym, typ in zip(r["symbols"], r["types"]))
        if r["overrides"]:
            what += "  (override " + "; ".join(
                f"{sym}: " + ", ".join(f"{k}={v}" for k, v in changed.items()) if len(r["symbols"]) > 1
                else ", ".join(f"{k}={v}" for k, v in changed.items())
                for sym, changed in r["overrides"].items()) + ")"
        backend = ",".join(sorted({c.get("backend", "-") for c in members.get(r["index"], [])}))
        sub_rows.append([str(r["index"]), what, f"{r['params']:,}", human(r["forward_flops_per_token"]),
                         human(r["state_bytes"], "B"), backend])
    lines += ["Per sublayer (norm + components + residual)" if not md else "### Per sublayer", "",
              _table(["#", "components", "params", "fwd FLOPs/token", "state/seq", "backend"], sub_rows, md,
                     text_columns=(1, 5)), ""]
    if rep.get("notes"):
        lines += ["Notes" if not md else "### Notes", ""]
        lines += [f"- {n}" for n in rep["notes"]] + [""]
    lines += ["Conventions" if not md else "### Conventions", ""]
    lines += [f"- {k}: {v}" for k, v in rep["conventions"].items()]
    return "\n".join(lines) + "\n"
