"""Stage 2: JSON Schema validation of an evaluated spec, with each error turned into a located
Problem that says what is wrong and how to fix it (with "did you mean" for misspellings)."""
from __future__ import annotations

import math
import re
from collections import OrderedDict

import jsonschema

from .components import REGISTRY, types_with_role
from .errors import Path, Problem, did_you_mean, format_path, one_of
from .expr import number_fault
from .limits import WHY_KEY
from .loader import Document

_JSON_TYPES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "null"}


# --- a fast path: what is certainly valid is not handed to jsonschema ----------------------------
# jsonschema spends ~0.1 ms on even a one-key mapping, and a spec at the 1 MiB limit holds
# 100,000 values (16,000 components, 14,000 overrides). certainly_valid decides the schema
# subset archspec's schemas use, conservatively: True only where jsonschema would find nothing,
# False where it would or where it cannot tell (a keyword it does not know). The validator's
# keywords below skip the children it passes, so jsonschema walks only down to what is wrong
# and says what that is. tests/test_validation.py checks it against jsonschema on mutated specs.
_ANNOTATIONS = {"description", "default", "title", "$comment", "$schema", "$id", "$defs", "examples", WHY_KEY}
_TYPES = {"integer": lambda x: type(x) is int, "number": lambda x: type(x) in (int, float),
          "boolean": lambda x: type(x) is bool, "string": lambda x: type(x) is str, "null": lambda x: x is None,
          "object": lambda x: type(x) is dict, "array": lambda x: type(x) is list}
_NUMBER = (int, float)



def _yaml_word(value) -> str:
    """A schema choice as a spec writes it: null, true, false, or the name."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

def _same(value, choice) -> bool:
    """enum and const, for scalars: equal and of one type (1 is not True, nor 1.0: conservative)."""
    return type(value) is type(choice) and type(value) in (int, float, bool, str, type(None)) and value == choice


def _extras_valid(value: dict, extra, schema: dict) -> bool:
    if "patternProperties" in schema:
        return False
    props = schema.get("properties", {})
    extras = [k for k in value if k not in props]
    return not extras if extra is False else all(certainly_valid(value[k], extra) for k in extras)


_CHECKS = {
    "type": lambda v, want, s: any(_TYPES[t](v) for t in ([want] if isinstance(want, str) else want)
                                   if t in _TYPES) and all(t in _TYPES for t in ([want] if isinstance(want, str) else want)),
    "enum": lambda v, want, s: any(_same(v, c) for c in want),
    "const": lambda v, want, s: _same(v, want),
    "minimum": lambda v, want, s: type(v) not in _NUMBER or v >= want,
    "maximum": lambda v, want, s: type(v) not in _NUMBER or v <= want,
    "exclusiveMinimum": lambda v, want, s: type(v) not in _NUMBER or v > want,
    "exclusiveMaximum": lambda v, want, s: type(v) not in _NUMBER or v < want,
    "minLength": lambda v, want, s: type(v) is not str or len(v) >= want,
    "maxLength": lambda v, want, s: type(v) is not str or len(v) <= want,
    "pattern": lambda v, want, s: type(v) is not str or re.search(want, v) is not None,
    "not": lambda v, want, s: set(want) == {"pattern"} and type(v) is str and re.search(want["pattern"], v) is None,
    "minItems": lambda v, want, s: type(v) is not list or len(v) >= want,
    "maxItems": lambda v, want, s: type(v) is not list or len(v) <= want,
    "minProperties": lambda v, want, s: type(v) is not dict or len(v) >= want,
    "maxProperties": lambda v, want, s: type(v) is not dict or len(v) <= want,
    "required": lambda v, want, s: type(v) is not dict or all(k in v for k in want),
    "properties": lambda v, want, s: type(v) is not dict or all(
        certainly_valid(v[k], sub) for k, sub in want.items() if k in v),
    "additionalProperties": lambda v, want, s: type(v) is not dict or want is True or _extras_valid(v, want, s),
    "items": lambda v, want, s: type(v) is not list or "prefixItems" not in s and (
        not v if want is False else all(certainly_valid(x, want) for x in v)),
    "propertyNames": lambda v, want, s: type(v) is not dict or all(certainly_valid(k, want) for k in v),
    "anyOf": lambda v, want, s: any(certainly_valid(v, sub) for sub in want),
    "allOf": lambda v, want, s: all(certainly_valid(v, sub) for sub in want),
    "x-dispatch": lambda v, want, s: type(v) is not dict or not isinstance(v.get("type"), str) or (
        v["type"] not in want or certainly_valid(v, want[v["type"]])),
    "$ref": lambda v, want, s: want.startswith("#/$defs/") and certainly_valid(v, _defs()[want[8:]]),
}


def certainly_valid(value, schema) -> bool:
    """True when `value` satisfies `schema` for certain (module comment); also False for numbers
    number_fault refuses (number_problems reports them)."""
    if schema is True:
        return True
    if type(schema) is not dict or number_fault(value):
        return False
    for key, want in schema.items():
        if key not in _ANNOTATIONS and (key not in _CHECKS or not _CHECKS[key](value, want, schema)):
            return False
    return True


def _defs() -> dict:
    """The strict schema's $defs, which every schema archspec validates with refers into."""
    from .schema import strict_schema  # here: schema/ imports nothing of this module, but later
    return strict_schema()["$defs"]


