"""archspec.json, the description half of a saved model: what the build used, written out, and
read back into a ResolvedSpec without resolving anything again.

Written (format 1): the format version; the model settings (every ModelConfig field); the norm,
each component definition and each sublayer's members, every one as its type, its requested
backend, its full config (defaults filled, derived keys, per-sublayer overrides applied), the
keys the spec wrote itself and its overrides; the evaluated spec it came from (for the record);
the build (the weights' dtype, the backend chosen per node, the parameter count); and the
weights' aliases (names that share one tensor, stored once in model.safetensors) and the
SHA-256 of model.safetensors (`sha256sum` checks it too).

Read: the ResolvedSpec is built from exactly these configs, so a component default changed
after the save does not change the rebuilt model (`archspec.load` of the YAML would take the
new default). Each saved config is checked as a spec would be: the component's JSON Schema,
its key set (a key this archspec needs but the file lacks, or one it does not know) and its
semantic `check()`; the other entries are checked for their shape; every problem is reported
at once, with its line and column in the file (found in the JSON text itself: json_offsets).
Format 0, the `spec.resolved.json` that `archspec build --save` wrote before, is upgraded on
reading (`upgrade_format_0`).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from . import __version__
from . import components as C
from .components.base import DTYPE_BYTES, Component, ModelConfig
from .errors import CheckpointError, Loc, Path, Problem, did_you_mean, one_of
from .layout import MAX_SUBLAYERS
from .loader import Document
from .schema import component_schema, strict_schema
from .spec import ComponentInstance, ResolvedSpec, Sublayer, _fill_defaults
from .validate import _describe, schema_problems

FORMAT_NAME, FORMAT_VERSION = "archspec saved model", 1
INSTANCE_KEYS = ("type", "backend", "config", "written", "overrides")
MEMBER_KEYS = ("symbol", *INSTANCE_KEYS)
_NO_LOCATIONS = Document({})  # problems are located afterwards, from the file's text
_KINDS = {dict: "a mapping", list: "a list", str: "a string", int: "an integer"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class SavedRecord:
    """What archspec.json says: the spec to rebuild, the weights' dtype and aliases, the build."""

    spec: ResolvedSpec
    dtype: str
    aliases: dict[str, str]  # state-dict name -> the name its tensor is stored under
    build: dict  # as saved: dtype, backends chosen per node, params (and fallbacks)
    sha256: str | None = None  # of the weights file; None in files written before it was recorded


# --- writing --------------------------------------------------------------------------------------
def record(model, aliases: dict[str, str], sha256: str | None = None) -> dict:
    """archspec.json's content for a built model (its `.spec` is the ResolvedSpec it came from),
    whose weights file has the digest `sha256`."""
    spec = model.spec
    weights = {"aliases": dict(aliases), **({"sha256": sha256} if sha256 else {})}
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "archspec_version": __version__, "source": spec.source, "files": list(spec.files),
            "layout": spec.layout_text, "model": dataclasses.asdict(spec.model),
            "norm": _instance_json(spec.norm),
            "components": {k: _instance_json(v) for k, v in spec.components.items()},
            "sublayers": [{"index": s.index,
                           "members": [{"symbol": m.name, **_instance_json(m)} for m in s.members],
                           **({"gates": s.gates} if s.gates != "scalar" else {})}  # token gates
                          for s in spec.sublayers],
            **({"freeze": list(spec.freeze)} if spec.freeze else {}),
            "build": build_record(model), "weights": weights,
            "spec": spec.data}


def _instance_json(m: ComponentInstance) -> dict:
    return {"type": m.type, "backend": m.backend, "config": m.config,
            "written": sorted(m.written), "overrides": m.overrides}


def build_record(model) -> dict:
    """How the weights were built: their dtype, each node's backend (and why one fell back)."""
    first = next(model.parameters())
    out = {"dtype": _dtype_name(first.dtype),
           "backends": {k: str(v) for k, v in model.backends.items()},
           "params": sum(p.numel() for p in model.parameters())}
    fallbacks = {k: v.fallback for k, v in model.backends.items() if getattr(v, "fallback", None)}
    return {**out, "fallbacks": fallbacks} if fallbacks else out


