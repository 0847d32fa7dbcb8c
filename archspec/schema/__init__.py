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

from ..components import REGISTRY, types_with_role

HERE = Path(__file__).parent
BASE_FILE = HERE / "spec.base.schema.json"
EDITOR_FILE = HERE / "archspec.schema.json"
SCHEMA_ID = "https://archspec.dev/schema/archspec.schema.json"


def component_schema(type_name: str) -> dict:
    """A component type's full schema: its fragment plus `type` and `backend`."""
    comp = REGISTRY[type_name]
    fragment = copy.deepcopy(comp.schema)
    props = {"type": {"const": type_name, "description": comp.summary}}
    if comp.role in ("sublayer", "norm"):  # what a spec may configure, and so choose a backend for
        props["backend"] = {"enum": ["auto", *sorted(comp.backends)], "default": "auto",
                            "description": "kernel backend; auto picks the fastest one the device runs"}
    props.update(fragment.get("properties", {}))
    out = {"type": "object", "additionalProperties": False, "properties": props}
    if comp.summary:
        out["description"] = comp.summary
    if fragment.get("required"):
        out["required"] = list(fragment["required"])
    return out


def _dispatch(types: list[str]) -> dict:
    """An object whose `type` selects one of `types`' schemas."""
    return {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": types}},
        "allOf": [
            {"if": {"properties": {"type": {"const": t}}, "required": ["type"]},
             "then": {"$ref": f"#/$defs/component.{t}"}}
            for t in types
        ],
    }


@lru_cache(maxsize=1)
def strict_schema() -> dict:
    schema = json.loads(BASE_FILE.read_text())
    schema["$id"] = SCHEMA_ID
    defs = schema["$defs"]
    defs["component"] = _dispatch(types_with_role("sublayer"))
    defs["norm"] = {**_dispatch(types_with_role("norm")),
                    "description": "norm used in every block and at the end",
                    "default": {"type": "rmsnorm", "eps": 1e-5}}
    for t in sorted(REGISTRY):
        if REGISTRY[t].role in ("sublayer", "norm"):
            defs[f"component.{t}"] = component_schema(t)
    return schema


def editor_schema() -> dict:
    schema = _accept_expressions(copy.deepcopy(strict_schema()))
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
