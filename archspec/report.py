"""Stage 5: the report: accounting per component, per sublayer, per component type and in total,
as a dict (the stable JSON of `archspec report --format json`, documented in
docs/report-json.md) or rendered as a table or markdown."""
from __future__ import annotations

import json
from collections import OrderedDict

from .accounting import TRAIN_FLOPS_FACTOR, Accounting, account
from .components.base import FlopConvention
from .freeze import frozen_params
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
    frozen = _frozen(acc)
    return {
        "schema_version": SCHEMA_VERSION,
        "spec": {
            "name": spec.name, "source": spec.source, "files": spec.files, "layout": spec.layout_text,
            "n_sublayers": len(spec.sublayers), "d_model": spec.model.d_model,
            "vocab_size": spec.model.vocab_size, "max_seq_len": spec.model.max_seq_len,
            "dtype": spec.model.dtype, "tie_embeddings": spec.model.tie_embeddings,
            "freeze": list(spec.freeze), "group_gates": spec.model.group_gates,
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
            "trainable_params": total.params - sum(frozen),
            "frozen_params": sum(frozen),
        },
        "notes": _notes(acc.plan),
        "by_type": _by_type(acc),
        "sublayers": [_sublayer_row(sub, cost, t) for sub, cost in zip(spec.sublayers, acc.sublayer_costs())],
        "components": _component_rows(acc, backends, t, frozen),
    }


def _frozen(acc: Accounting) -> list[int]:
    """Each part's parameters that do not train (spec `freeze:`), in the order of acc.parts."""
    cache: dict = {}
    model = acc.spec.model
    return [frozen_params(p.node, p.cost.params, model, cache) for p in acc.parts]


def _component_rows(acc: Accounting, backends: dict[str, str], t: int, frozen: list[int]) -> list[dict]:
    """One row per node of the plan. The figures depend only on the node's cost, which the
    nodes of one instance share: they are worked out once per cost (a deep layout has a few)."""
    figures: dict[int, tuple] = {}
    rows = []
    for p, frozen_here in zip(acc.parts, frozen):
        node, cost = p.node, p.cost
        f = figures.get(id(cost))
        if f is None:
            f = figures[id(cost)] = (cost.params, cost.active_params, cost.flops.total / t, cost.flops.to_dict(),
                                     cost.state_bytes, cost.activation_bytes)
        row = {"name": node.name, "type": node.instance.type, "role": node.role, "sublayer": node.sublayer,
               "params": f[0], "active_params": f[1], "forward_flops_per_token": f[2],
               "forward_flops_by_kind": f[3].copy(), "state_bytes": f[4], "activation_bytes": f[5],
               "frozen_params": frozen_here}
        if node.name in backends:
            row["backend"] = backends[node.name]
        rows.append(row)
    return rows


def _notes(the_plan: Plan) -> list[str]:
    """Each member's notes, once per distinct text, prefixed by the component names."""
    by_text: "OrderedDict[str, list[str]]" = OrderedDict()
    seen: set[tuple] = set()  # an instance says the same under the same symbol in every sublayer
    for node in the_plan.with_role(MEMBER):
        if (id(node.instance), node.symbol) in seen:
            continue
        seen.add((id(node.instance), node.symbol))
        for text in node.component.notes(node.instance.config, the_plan.spec.model):
            names = by_text.setdefault(text, [])
            if node.symbol not in names:
                names.append(node.symbol)
    return [f"{', '.join(names)}: {text}" for text, names in by_text.items()]


def _by_type(acc: Accounting) -> list[dict]:
    """Per component type, in order of first appearance: its nodes and their sums. The float
    is summed part by part in model order (what the JSON has always held, to the last bit);
    the rest once per distinct cost."""
    rows: "OrderedDict[str, dict]" = OrderedDict()
    per_token: dict[int, float] = {}
    for p in acc.parts:
        cost, type_name = p.cost, p.node.instance.type
        row = rows.get(type_name)
        if row is None:
            row = rows[type_name] = {"type": type_name, "count": 0, "params": 0, "active_params": 0,
                                     "forward_flops_per_token": 0.0, "state_bytes": 0}
        if id(cost) not in per_token:
            per_token[id(cost)] = cost.flops.total / acc.seq_len
        row["count"] += 1
        row["params"] += cost.params
        row["active_params"] += cost.active_params
        row["forward_flops_per_token"] += per_token[id(cost)]
        row["state_bytes"] += cost.state_bytes
    return list(rows.values())


