"""`archspec diff --format json`: the JSON-ready dict (docs/diff.md, schema_version 1)."""
from __future__ import annotations

import copy

from ..spec import ResolvedSpec
from .changes import ABSENT, FieldChange
from .checkpoint_map import COMPAT_KINDS, Compatibility
from .compare import SpecDiff
from .costs import CostDelta, Costs

SCHEMA_VERSION = 1


def to_json(d: SpecDiff) -> dict:
    """The JSON-ready dict of `archspec diff --format json` (docs/diff.md, schema_version 1)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "a": _spec_summary(d.a),
        "b": _spec_summary(d.b),
        "different": d.different,
        "exit_code": d.exit_code,
        "ignored": list(d.ignore),
        "seq_lens": list(d.seq_lens),
        "attention_flops": d.convention.causal_attention,
        "layout": {"a": d.layout_a, "b": d.layout_b, "changed": d.layout_a != d.layout_b},
        "model": _fields(d.model),
        "components": [{"change": x.change, "symbol_a": x.symbol_a, "symbol_b": x.symbol_b,
                        "type_a": x.type_a, "type_b": x.type_b, "fields": _fields(x.fields),
                        "uses_a": x.uses_a, "uses_b": x.uses_b} for x in d.components],
        "sublayers": [_sublayer(s) for s in d.sublayers],
        "alignment": [[i, j] for i, j in d.alignment],
        "costs": _costs(d.costs),
        "compatibility": _compatibility(d.compatibility),
        "budgets": [{"metric": x.metric, "seq_len": x.seq_len, "limit": x.budget.text,
                     "relative": x.budget.relative, "delta": x.delta.delta, "pct": x.delta.pct,
                     "crossed": x.crossed} for x in d.budgets],
        "warnings": list(d.warnings),
    }


def _json_value(v):
    if v is ABSENT:
        return None
    if isinstance(v, tuple):
        return list(v)
    return copy.deepcopy(v)


def _fields(fields: list[FieldChange]) -> list[dict]:
    return [{"field": f.field, "a": _json_value(f.a), "b": _json_value(f.b)} for f in fields]


def _spec_summary(spec: ResolvedSpec) -> dict:
    return {"name": spec.name, "source": spec.source, "files": list(spec.files),
            "layout": spec.layout_text, "n_sublayers": len(spec.sublayers),
            "max_seq_len": spec.model.max_seq_len, "dtype": spec.model.dtype}


def _sublayer(s) -> dict:
    return {"change": s.change, "a_index": s.a_index, "b_index": s.b_index,
            "a": [{"symbol": m, "type": t} for m, t in s.a_members],
            "b": [{"symbol": m, "type": t} for m, t in s.b_members],
            "members": [{"change": m.kind, "symbol_a": m.symbol_a, "symbol_b": m.symbol_b,
                         "type_a": m.type_a, "type_b": m.type_b, "fields": _fields(m.fields)}
                        for m in s.members],
            "overrides_a": _json_value(s.overrides_a), "overrides_b": _json_value(s.overrides_b),
            "gates": list(s.gates) if s.gates else None}


def _by_len(ds: dict[int, CostDelta]) -> dict[str, dict]:
    return {str(t): d.to_dict() for t, d in ds.items()}


def _costs(c: Costs) -> dict:
    return {
        "params": c.params.to_dict(),
        "active_params": c.active_params.to_dict(),
        "forward_flops_per_token": _by_len(c.flops_per_token),
        "inference_state_bytes_per_sequence": _by_len(c.state_bytes),
        "by_type": [{"type": r.type, "count": r.count.to_dict(), "params": r.params.to_dict(),
                     "active_params": r.active_params.to_dict(),
                     "forward_flops_per_token": _by_len(r.flops_per_token),
                     "inference_state_bytes_per_sequence": _by_len(r.state_bytes)}
                    for r in c.by_type],
    }


def _compatibility(c: Compatibility) -> dict:
    return {
        "params_a": c.params_a, "params_b": c.params_b, "reusable_params": c.reusable_params,
        "dtype_a": c.dtype_a, "dtype_b": c.dtype_b,
        "counts": {k: dict(zip(("tensors", "params"), c.count(k))) for k in COMPAT_KINDS},
        "unchanged": [n for n, _ in c.unchanged],
        "renamed": [{"a": x, "b": y, "shape": list(s)} for x, y, s in c.renamed],
        "reshaped": [{"a": x, "b": y, "shape_a": list(sa), "shape_b": list(sb)}
                     for x, y, sa, sb in c.reshaped],
        "new": [{"name": n, "shape": list(s)} for n, s in c.new],
        "removed": [{"name": n, "shape": list(s)} for n, s in c.removed],
    }