_DEFAULT = jsonschema.Draft202012Validator.VALIDATORS


def _properties(validator, properties, instance, schema):
    """properties, descending only into the values certainly_valid does not pass."""
    if validator.is_type(instance, "object"):
        for prop, sub in properties.items():
            if prop in instance and not certainly_valid(instance[prop], sub):
                yield from validator.descend(instance[prop], sub, path=prop, schema_path=prop)


def _additional_properties(validator, extra, instance, schema):
    """additionalProperties with a schema: only the values certainly_valid does not pass."""
    if isinstance(extra, dict) and "patternProperties" not in schema and validator.is_type(instance, "object"):
        props = schema.get("properties", {})
        for key in instance:
            if key not in props and not certainly_valid(instance[key], extra):
                yield from validator.descend(instance[key], extra, path=key)
        return
    yield from _DEFAULT["additionalProperties"](validator, extra, instance, schema)


def _items(validator, items, instance, schema):
    """items with a schema: only the items certainly_valid does not pass."""
    if isinstance(items, dict) and "prefixItems" not in schema and validator.is_type(instance, "array"):
        for index, item in enumerate(instance):
            if not certainly_valid(item, items):
                yield from validator.descend(item, items, path=index)
        return
    yield from _DEFAULT["items"](validator, items, instance, schema)


def _property_names(validator, names, instance, schema):
    """propertyNames, the names certainly_valid passes left out."""
    if validator.is_type(instance, "object") and all(certainly_valid(k, names) for k in instance):
        return
    yield from _DEFAULT["propertyNames"](validator, names, instance, schema)


def _dispatch(validator, schemas: dict, instance, schema):
    """The `x-dispatch` keyword (schema/__init__.py): a mapping is checked against the schema its
    `type` names, and no other. (allOf of if/then, the plain form, tries every type's condition
    on every component: ten times the work on a spec of thousands of components.) An unknown or
    missing type is the `enum` or `required` beside it."""
    kind = instance.get("type") if isinstance(instance, dict) else None
    if isinstance(kind, str) and kind in schemas and not certainly_valid(instance, schemas[kind]):
        yield from validator.descend(instance, schemas[kind])


# JSON Schema counts 4.0 as an integer; a size of 4.0 (e.g. `${d_model} * 1.5`) is not one here
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    validators={"x-dispatch": _dispatch, "propertyNames": _property_names, "properties": _properties,
                "additionalProperties": _additional_properties, "items": _items},
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, x: isinstance(x, int) and not isinstance(x, bool)),
)