# --- reading --------------------------------------------------------------------------------------
def read_record(data: Any, file: str, text: str) -> SavedRecord:
    """The SavedRecord of a format-1 (or upgraded format-0) archspec.json; raises CheckpointError
    listing every problem found, located in `text`."""
    r = _Reader()
    if not isinstance(data, dict):
        r.problem((), f"expected a mapping at the top, got {_describe(data)}")
        raise _damaged(r, file, text)
    model = _model(r, data)
    sections = {key: r.get(data, key, kind, ()) for key, kind in _SECTIONS.items()}
    _provenance(r, data)
    dtype = _build(r, sections["build"])
    aliases, sha256 = _weights(r, sections["weights"])
    _depth_limit(r, model, sections["sublayers"])
    if model is None or r.problems:  # the configs are checked against the model's settings
        raise _damaged(r, file, text)
    spec = _spec(r, model, sections, data, file)
    if r.problems:
        raise _damaged(r, file, text)
    return SavedRecord(spec, dtype, aliases, sections["build"], sha256)


_SECTIONS = {"norm": dict, "components": dict, "sublayers": list, "build": dict, "weights": dict}
# entries kept for the record (the rebuild reads none of them): each must still have its shape
_PROVENANCE = {"archspec_version": str, "source": str, "files": list, "layout": str, "spec": dict}


def _spec(r: _Reader, model: ModelConfig, sections: dict, data: dict, file: str) -> ResolvedSpec | None:
    """The ResolvedSpec of the saved instances, each checked; None when one has a problem."""
    norm = _instance(r, sections["norm"], ("norm",), "norm", model, "norm")
    components = {k: _instance(r, v, ("components", k), "sublayer", model, k)
                  for k, v in sections["components"].items()}
    sublayers = [_sublayer(r, raw, k, model, components) for k, raw in enumerate(sections["sublayers"])]
    _check_depth(r, model, sublayers)
    if r.problems:
        return None
    _shared_weight_conflicts(r, sublayers, model)
    files = data.get("files") or [file]
    freeze = data.get("freeze", [])
    if not isinstance(freeze, list) or not all(isinstance(e, str) for e in freeze):
        r.problem(("freeze",), f"expected a list of names, got {_describe(freeze)}")
        return None
    return ResolvedSpec(file, files, model, norm, components, sublayers, data.get("spec") or {}, tuple(freeze))


def format_version(data: Any, file: str) -> int:
    """The file's format version; a CheckpointError for a file that is not an archspec.json
    (no or another `format`), or a missing, unknown or newer version."""
    name = data.get("format") if isinstance(data, dict) else None
    if name != FORMAT_NAME:
        what = f"its 'format' is {name!r}" if name is not None else \
            ("it has no 'format'" if isinstance(data, dict) else f"it holds {_describe(data)}")
        raise CheckpointError(f"{file}: not an archspec.json written by archspec.save ({what}, "
                              f"not '{FORMAT_NAME}'); give the directory archspec.save wrote, or "
                              "restore the file")
    version = data.get("format_version")
    if version is None:
        raise CheckpointError(f"{file}: no 'format_version': not an archspec.json written by "
                              "archspec.save (restore the file, or save the model again)")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{file}: unknown format_version {version!r} (this archspec reads "
                              f"format {FORMAT_VERSION}); restore the file, or save the model again")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: format_version {version} was written by a newer archspec; "
                              f"this one ({__version__}) reads format {FORMAT_VERSION}: upgrade "
                              "archspec to load it")
    return version


class _Reader:
    """Collects every problem of the file (path, message, hint) rather than stopping at the first."""

    def __init__(self):
        self.problems: list[Problem] = []

    def problem(self, path: Path, message: str, hint: str | None = None) -> None:
        self.problems.append(Problem(message, tuple(path), None, hint))

    def get(self, obj: dict, key: str, kind: type, path: Path) -> Any:
        """obj[key] when present and a `kind`, else None (and a problem)."""
        if key not in obj:
            self.problem(path, f"missing key '{key}'")
            return None
        value = obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            self.problem(tuple(path) + (key,), f"expected {_KINDS[kind]}, got {_describe(value)}")
            return None
        return value

    def unknown_keys(self, obj: dict, allowed, path: Path) -> None:
        for key in obj:
            if key not in allowed:
                self.problem(tuple(path) + (key,), f"unknown key '{key}'",
                             did_you_mean(key, allowed) or f"allowed keys here: {', '.join(allowed)}")


