"""The spec's JSON Schema (Draft 2020-12): `spec.base.schema.json` beside this file, plus one
fragment per component type taken from the component files.

`strict_schema()` validates evaluated specs (numbers are numbers). `editor_schema()` is the
same for YAML language servers, where a number may still be a `${...}` expression and a spec
with `extends` may be partial; it is committed as `archspec.schema.json` (regenerate it with
`archspec schema --write`; a test checks it is current).
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

from .. import limits as L
from ..components import REGISTRY, types_with_role

HERE = Path(__file__).parent
BASE_FILE = HERE / "spec.base.schema.json"
EDITOR_FILE = HERE / "archspec.schema.json"
SCHEMA_ID = "https://archspec.dev/schema/archspec.schema.json"


SHARE_GROUP_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"  # a group becomes part of a module name


@lru_cache(maxsize=None)
def component_schema(type_name: str) -> dict:
    """A component type's full schema: its fragment plus `type` and `backend`. Built once per
    type and shared (every override and config is checked against it): read it, never change it."""
    comp = REGISTRY[type_name]
    fragment = copy.deepcopy(comp.schema)
    props = {"type": {"const": type_name, "description": comp.summary}}
    if comp.role in ("sublayer", "norm"):  # what a spec may configure, and so choose a backend for
        props["backend"] = {"enum": ["auto", *sorted(comp.backends)], "default": "auto",
                            "description": "kernel backend; auto picks the fastest one the device runs"}
    if comp.role == "sublayer" and "share" not in fragment.get("properties", {}) and comp.whole_share_key({"share": "g"}):
        # no default: an absent key leaves every existing config (and report) as it was
        props["share"] = {"type": "string", "pattern": SHARE_GROUP_PATTERN,
                          "description": "group name: every component of this type naming it is one module "
                                         "(weights counted and saved once; FLOPs and state per use)"}
    props.update(fragment.get("properties", {}))
    out = {"type": "object", "additionalProperties": False, "properties": props}
    if comp.summary:
        out["description"] = comp.summary
    if fragment.get("required"):
        out["required"] = list(fragment["required"])
    return out


DISPATCH = "x-dispatch"  # validate.py's keyword: {type name: its schema (that of $defs)}


def _dispatch(types: list[str], defs: dict) -> dict:
    """An object whose `type` selects one of `types`' schemas. Validation follows only the
    selected one (the DISPATCH keyword, validate.py); the editor schema says the same in plain
    JSON Schema (_plain_dispatch), where every type's condition is tried on every component."""
    return {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": types}},
        DISPATCH: {t: defs[f"component.{t}"] for t in types},
    }