def schema_problems(data: dict, doc: Document, schema: dict, base_path: Path = (),
                    loc_path=None) -> list[Problem]:
    """Validate `data` against `schema`; paths are reported under `base_path`. `loc_path` maps a
    data path to the spec path whose location to show (for overrides). Every number anywhere in
    `data` must also be finite and within MAX_ABS_VALUE (number_problems); the schema's own
    complaint about such a number (a NaN passes every comparison, an inf fails a maximum) is
    left out: the number is one mistake."""
    loc_path = loc_path or (lambda p: p)
    problems = number_problems(data, doc, base_path, loc_path)
    if not problems and certainly_valid(data, schema):  # the common case, without jsonschema
        return []
    bad_numbers = {p.path for p in problems}
    validator = _validator(schema)
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        problems += [p for p in _translate(error, doc, base_path, loc_path) if p.path not in bad_numbers]
    return dedupe(problems)


_VALIDATORS: "OrderedDict[int, tuple[dict, jsonschema.protocols.Validator]]" = OrderedDict()


def _validator(schema: dict):
    """A validator per schema object, reused: the schemas are built once (strict_schema,
    component_schema), and a spec with thousands of overrides checks each against the same one.
    The schema is held with its validator, so its id is not reused while cached."""
    key = id(schema)
    if key in _VALIDATORS and _VALIDATORS[key][0] is schema:
        _VALIDATORS.move_to_end(key)
        return _VALIDATORS[key][1]
    _VALIDATORS[key] = (schema, _Validator(schema))
    if len(_VALIDATORS) > 64:
        _VALIDATORS.popitem(last=False)
    return _VALIDATORS[key][1]


def number_problems(data, doc: Document, base_path: Path = (), loc_path=lambda p: p) -> list[Problem]:
    """A located problem for every number in `data` that number_fault refuses."""
    problems: list[Problem] = []

    def walk(value, path: Path) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, path + (i,))
        else:
            fault = number_fault(value)
            if fault:
                full = base_path + path
                hint = ("`.nan` and `.inf` are not values a model can have; write a finite number"
                        if isinstance(value, float) and not math.isfinite(value)
                        else "no size, count or rate of a model is this large; check the number")
                problems.append(Problem(fault, full, doc.loc(loc_path(full)), hint))

    walk(data, ())
    return problems


def dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _describe(value) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string '{value}'"
    return "a list" if isinstance(value, list) else "a mapping"