def _damaged(r: _Reader, file: str, text: str) -> CheckpointError:
    n = len(r.problems)
    return CheckpointError(
        f"{file}: the saved spec is damaged ({n} problem{'s' if n != 1 else ''}); it is written by "
        "archspec.save: restore it from the original save, or save the model again",
        _locate(r.problems, file, text))


def _locate(problems: list[Problem], file: str, text: str) -> list[Problem]:
    """Give each problem the line and column of its path in the file: of the key for a mapping's
    entry, of the item for a list's, of the nearest enclosing one for an entry that is missing."""
    offsets = json_offsets(text, [p.path for p in problems])
    for p in problems:
        path = tuple(p.path)
        while path not in offsets and path:
            path = path[:-1]
        p.loc = _line_column(file, text, offsets.get(path, 0))
    return problems


def _line_column(file: str, text: str, offset: int) -> Loc:
    line_start = text.rfind("\n", 0, offset) + 1
    return Loc(file, text.count("\n", 0, offset) + 1, offset - line_start + 1)


# --- where a path is in the JSON text -------------------------------------------------------------
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def json_offsets(text: str, paths) -> dict[tuple, int]:
    """The offset in the JSON `text` of each of `paths` (and of their prefixes) that it holds:
    of the key of a mapping's entry, of a list's item. One pass over the text that descends only
    where a path leads, skips every other value with the C decoder and stops once all are found
    (so a duplicated key is found where it first appears). `text` is valid JSON (it was decoded)."""
    wanted: dict = {}
    for path in paths:
        node = wanted
        for step in path:
            node = node.setdefault(step, {})
    locator = _Locator(text, wanted)
    try:
        locator.walk(locator.found[()], wanted, ())
    except _AllFound:
        pass
    except (ValueError, IndexError, RecursionError):  # not JSON after all: keep what was found
        pass
    return locator.found


class _AllFound(Exception):
    pass


class _Locator:
    """The state of one json_offsets pass: the text, the offsets found, how many are left."""

    def __init__(self, text: str, wanted: dict):
        self.text = text
        self.found: dict[tuple, int] = {(): _SPACE.match(text).end()}
        self.left = _count(wanted)

    def walk(self, i: int, wanted: dict, path: tuple) -> int:
        """Record the offsets of `wanted`'s entries in the value at text[i]; its end offset."""
        text = self.text
        if not wanted or text[i] not in "{[":
            return _DECODER.raw_decode(text, i)[1]
        close, k = ("}" if text[i] == "{" else "]"), 0
        i = _SPACE.match(text, i + 1).end()
        while text[i] != close:
            at = i
            if close == "}":
                step, i = json.decoder.scanstring(text, i + 1)
                i = _SPACE.match(text, _SPACE.match(text, i).end() + 1).end()  # past the colon
            else:
                step = k
            if step in wanted and path + (step,) not in self.found:
                self.found[path + (step,)] = at
                self.left -= 1
                if not self.left:
                    raise _AllFound
                i = self.walk(i, wanted[step], path + (step,))
            else:
                i = _DECODER.raw_decode(text, i)[1]
            i = _SPACE.match(text, i).end()
            if text[i] == ",":
                i = _SPACE.match(text, i + 1).end()
            k += 1
        return i + 1


def _count(tree: dict) -> int:
    return sum(1 + _count(sub) for sub in tree.values())


# --- the model, the build, the weights' aliases ---------------------------------------------------
# model settings newer than the format's first files, absent from older records: their default
# is what an older archspec built (issue 19's published-model options; parallel groups' gates
# were scalars)
MODEL_FIELDS_ADDED_LATER = frozenset({"learned_positions", "scale_embeddings", "logit_softcap", "post_norm",
                                      "group_gates"})


def _model(r: _Reader, data: dict) -> ModelConfig | None:
    raw = r.get(data, "model", dict, ())
    if raw is None:
        return None
    before = len(r.problems)
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    schema = _model_schema()
    for name in fields:
        if name in MODEL_FIELDS_ADDED_LATER:
            continue  # absent from older files: the default (what those models had)
        if name not in raw and name not in schema["required"]:  # the schema reports those
            r.problem(("model",), f"missing key '{name}'")
    r.unknown_keys(raw, fields, ("model",))
    settings = {k: v for k, v in raw.items() if k in fields and k != "n_sublayers"}
    r.problems += _schema_problems(settings, schema, ("model",))
    n = raw.get("n_sublayers")
    if "n_sublayers" in raw and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        r.problem(("model", "n_sublayers"), f"expected an integer >= 1, got {_describe(n)}")
    if len(r.problems) > before:
        return None
    return ModelConfig(**{**raw, "init_std": float(raw["init_std"])})