def _plain_dispatch(node):
    """The DISPATCH keyword as allOf of if/then (what editors understand), in its place."""
    if isinstance(node, list):
        return [_plain_dispatch(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == DISPATCH:
            out["allOf"] = [{"if": {"properties": {"type": {"const": t}}, "required": ["type"]},
                             "then": {"$ref": f"#/$defs/component.{t}"}} for t in v]
        else:
            out[k] = _plain_dispatch(v)
    return out


# maxima of the model's settings and the layout's counts, from archspec/limits.py (one place
# for every limit and its reason; spec.base.schema.json holds the rest of the model's schema)
MODEL_LIMITS = {"vocab_size": L.VOCAB, "d_model": L.D_MODEL, "max_seq_len": L.SEQ_LEN, "init_std": L.INIT_STD,
                "logit_softcap": L.SOFTCAP}
RULE_LIMITS = {"layers": L.SUBLAYERS, "period": L.SUBLAYERS, "offset": L.SUBLAYERS}


def _add_limits(schema: dict) -> None:
    """Put MODEL_LIMITS, RULE_LIMITS and the counts of components and overrides into the base
    schema."""
    props = schema["properties"]
    props["components"].update({"maxProperties": L.COMPONENTS.value, L.WHY_KEY: L.COMPONENTS.why})
    props["overrides"].update({"maxItems": L.OVERRIDES.value, L.WHY_KEY: L.OVERRIDES.why})
    props["freeze"].update({"maxItems": L.FREEZE.value, L.WHY_KEY: L.FREEZE.why})
    for key, limit in MODEL_LIMITS.items():
        schema["$defs"]["model"]["properties"][key].update(limit.schema())
    rules = next(b for b in schema["$defs"]["layout"]["anyOf"] if b.get("type") == "object")
    slot = rules["properties"]["sublayers"]["items"]
    rule = slot["properties"]["where"]["items"]
    for key, prop in [("layers", rules["properties"]["layers"]), *rule["properties"].items()]:
        if key in RULE_LIMITS:
            prop.update(RULE_LIMITS[key].schema())


@lru_cache(maxsize=1)
def strict_schema() -> dict:
    schema = json.loads(BASE_FILE.read_text())
    schema["$id"] = SCHEMA_ID
    _add_limits(schema)
    defs = schema["$defs"]
    defs["component"] = defs["norm"] = None  # their place (the file's order), filled below
    for t in sorted(REGISTRY):
        if REGISTRY[t].role in ("sublayer", "norm"):
            defs[f"component.{t}"] = component_schema(t)
    defs["component"] = _dispatch(types_with_role("sublayer"), defs)
    defs["norm"] = {**_dispatch(types_with_role("norm"), defs),
                    "description": "norm used in every block and at the end",
                    "default": {"type": "rmsnorm", "eps": 1e-5}}
    return schema


def editor_schema() -> dict:
    schema = _accept_expressions(_plain_dispatch(strict_schema()))
    # a spec that extends another may be partial
    schema["if"] = {"required": ["extends"]}
    schema["then"] = {}
    schema["else"] = {"required": schema.pop("required")}
    # ...and so may its model section: which keys a child must set depends on its base
    schema["$defs"]["model"].pop("required", None)
    schema["$defs"]["component"]["required"] = []
    return schema


EXPRESSION = {"type": "string", "pattern": r"\$\{", "description": "an expression such as ${d_model} * 4"}


def _accept_expressions(node):
    if isinstance(node, list):
        return [_accept_expressions(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _accept_expressions(v) if k not in ("if",) else v for k, v in node.items()}
    types = node.get("type")
    types = [types] if isinstance(types, str) else (types or [])
    if "integer" in types or "number" in types:
        number = {k: v for k, v in node.items() if k not in ("description", "default")}
        kept = {k: v for k, v in node.items() if k in ("description", "default")}
        return {**kept, "anyOf": [number, EXPRESSION]}
    return node


def write_editor_schema(path: Path = EDITOR_FILE) -> Path:
    path.write_text(json.dumps(editor_schema(), indent=2) + "\n")
    return path


def maxima() -> list[tuple[str, int | float, str]]:
    """(key, maximum, why) for every bounded number of the strict schema, keys as docs/spec.md's
    table names them: `model.d_model`, `layout.layers`, `mom.n_memories`."""
    schema = strict_schema()
    out: list[tuple[str, int | float, str]] = []

    def walk(node, key: str, nested: str | None = None) -> None:
        """`nested`: the prefix that names properties met inside (the layout's rules)."""
        if isinstance(node, list):
            for n in node:
                walk(n, key, nested)
        elif isinstance(node, dict):
            if "maximum" in node:
                out.append((key, node["maximum"], node.get(L.WHY_KEY, "")))
            for k, v in node.items():
                if k == "properties" and nested:
                    for name, prop in v.items():
                        walk(prop, nested + name, nested)
                else:
                    walk(v, key, nested)

    for k, v in schema["$defs"]["model"]["properties"].items():
        walk(v, f"model.{k}")
    walk(schema["$defs"]["layout"], "layout", nested="layout.")
    for name, d in sorted(schema["$defs"].items()):
        if name.startswith("component."):
            for k, v in d["properties"].items():
                walk(v, f"{name.split('.', 1)[1]}.{k}")
    return out