def _translate(error: jsonschema.ValidationError, doc: Document, base: Path, loc_path) -> list[Problem]:
    path = base + tuple(error.absolute_path)
    where = lambda p: doc.loc(loc_path(p))  # noqa: E731
    key_where = lambda p: doc.key_loc(loc_path(p))  # noqa: E731
    v, schema, inst = error.validator, error.schema, error.instance
    if v in ("anyOf", "oneOf"):
        return _translate_alternatives(error, doc, base, loc_path)
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in inst if k not in schema.get("properties", {})]
        renamed = _renamed_keys(schema)
        return [Problem(f"unknown key '{k}'", path + (k,), key_where(path + (k,)),
                        (f"'{k}' was renamed to '{renamed[k]}'" if k in renamed else None)
                        or did_you_mean(k, allowed) or f"allowed keys here: {', '.join(allowed)}")
                for k in extra]
    if v == "required":
        missing = re.match(r"'([^']+)'", error.message)
        name = missing.group(1) if missing else error.message
        allowed = sorted(schema.get("properties", {}))
        misspelled = [k for k in inst if k not in allowed and did_you_mean(k, allowed) == f"did you mean '{name}'?"]
        if misspelled:  # a misspelling of it (`n_head`, `eype`) is one mistake: the unknown key
            return [Problem(f"unknown key '{k}'", path + (k,), key_where(path + (k,)), f"did you mean '{name}'?")
                    for k in misspelled]
        desc = schema.get("properties", {}).get(name, {}).get("description")
        return [Problem(f"missing required key '{name}'", path, where(path),
                        f"add `{name}:`" + (f" ({desc})" if desc else ""))]
    if v in ("enum", "const"):
        choices = schema["enum"] if v == "enum" else [schema["const"]]
        what = "component type" if path[-1:] == ("type",) else "value"
        if isinstance(inst, (dict, list)):  # not a name at all (and not hashable)
            return [Problem(f"expected a {what} ({one_of(map(_yaml_word, choices))}), got {_describe(inst)}",
                            path, where(path), f"write one name, e.g. `{path[-1] if path else 'value'}: {choices[0]}`")]
        hint = _misplaced_type_hint(inst, path) or did_you_mean(str(inst), [str(c) for c in choices])
        synonym = SYNONYMS.get(str(inst).lower())
        if hint is None and synonym is not None and synonym in choices:  # an enum may hold null
            hint = f"did you mean '{synonym}'?"
        return [Problem(f"unknown {what} '{inst}'", path, where(path),
                        hint or f"expected one of: {one_of(map(_yaml_word, choices))}")]
    if v == "type":
        want = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        expected = " or ".join(_JSON_TYPES.get(t, t) for t in want)
        hint = None
        if isinstance(inst, str) and re.fullmatch(r"[\d\s.+\-*/%()]+", inst):
            hint = "arithmetic is evaluated only in expressions with a ${reference}"
        elif isinstance(inst, str) and set(want) & {"integer", "number"}:
            hint = "write a number, or an expression such as ${d_model} * 4"
        elif isinstance(inst, float) and "integer" in want:
            hint = "use a whole number; in expressions `//` divides to an integer"
        elif path == ("components",):
            hint = EMPTY_HINTS["components"].replace("define at least one", "map each name to its settings")
        elif isinstance(inst, str) and "boolean" in want and inst.lower() in YAML11_BOOLEANS:
            hint = ("specs are YAML 1.2, where only true and false are booleans "
                    f"('{inst}' is a string): write {str(YAML11_BOOLEANS[inst.lower()]).lower()}")
        return [Problem(f"expected {expected}, got {_describe(inst)}", path, where(path), hint)]
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        bound = schema[v]
        hint = "sizes and counts must be positive" if op in (">=", ">") and bound in (0, 1) else None
        if hint and "null" in (schema.get("type") or []) and schema.get("default", 0) is None:  # a soft-cap
            hint = "it must be positive; null (the default) turns it off"
        if op in ("<=", "<"):  # every maximum says why it is there (archspec/limits.py)
            hint = schema.get(WHY_KEY)
            return [Problem(f"must be {op} {_number(bound)}, got {_number(inst)}", path, where(path), hint)]
        if "at" in path[-2:] and op == ">=":
            hint = "sublayer indices count from 0 over the expanded layout (no negative indices)"
        return [Problem(f"must be {op} {bound}, got {inst}", path, where(path), hint)]
    if "propertyNames" in error.schema_path:  # jsonschema reports the name's own pattern error
        bad = error.instance
        return [Problem(f"'{bad}' is not a valid component name: {_name_fault(bad)}", path + (bad,),
                        key_where(path + (bad,)),
                        "use a name like 'attn' or 'A', or one character of * + = ~ ! @ # % & ^ -; "
                        f"at most {MAX_NAME_CHARS} characters")]
    if v in ("maxItems", "maxProperties"):  # the counts of components and overrides (limits.py)
        what = {"components": "components", "overrides": "overrides"}.get(path[-1] if path else None, "entries")
        return [Problem(f"at most {schema[v]:,} {what}, got {len(inst):,}", path, where(path), schema.get(WHY_KEY))]
    if v in ("minItems", "minProperties", "minLength"):
        hint = EMPTY_HINTS.get(path[-1] if path else None)
        return [Problem("must not be empty", path, where(path), hint)]
    return [Problem(error.message, path, where(path))]


MAX_NAME_CHARS = 64  # component names are layout symbols: short by nature (the schema's maxLength)