def _model_schema() -> dict:
    schema = strict_schema()
    return {**schema["$defs"]["model"], "$defs": schema["$defs"]}


def _schema_problems(data: dict, schema: dict, where: Path) -> list[Problem]:
    """The spec validator's problems, less its hints about `${...}` expressions: archspec.json
    holds evaluated values, so those hints would mislead."""
    found = schema_problems(data, _NO_LOCATIONS, schema, where)
    for p in found:
        if p.hint and "${" in p.hint:
            p.hint = None
    return found


def _provenance(r: _Reader, data: dict) -> None:
    """The entries kept for the record: absent, or of the shape archspec.save writes."""
    for key, kind in _PROVENANCE.items():
        if key in data:
            r.get(data, key, kind, ())
    files = data.get("files")
    if isinstance(files, list):
        _each(r, files, str, ("files",), "a file name")


def _each(r: _Reader, items, kind: type, path: Path, what: str) -> None:
    """A problem at each item of a list (or value of a mapping) that is not a `kind`."""
    pairs = items.items() if isinstance(items, dict) else enumerate(items)
    for key, value in pairs:
        if not isinstance(value, kind):
            r.problem(tuple(path) + (key,), f"expected {what}, got {_describe(value)}")


def _build(r: _Reader, build: dict | None) -> str | None:
    """The weights' dtype; the rest of the build record checked for its shape."""
    if build is None:
        return None
    dtype = r.get(build, "dtype", str, ("build",))
    if dtype is not None and dtype not in DTYPE_BYTES:
        r.problem(("build", "dtype"), f"unknown dtype '{dtype}'", f"one of {one_of(DTYPE_BYTES)}")
    params = build.get("params")
    if "params" in build and (isinstance(params, bool) or not isinstance(params, int) or params < 0):
        r.problem(("build", "params"), f"expected a parameter count, got {_describe(params)}")
    for key in ("backends", "fallbacks"):
        if key in build and r.get(build, key, dict, ("build",)) is not None:
            _each(r, build[key], str, ("build", key), "a backend name" if key == "backends" else "a reason")
    return dtype


def _weights(r: _Reader, weights: dict | None) -> tuple[dict[str, str], str | None]:
    """The aliases (name -> the name its tensor is stored under) and the weights file's digest."""
    if weights is None:
        return {}, None
    aliases = r.get(weights, "aliases", dict, ("weights",)) or {}
    _each(r, aliases, str, ("weights", "aliases"), "a tensor name")
    sha256 = weights.get("sha256")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        r.problem(("weights", "sha256"), f"expected a SHA-256 digest (64 hex digits), got {_describe(sha256)}")
        sha256 = None
    return aliases, sha256


def _depth_limit(r: _Reader, model: ModelConfig | None, sublayers: list | None) -> None:
    """No more sublayers than a spec can describe: a damaged count stops here, before any of
    them is checked or built."""
    counts = ([("model", "n_sublayers")] if model and model.n_sublayers > MAX_SUBLAYERS else []) + \
             ([("sublayers",)] if sublayers is not None and len(sublayers) > MAX_SUBLAYERS else [])
    for path in counts:
        r.problem(path, f"more than {MAX_SUBLAYERS:,} sublayers, the most a spec can describe")


def _check_depth(r: _Reader, model: ModelConfig, sublayers: list) -> None:
    if model.n_sublayers != len(sublayers):
        r.problem(("model", "n_sublayers"), f"says {model.n_sublayers} sublayers, but 'sublayers' "
                  f"lists {len(sublayers)}")