def _sublayer_row(sub, cost, seq_len: int) -> dict:
    return {"index": sub.index, "symbols": list(sub.symbols), "types": [m.type for m in sub.members],
            "overrides": {m.name: m.overrides for m in sub.members if m.overrides},
            "gates": sub.gates if sub.parallel else None,
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
        return json_text(rep)
    md = fmt == "markdown"
    s, t = rep["spec"], rep["totals"]
    title = f"## {s['name']}" if md else f"{s['name']}  ({s['source']})"
    lines = [title, "",
             f"layout: {s['layout']}  ({s['n_sublayers']} sublayers)",
             f"d_model {s['d_model']}, vocab {s['vocab_size']}, max_seq_len {s['max_seq_len']}, "
             f"{s['dtype']}, embeddings {'tied' if s['tie_embeddings'] else 'untied'}; "
             f"accounting at seq_len {rep['seq_len']}", ""]
    if s.get("freeze"):
        lines[-1:] = [f"frozen (does not train): {', '.join(s['freeze'])}", ""]
    totals = [
        ["parameters", f"{t['params']:,}", human(t["params"])],
        ["  active per token", f"{t['active_params']:,}", human(t["active_params"])],
        ["  embedding", f"{t['embedding_params']:,}", human(t["embedding_params"])],
        ["  LM head (untied)", f"{t['head_params']:,}", human(t["head_params"])],
        ["  non-embedding", f"{t['non_embedding_params']:,}", human(t["non_embedding_params"])],
        *([["  trainable", f"{t['trainable_params']:,}", human(t["trainable_params"])],
           ["  frozen", f"{t['frozen_params']:,}", human(t["frozen_params"])]] if t["frozen_params"] else []),
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
        if r.get("gates") not in (None, "scalar"):
            what += f"  ({r['gates']} gates)"
        backend = ",".join(sorted({c.get("backend", "-") for c in members.get(r["index"], [])}))
        sub_rows.append([str(r["index"]), what, f"{r['params']:,}", human(r["forward_flops_per_token"]),
                         human(r["state_bytes"], "B"), backend])
    lines += ["Per sublayer (norm + components + residual)" if not md else "### Per sublayer", "",
              _table(["#", "components", "params", "fwd FLOPs/token", "state/seq", "backend"], sub_rows, md,
                     text_columns=(1, 5)), ""]
    shared = [[c["name"], c["type"], f"{c['params']:,}"] for c in rep["components"] if c.get("role") == "shared"]
    if shared:  # weights several sublayers use (`share`, pkm's share_values): once each
        title = "Shared weights (counted once; their FLOPs and state count in every sublayer that uses them)"
        lines += [title if not md else "### Shared weights", "",
                  _table(["weights", "type", "params"], shared, md, text_columns=(0, 1)), ""]
    if rep.get("notes"):
        lines += ["Notes" if not md else "### Notes", ""]
        lines += [f"- {n}" for n in rep["notes"]] + [""]
    lines += ["Conventions" if not md else "### Conventions", ""]
    lines += [f"- {k}: {v}" for k, v in rep["conventions"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
def json_text(value) -> str:
    """json.dumps(value, indent=2), byte for byte (tests/test_graph_report_cli.py compares them),
    at a fraction of its time on a deep model's report: the standard encoder runs in Python when
    it indents, value by value, while a report's hundreds of thousands of rows repeat a few lines
    (each instance's figures), which are encoded once here and looked up after."""
    return _JsonText().text(value, 0)


class _JsonText:
    """One rendering. A mapping is its keys' template (made once per key set and level) filled
    with its values; a scalar's encoding is looked up by type and value after its first time."""

    def __init__(self):
        self.templates: dict[tuple, str] = {}
        self.scalars: dict[tuple, str] = {}

    def text(self, value, level: int) -> str:
        if isinstance(value, dict):
            return self.mapping(value, level) if value else "{}"
        if isinstance(value, (list, tuple)):
            return self.sequence(value, level) if value else "[]"
        return self.scalar(value)

    def scalar(self, value) -> str:
        key = (type(value), value)  # 1 == True == 1.0: the type keeps them apart
        found = self.scalars.get(key)
        if found is None:
            found = _scalar(value)
            if not (key[0] is float and not value):  # -0.0 == 0.0 but encodes otherwise
                self.scalars[key] = found
        return found

    def mapping(self, value: dict, level: int) -> str:
        keys = tuple(value)
        found = self.templates.get((level, keys))
        # keys equal as values can differ in type (1 and True) and so in text: a template of
        # other than str keys (a report has only those) records their types, checked on use
        if found is not None and found[1] is not None and found[1] != tuple(map(type, keys)):
            found = None
        if found is None:
            pad = "\n" + "  " * (level + 1)
            template = ("{" + ",".join((pad + _key(k) + ": ").replace("%", "%%") + "%s" for k in keys)
                        + "\n" + "  " * level + "}")
            types = None if all(type(k) is str for k in keys) else tuple(map(type, keys))
            found = self.templates[(level, keys)] = (template, types)
        return found[0] % self.values(value.values(), level + 1)

    def sequence(self, value, level: int) -> str:
        pad = "\n" + "  " * (level + 1)
        return "[" + ",".join([pad + text for text in self.values(value, level + 1)]) + "\n" + "  " * level + "]"

    def values(self, values, level: int) -> tuple[str, ...]:
        """Each value's text, scalars looked up inline (this loop is the renderer's hot path)."""
        get, out = self.scalars.get, []
        for v in values:
            t = type(v)
            if t is str or t is int or t is float or t is bool or v is None:
                text = get((t, v))
                out.append(text if text is not None else self.scalar(v))
            else:
                out.append(self.text(v, level))
        return tuple(out)



_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps uses (ensure_ascii), in C


def _key(k) -> str:
    """A mapping key as json.dumps writes it: a string, or a number, boolean or null as text."""
    if isinstance(k, str):
        return _encode_str(k)
    if k is None or isinstance(k, (bool, int, float)):
        return _encode_str(_scalar(k))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")


def _scalar(v) -> str:
    """A scalar as json.dumps writes it (allow_nan: NaN and Infinity as JavaScript does)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return _encode_str(v)
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if v in (float("inf"), float("-inf")):
            return "Infinity" if v > 0 else "-Infinity"
        return float.__repr__(v)
    return json.dumps(v)  # anything else: what json makes of it (or its TypeError)