def _name_fault(name: str) -> str:
    """Why a component name is not a layout symbol, in words."""
    if re.fullmatch(r"x[0-9]*", name):
        return f"'x' followed by digits is reserved for repetition ('(A F) {name}')"
    if len(name) > MAX_NAME_CHARS:
        return f"{len(name):,} characters, over the limit of {MAX_NAME_CHARS}"
    if not name.isascii():
        return "only ASCII letters, digits and '_' (or one punctuation character) are allowed"
    if not name:
        return "it is empty"
    if len(name) > 1 and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return "an identifier starts with a letter or '_' and holds only letters, digits and '_'"
    return "not an identifier nor one of the allowed punctuation characters"


def _number(value) -> str:
    """A bound or a value in a message: 4,096 and 1e+12 rather than 4096 and 1000000000000.0."""
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _renamed_keys(schema: dict) -> dict[str, str]:
    """A component schema's old key spellings (Component.renamed), by its `type` constant."""
    type_name = schema.get("properties", {}).get("type", {}).get("const")
    return REGISTRY[type_name].renamed if type_name in REGISTRY else {}


# common spellings that are not close enough for difflib
SYNONYMS = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32",
            "float": "float32", "single": "float32", "layer_norm": "layernorm", "rms_norm": "rmsnorm",
            "rms": "rmsnorm", "ln": "layernorm", "attn": "attention", "ffn": "mlp", "mha": "attention",
            "gqa": "attention", "mqa": "attention", "ff": "mlp", "swiglu": "mlp"}
# YAML 1.1 spellings of booleans, which YAML 1.2 (what specs are) reads as strings
YAML11_BOOLEANS = {"yes": True, "no": False, "on": True, "off": False, "y": True, "n": False}
EMPTY_HINTS = {"components": "define at least one, e.g. `A: {type: attention, n_heads: 8}`",
               "set": "name the hyperparameters to change, e.g. `set: {window: 2048}`"}


def _misplaced_type_hint(value, path: Path) -> str | None:
    """A norm, embedding or head type written under `components:` belongs elsewhere."""
    if path[:1] != ("components",) or path[-1:] != ("type",) or value not in REGISTRY:
        return None
    role = REGISTRY[value].role
    where = {"norm": f"set it for the whole model as `model: {{norm: {{type: {value}}}}}`",
             "embedding": "the token embedding is built from `model:` (vocab_size, d_model)",
             "head": "the LM head is built from `model:` (tie_embeddings)"}.get(role, "")
    return (f"'{value}' is a {role}, not a layout component: {where}; layout components are "
            f"{', '.join(types_with_role('sublayer'))}")


def _translate_alternatives(error, doc, base, loc_path) -> list[Problem]:
    """For anyOf/oneOf, report the branch that matches the value's kind, else list the kinds."""
    inst = error.instance
    by_branch: dict[int, list] = {}
    for sub in error.context or []:
        by_branch.setdefault(sub.schema_path[0] if sub.schema_path else 0, []).append(sub)
    for branch, subs in by_branch.items():
        branch_schema = error.schema[error.validator][branch]
        if _matches_kind(inst, branch_schema):
            out = []
            for sub in subs:  # sub.absolute_path already includes the parent's path
                out += _translate(sub, doc, base, loc_path)
            if out:
                return out
    kinds = [(_JSON_TYPES.get(b.get("type"), "a value") + (f" ({b['description']})" if b.get("description") else ""))
             for b in error.schema[error.validator]]
    path = base + tuple(error.absolute_path)
    return [Problem(f"expected one of: {'; '.join(kinds)}; got {_describe(inst)}", path,
                    doc.loc(loc_path(path)))]


def _matches_kind(value, schema: dict) -> bool:
    t = schema.get("type")
    if t is None:
        return False
    checks = {"string": lambda x: isinstance(x, str), "array": lambda x: isinstance(x, list),
              "object": lambda x: isinstance(x, dict), "boolean": lambda x: isinstance(x, bool),
              "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
              "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
              "null": lambda x: x is None}
    types = t if isinstance(t, list) else [t]
    return any(checks[k](value) for k in types if k in checks)