# --- component instances --------------------------------------------------------------------------
def _sublayer(r: _Reader, raw: Any, k: int, model: ModelConfig,
              components: dict[str, ComponentInstance | None]) -> Sublayer | None:
    path = ("sublayers", k)
    if not isinstance(raw, dict):
        r.problem(path, f"expected a mapping, got {_describe(raw)}")
        return None
    index = r.get(raw, "index", int, path)
    if index is not None and index != k:
        r.problem(path + ("index",), f"index {index} at position {k}: sublayers are saved in order")
    members_raw = r.get(raw, "members", list, path)
    r.unknown_keys(raw, ("index", "members", "gates"), path)
    gates = raw.get("gates", "scalar")
    if gates not in ("scalar", "softmax", "sigmoid"):
        r.problem(path + ("gates",), f"expected scalar, softmax or sigmoid, got {_describe(gates)}")
    if not members_raw:
        if members_raw is not None:
            r.problem(path + ("members",), "a sublayer needs at least one member")
        return None
    members = [_member(r, m, path + ("members", j), model, components) for j, m in enumerate(members_raw)]
    symbols = [m.name for m in members if m is not None]
    for s in {s for s in symbols if symbols.count(s) > 1}:
        r.problem(path + ("members",), f"member '{s}' appears twice (a parallel group names each once)")
    return Sublayer(k, members, gates) if all(m is not None for m in members) else None


def _member(r: _Reader, raw: Any, path: Path, model: ModelConfig,
            components: dict[str, ComponentInstance | None]) -> ComponentInstance | None:
    symbol = r.get(raw, "symbol", str, path) if isinstance(raw, dict) else None
    if symbol is not None and symbol not in components:
        r.problem(path + ("symbol",), f"'{symbol}' is not among the saved components",
                  did_you_mean(symbol, components) or f"the saved components: {', '.join(components)}")
        return None
    inst = _instance(r, raw, path, "sublayer", model, symbol, MEMBER_KEYS)
    definition = components.get(symbol)
    if inst is not None and definition is not None and definition.type != inst.type:
        r.problem(path + ("type",), f"'{symbol}' is a {definition.type} in 'components' but a "
                  f"{inst.type} here")
    return inst


def _instance(r: _Reader, raw: Any, path: Path, role: str, model: ModelConfig, symbol: str | None,
              allowed=INSTANCE_KEYS) -> ComponentInstance | None:
    """One saved component instance, checked as the spec's resolution would check it."""
    if not isinstance(raw, dict):
        r.problem(path, f"expected a mapping, got {_describe(raw)}")
        return None
    before = len(r.problems)
    type_name, backend, config, written, overrides = (
        r.get(raw, "type", str, path), r.get(raw, "backend", str, path),
        r.get(raw, "config", dict, path), r.get(raw, "written", list, path),
        r.get(raw, "overrides", dict, path))
    r.unknown_keys(raw, allowed, path)
    if written is not None:
        _each(r, written, str, path + ("written",), "a key name")
    comp = _component(r, type_name, role, path) if type_name is not None else None
    if len(r.problems) > before or comp is None or symbol is None:
        return None
    if backend != "auto" and backend not in comp.backends:
        r.problem(path + ("backend",), f"unknown backend '{backend}' for {comp.type}",
                  f"one of {one_of(['auto', *comp.backends])}")
    _check_config(r, comp, config, written, overrides, model, path)
    if len(r.problems) > before:
        return None
    return ComponentInstance(symbol, type_name, config, backend, frozenset(written), overrides)


def _component(r: _Reader, type_name: str, role: str, path: Path) -> Component | None:
    if type_name in C.REGISTRY and C.get(type_name).role == role:
        return C.get(type_name)
    choices = C.types_with_role(role)
    r.problem(path + ("type",), f"unknown {role} type '{type_name}'",
              did_you_mean(type_name, choices) or f"one of {one_of(choices)}")
    return None


def _check_config(r: _Reader, comp: Component, config: dict, written: list, overrides: dict,
                  model: ModelConfig, path: Path) -> None:
    """The component's schema, then its key set, then its semantic checks, as a spec's."""
    where = path + ("config",)
    schema = component_schema(comp.type)
    declared = {"type": comp.type, **{k: v for k, v in config.items()
                                      if k in schema["properties"] and k not in ("type", "backend")}}
    found = _schema_problems(declared, schema, where)
    if found:
        r.problems += found
        return
    before = len(r.problems)
    expected = _expected_keys(r, comp, declared, model, where)
    if expected is not None:
        _check_keys(r, comp, config, written, overrides, expected, path)
    if len(r.problems) == before:
        for issue in comp.check(config, model, frozenset(written)):
            r.problem(where + ((issue.key,) if issue.key else ()), issue.message, issue.hint)


def _check_keys(r: _Reader, comp: Component, config: dict, written: list, overrides: dict,
                expected: set[str], path: Path) -> None:
    """The config holds exactly the expected keys; `written` and `overrides` name its keys."""
    where = path + ("config",)
    for key in sorted(expected - set(config)):
        r.problem(where, f"missing key '{key}', which this archspec's {comp.type} needs",
                  "the file was written by another archspec version or edited; add the key with "
                  "the value the saved model was trained with")
    r.unknown_keys(config, sorted(expected), where)
    for part, keys in (("written", dict(enumerate(written))), ("overrides", {k: k for k in overrides})):
        for at, key in keys.items():
            if key not in config and key not in expected:  # a missing one is reported above
                r.problem(path + (part, at), f"'{key}' is not a key of {comp.type}")


def _expected_keys(r: _Reader, comp: Component, declared: dict, model: ModelConfig,
                   where: Path) -> set[str] | None:
    """The keys a resolved config of this type holds here: the schema's defaults, the saved
    values and what `derive` adds. Only the key set is used; every value stays the saved one."""
    try:
        derived = comp.derive(_fill_defaults(comp.type, declared), model)
    except Exception as e:  # noqa: BLE001 - a damaged value may break derive: report, do not crash
        r.problem(where, f"the {comp.type} config cannot be completed: {type(e).__name__}: {e}")
        return None
    return set(derived) - {"type", "backend"}


def _shared_weight_conflicts(r: _Reader, sublayers: list[Sublayer], model: ModelConfig) -> None:
    """Instances naming the same shared-weight key must agree on its shapes (as spec.py checks)."""
    first: dict[str, tuple] = {}
    for sub in sublayers:
        for j, m in enumerate(sub.members):
            for key, shapes in m.component.shared_params(m.config, model).items():
                owner, expected = first.setdefault(key, (f"sublayer {sub.index} ({m.name})", shapes))
                if shapes != expected:
                    r.problem(("sublayers", sub.index, "members", j, "config"),
                              f"shares weights '{key}' with {owner} but needs other shapes")


# --- format 0 -------------------------------------------------------------------------------------
def upgrade_format_0(old: Any) -> Any:
    """The spec.resolved.json that `archspec build --save` wrote before format 1 (beside a
    model.pt), as format 1: the same resolved configs, but members keyed by symbol and no
    `written` keys; those are taken from the evaluated spec it also holds (a definition's keys,
    plus its overridden ones, as the resolution counted them). What is malformed stays so, for
    read_record to report."""
    if not isinstance(old, dict):
        return old
    spec = old.get("spec") if isinstance(old.get("spec"), dict) else {}
    defined = spec.get("components") if isinstance(spec.get("components"), dict) else {}
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    new = {**old, "format_version": FORMAT_VERSION, "weights": {"aliases": {}}}
    if isinstance(old.get("model"), dict):  # format 0 repeated the model norm's raw spec there
        new["model"] = {k: v for k, v in old["model"].items() if k != "norm"}
    new["norm"] = _upgrade_instance(old.get("norm"), model.get("norm"))
    if isinstance(old.get("components"), dict):
        new["components"] = {k: _upgrade_instance(v, defined.get(k)) for k, v in old["components"].items()}
    if isinstance(old.get("sublayers"), list):
        new["sublayers"] = [_upgrade_sublayer(s, defined) for s in old["sublayers"]]
    return new


def _upgrade_sublayer(sub: Any, defined: dict) -> Any:
    if not isinstance(sub, dict) or not isinstance(sub.get("members"), dict):
        return sub
    members = [{"symbol": name, **_upgrade_instance(inst, defined.get(name))}
               if isinstance(inst, dict) else inst for name, inst in sub["members"].items()]
    return {**sub, "members": members}


def _upgrade_instance(inst: Any, written_spec: Any) -> Any:
    if not isinstance(inst, dict):
        return inst
    overrides = inst.get("overrides", {})
    written = set(written_spec) - {"type", "backend"} if isinstance(written_spec, dict) else set()
    written |= set(overrides) if isinstance(overrides, dict) else set()
    return {**inst, "written": sorted(written), "overrides": overrides}


def _dtype_name(dtype) -> str:
    from .components.modules import DTYPE_NAMES
    return DTYPE_NAMES[dtype]
