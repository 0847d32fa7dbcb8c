"""The pipeline's front half: load -> evaluate references -> validate -> resolve.

`load(path)` returns a ResolvedSpec (model settings, component definitions with every default
filled, and the canonical list of sublayers) or raises SpecError with every problem found.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

from . import components as C
from . import limits as L
from .errors import Path, Problem, SpecError, did_you_mean, format_path
from .expr import resolve_references
from .freeze import check as check_freeze
from .layout import Sublayer as Symbols, compact, expand_layout
from .loader import Document, load_with_extends, parse
from .schema import component_schema, strict_schema
from .validate import dedupe, schema_problems

NORM_NAME = "model.norm"  # the model's norm, as the spec names it (model: norm:) and as a
                          # `backend` dict or the CLI names it
MODEL_DEFAULTS = {"dtype": "float32", "tie_embeddings": False, "init_std": 0.02,
                  "norm": {"type": "rmsnorm"}}


@dataclass
class ComponentInstance:
    """A component with its full configuration (defaults filled) as used at one place."""

    name: str
    type: str
    config: dict
    backend: str = "auto"
    written: frozenset = frozenset()  # keys the spec set itself
    overrides: dict = field(default_factory=dict)  # keys changed by a per-sublayer override

    @property
    def component(self) -> C.Component:
        return C.get(self.type)


@dataclass
class Sublayer:
    """One pre-norm residual block: x + sum_i g_i f_i(norm(x)) (a single member has no gate)."""

    index: int
    members: list[ComponentInstance]
    gates: str = "scalar"  # a parallel group's gates: scalar, softmax or sigmoid (model.group_gates)

    @property
    def parallel(self) -> bool:
        return len(self.members) > 1

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple([m.name for m in self.members])  # a list first: faster than a generator


@dataclass
class ResolvedSpec:
    """A valid spec, resolved: what every later stage reads."""

    source: str
    files: list[str]
    model: C.base.ModelConfig
    norm: ComponentInstance
    components: dict[str, ComponentInstance]
    sublayers: list[Sublayer]
    data: dict  # the evaluated spec (extends merged, references resolved)
    freeze: tuple[str, ...] = ()  # what does not train (archspec/freeze.py)

    @property
    def layout_text(self) -> str:
        return compact([s.symbols for s in self.sublayers])

    @property
    def name(self) -> str:
        return self.model.name


def load(path: str | os.PathLike) -> ResolvedSpec:
    """Load, validate and resolve a spec file; raises SpecError listing every problem."""
    return resolve_document(load_with_extends(path), str(path))


def loads(text: str, name: str = "<string>") -> ResolvedSpec:
    """As `load`, from YAML text (no `extends`)."""
    return resolve_document(parse(text, name), name)


def resolve_document(doc: Document, source: str) -> ResolvedSpec:
    """Evaluate, validate and resolve. The layout is expanded before any component is
    configured, so every config is derived once, knowing the model's depth."""
    data, problems, broken = resolve_references(doc)
    # a value whose expression failed is None: that error is reported, not "expected ..., got null"
    problems += [p for p in schema_problems(data, doc, strict_schema()) if p.path not in broken]
    bad_paths = [p.path for p in problems] + list(broken)
    bad = {p[:2] for p in bad_paths}
    if any(p[:1] == ("model",) for p in bad_paths) or not isinstance(data.get("model"), dict):
        raise SpecError(problems)  # every component depends on the model's settings
    raw_components = data.get("components")
    if isinstance(raw_components, dict) and ("components",) not in bad:
        sublayer_symbols, found = _expand(data.get("layout"), set(raw_components), problems, doc)
        problems += found
    else:  # not a mapping, empty or too many: reported by the schema, and nothing to configure
        raw_components, sublayer_symbols = {}, []  # (the layout's check would only echo it)
    problems += _override_targets(data.get("overrides"), len(sublayer_symbols), bad, doc)
    # with a broken layout the depth is unknown: configure at depth 1 to report every problem
    model = _model_config(data, n_sublayers=max(1, len(sublayer_symbols)))
    norm, norm_problems = _configure(data["model"].get("norm", MODEL_DEFAULTS["norm"]), "norm",
                                     model, doc, ("model", "norm"))
    problems += norm_problems
    defs: dict[str, ComponentInstance] = {}
    for name, raw in raw_components.items():
        if ("components", name) in bad or not isinstance(raw, dict):
            defs[name] = None  # defined, but broken: usable as a layout symbol, not configured
            continue
        inst, found = _configure(raw, name, model, doc, ("components", name))
        defs[name] = inst
        problems += found
    sublayers = [Sublayer(i, [defs[s] for s in syms], model.group_gates if len(syms) > 1 else "scalar")
                 for i, syms in enumerate(sublayer_symbols)]
    problems += _group_gates(sublayers, data, doc)
    # overrides of sound components are checked even when others are broken: all errors at once
    problems += _apply_overrides(sublayers, data.get("overrides"), bad, model, doc)
    freeze, found = check_freeze(data.get("freeze") if ("freeze",) not in bad else None, sublayers, norm, model,
                                 doc, {name for name, inst in defs.items() if inst is None})
    problems += found
    if problems:
        raise SpecError(problems)
    problems += _shared_weight_conflicts(sublayers, model, doc)
    problems += _feed_problems(sublayers, doc, data.get("overrides"), check_groups=not problems)
    problems += _params_ceiling(sublayers, model, doc)
    if problems:
        raise SpecError(problems)
    return ResolvedSpec(source, doc.files, model, norm, defs, sublayers, data, freeze)


def _params_ceiling(sublayers: list[Sublayer], model, doc: Document) -> list[Problem]:
    """The model's parameters against L.PARAMS_CEILING, before any stage does per-node work:
    each distinct instance's parameters once, times its sublayers (members and their children,
    shared weights once, the embedding and an untied head; norms and gates, a few per sublayer,
    are left out: this is a lower bound, which is what a ceiling needs)."""
    counts: dict[int, list] = {}
    for sub in sublayers:
        for m in sub.members:
            counts.setdefault(id(m), [m, 0])[1] += 1
    shared: dict[str, int] = {}
    per_name: dict[str, int] = {}
    for m, n in counts.values():
        per_name[m.name] = per_name.get(m.name, 0) + n * m.component.param_count(m.config, model)
        for key, shapes in m.component.shared_params(m.config, model).items():
            shared[key] = C.base.numel(shapes)
    embedding = model.vocab_size * model.d_model * (1 if model.tie_embeddings else 2)
    total = sum(per_name.values()) + sum(shared.values()) + embedding
    if total <= L.PARAMS_CEILING:
        return []
    name = max(per_name, key=per_name.get)
    where = ("components", name)
    return [Problem(f"the model has at least {total:.3g} parameters, over the ceiling of "
                    f"{L.PARAMS_CEILING:,}; {name} accounts for {per_name[name]:.3g} of them", where,
                    doc.key_loc(where), f"{L.PARAMS_WHY}; check the sizes and the layout's repetitions")]


def _expand(layout, symbols: set[str], problems: list[Problem], doc: Document) -> tuple[list[Symbols], list[Problem]]:
    """The layout's sublayers (lists of symbols), unless the layout is already known bad."""
    if layout is None or ("layout",) in {p.path[:1] for p in problems}:
        return [], []
    sublayers, found = expand_layout(layout, symbols)
    return sublayers, [Problem(p.message, ("layout",) + p.path, doc.loc(("layout",) + p.path), p.hint)
                       for p in found]


def _shared_weight_conflicts(sublayers: list[Sublayer], model, doc: Document) -> list[Problem]:
    """Instances naming the same shared-weight key must agree on its shapes."""
    first: dict[str, tuple] = {}
    problems: list[Problem] = []
    reported = set()
    for sub in sublayers:
        for m in sub.members:
            for key, shapes in m.component.shared_params(m.config, model).items():
                if key not in first:
                    first[key] = (m, shapes)
                    continue
                owner, expected = first[key]
                if shapes != expected and (key, m.name) not in reported:
                    reported.add((key, m.name))
                    where = ("components", m.name)
                    problems.append(Problem(
                        f"shares weights '{key}' with component '{owner.name}' but needs other "
                        f"shapes ({_shapes_text(shapes)} vs {_shapes_text(expected)})", where,
                        doc.loc(where), "give both the same sizes, or share under different names"))
    return problems


def _feed_problems(sublayers: list[Sublayer], doc: Document, overrides=None,
                   check_groups: bool = True) -> list[Problem]:
    """A feed (Component.feeds_next: its output goes into the next sublayer's input) stands
    alone in its sublayer, and the next sublayer is not another feed, whose output would
    replace it. Each wrong place is reported once per symbol, at the layout. With
    `check_groups`, the `share` groups too (not when their shapes already conflict: the same
    mistake, reported once)."""
    problems: list[Problem] = []
    reported = set()
    for sub, nxt in zip(sublayers, sublayers[1:] + [None]):
        feeds = [m for m in sub.members if m.component.feeds_next]
        if not feeds:
            continue
        name = feeds[0].name
        if sub.parallel and ("parallel", name) not in reported:
            reported.add(("parallel", name))
            problems.append(Problem(
                f"'{name}' ({feeds[0].type}) feeds the next sublayer's input, so it cannot be a member "
                f"of the parallel group at sublayer {sub.index}", ("layout",), doc.loc(("layout",)),
                f"give '{name}' a sublayer of its own, just before the sublayer it feeds"))
        if nxt is not None and any(m.component.feeds_next for m in nxt.members) and ("twice", name) not in reported:
            reported.add(("twice", name))
            problems.append(Problem(
                f"'{name}' at sublayer {sub.index} feeds sublayer {nxt.index}, which is a feed itself: "
                "its output would be lost", ("layout",), doc.loc(("layout",)),
                "put an ordinary sublayer (the one the block feeds, e.g. a Mamba2 layer) after each feed"))
    problems += _lonely_share_groups(sublayers, doc)
    return problems + (_share_group_conflicts(sublayers, doc, overrides) if check_groups else [])


def _share_group_conflicts(sublayers: list[Sublayer], doc: Document, overrides=None) -> list[Problem]:
    """The uses of a `share` group (Component.whole_share_key, or a type's own `share` such as
    feed_block's) run one module, built from the first use's config: every use must have that
    config but for the type's `per_use_keys` (an override that changes one is an error, not a
    silently ignored setting), and a group belongs to one type."""
    first: dict[str, ComponentInstance] = {}
    problems: list[Problem] = []
    reported = set()
    for sub in sublayers:
        for m in sub.members:
            if not isinstance(m.config.get("share"), str):
                continue
            group = m.config["share"]
            owner = first.setdefault(group, m)
            if owner is m or (group, m.name) in reported:
                continue
            if owner.type != m.type:
                reported.add((group, m.name))
                where = ("components", m.name, "share")
                problems.append(Problem(
                    f"share group '{group}' is already the group of {owner.type} '{owner.name}'; a {m.type} "
                    "cannot share its weights", where, doc.loc(where), "give each type its own group name"))
                continue
            per_use = {"backend", *m.component.per_use_keys}
            differs = [k for k in sorted(set(owner.config) | set(m.config))
                       if k not in per_use and owner.config.get(k) != m.config.get(k)]
            if differs:
                reported.add((group, m.name))
                k = differs[0]
                where = _override_setting(overrides, sub.index, k) if k in m.overrides else ("components", m.name)
                problems.append(Problem(
                    f"'{m.name}' at sublayer {sub.index} shares group '{group}' with '{owner.name}' but sets "
                    f"{k}={json.dumps(m.config.get(k))} (vs {json.dumps(owner.config.get(k))}); a group is one "
                    "module, built once",
                    where, doc.loc(where), "give the uses the same settings, or a group each"))
    return problems


def _override_setting(overrides: list, index: int, key: str) -> Path:
    """The path of the last override that sets `key` at sublayer `index` (overrides were
    applied, so one does)."""
    found = ("overrides",)
    for k, ov in enumerate(overrides or []):
        at = ov.get("at") if isinstance(ov, dict) else None
        if (at == index or isinstance(at, list) and index in at) and key in ov.get("set", {}):
            found = ("overrides", k, "set", key)
    return found


def _lonely_share_groups(sublayers: list[Sublayer], doc: Document) -> list[Problem]:
    """A `share` group used at one sublayer only while a similar group name exists is a
    misspelt group: its block would silently get weights of its own."""
    users: dict[str, list[str]] = {}
    for sub in sublayers:
        for m in sub.members:
            group = m.config.get("share") if m.component.feeds_next or "share" in m.written else None
            if isinstance(group, str):
                users.setdefault(group, []).append(m.name)
    problems = []
    for group, names in users.items():
        near = did_you_mean(group, [g for g in users if g != group])
        if len(names) == 1 and near:
            (name,) = names
            where = ("components", name, "share")
            problems.append(Problem(f"share group '{group}' is used once (by '{name}'), so it shares nothing",
                                    where, doc.loc(where), near))
    return problems


def _shapes_text(shapes: dict) -> str:
    return ", ".join(f"{k} {list(v)}" for k, v in shapes.items())


def _model_config(data: dict, n_sublayers: int) -> C.base.ModelConfig:
    m = {**MODEL_DEFAULTS, **data["model"]}
    return C.base.ModelConfig(
        vocab_size=m["vocab_size"], d_model=m["d_model"], max_seq_len=m["max_seq_len"],
        dtype=m["dtype"], tie_embeddings=m["tie_embeddings"], init_std=float(m["init_std"]), n_sublayers=n_sublayers,
        name=m.get("name") or "model", learned_positions=m.get("learned_positions", False),
        scale_embeddings=m.get("scale_embeddings", False),
        logit_softcap=None if m.get("logit_softcap") is None else float(m["logit_softcap"]),
        post_norm=m.get("post_norm", False), group_gates=m.get("group_gates", "scalar"))


def _fill_defaults(type_name: str, written: dict) -> dict:
    """The schema's defaults overlaid with what the spec wrote, as a fresh dict (lists copied:
    derive and overrides change configs, never the schema's defaults or the spec's data)."""
    cfg = {k: _copy(v) for k, v in _defaults(type_name).items()}
    cfg.update({k: _copy(v) for k, v in written.items()})
    return cfg


def _defaults(type_name: str) -> dict:
    """Each key's default, in the schema's order; read from the component's own fragment each
    time (not from the cached full schema), so a default is what the type says now."""
    live = C.get(type_name).schema.get("properties", {})
    full = component_schema(type_name)["properties"]
    return {k: live.get(k, p)["default"] for k, p in full.items() if "default" in live.get(k, p)}


def _copy(value):
    """A value of a config, copied when it is a container (most are numbers and strings)."""
    return copy.deepcopy(value) if isinstance(value, (list, dict)) else value


def _configure(raw: dict, name: str, model, doc: Document, path: Path,
               located_at=None) -> tuple[ComponentInstance | None, list[Problem]]:
    """Defaults, derived values and semantic checks of one component config."""
    type_name = raw["type"]
    comp = C.get(type_name)
    cfg = comp.derive(_fill_defaults(type_name, raw), model)
    backend = cfg.pop("backend", "auto")
    cfg.pop("type", None)
    written = frozenset(k for k in raw if k not in ("type", "backend"))
    inst = ComponentInstance(name, type_name, cfg, backend, written)
    where = located_at or (lambda key: path + ((key,) if key else ()))
    problems = [Problem(i.message, where(i.key), doc.loc(where(i.key)), i.hint)
                for i in comp.check(cfg, model, written)]
    return inst, problems


def _group_gates(sublayers: list[Sublayer], data: dict, doc: Document) -> list[Problem]:
    """Token gates (model.group_gates, an override's group_gates) need a parallel group: set
    the overrides' kinds on their sublayers, and locate a gate asked of a group of one."""
    problems: list[Problem] = []
    kind = data["model"].get("group_gates", "scalar")
    if kind != "scalar" and sublayers and not any(s.parallel for s in sublayers):
        where = ("model", "group_gates")
        problems.append(Problem(f"group_gates: {kind} gates the members of parallel groups, and the layout "
                                "has none", where, doc.loc(where),
                                "write a parallel group such as '[A | F]', or remove group_gates"))
    overrides = data.get("overrides")
    for k, ov in enumerate(overrides if isinstance(overrides, list) else []):
        if not isinstance(ov, dict):
            continue
        path = ("overrides", k)
        if "set" not in ov and "group_gates" not in ov:
            problems.append(Problem("missing required key 'set'", path, doc.loc(path),
                                    "add `set:` (hyperparameters to change) or `group_gates:`"))
        if not isinstance(ov.get("group_gates"), str):
            continue
        for sub_path, index in _override_indices(ov):
            if index >= len(sublayers):
                continue  # reported by _override_targets
            sub = sublayers[index]
            if sub.parallel:
                sub.gates = ov["group_gates"]
            else:
                where = path + ("group_gates",)
                problems.append(Problem(f"sublayer {index} is one component ({', '.join(sub.symbols)}), not a "
                                        "parallel group: it has no gate", where, doc.loc(where),
                                        "gate a parallel group such as '[A | F]', or drop this sublayer from `at`"))
    return dedupe(problems)


def _override_indices(ov) -> list[tuple[Path, int]]:
    """(path of the index, index) for each integer an override's `at` names (bad ones skipped:
    the schema reports them)."""
    if not isinstance(ov, dict):
        return []
    at = ov.get("at")
    pairs = [(("at", j), i) for j, i in enumerate(at)] if isinstance(at, list) else [(("at",), at)]
    return [(sub, i) for sub, i in pairs if isinstance(i, int) and not isinstance(i, bool) and i >= 0]


def _override_targets(overrides, n: int, bad: set, doc: Document) -> list[Problem]:
    """What is wrong with overrides before any is applied, each override on its own: an index
    past the layout (known once the layout is; every one at once) and a `set` of `type`."""
    if not isinstance(overrides, list):
        return []
    problems: list[Problem] = []
    for k, ov in enumerate(overrides):
        path = ("overrides", k)
        if n:  # else the layout is broken and reported
            for sub, index in _override_indices(ov):
                if index >= n:
                    problems.append(Problem(f"sublayer {index} does not exist: the layout has {n} "
                                            f"(0 to {n - 1})", path + sub, doc.loc(path + sub),
                                            "sublayer indices count from 0 over the expanded layout"))
        if isinstance(ov, dict) and isinstance(ov.get("set"), dict) and "type" in ov["set"]:
            where = path + ("set", "type")
            problems.append(Problem("an override cannot change a component's type", where, doc.key_loc(where),
                                    "define a component of that type under `components:` and use its "
                                    "symbol at that place in the layout"))
    return problems


def _apply_overrides(sublayers: list[Sublayer], overrides, bad: set, model, doc: Document) -> list[Problem]:
    """Apply each sound override (overrides the schema or _override_targets refused are left
    out, and so are sublayers whose component is broken: both are reported already)."""
    if not isinstance(overrides, list) or ("overrides",) in bad:
        return []
    problems: list[Problem] = []
    n = len(sublayers)
    for k, ov in enumerate(overrides):
        path = ("overrides", k)
        if path in bad or not isinstance(ov, dict) or "type" in ov.get("set", {}) or "set" not in ov:
            continue  # (an override of only group_gates changes no component: _group_gates)
        # one override changes equal members equally: each distinct member (an instance that
        # many sublayers share) is checked and configured once, and its problems reported once
        done: dict[int, ComponentInstance | None] = {}
        seen: set[int] = set()
        for _, index in _override_indices(ov):
            if index >= n or index in seen:
                continue  # reported by _override_targets; an index listed twice is applied once
            seen.add(index)
            sub = sublayers[index]
            member = _pick_member(sub, ov.get("component"), path, doc, problems)
            if member is None:
                continue
            if id(member) not in done:
                done[id(member)] = _override_member(member, ov["set"], index, path, model, doc, problems)
            inst = done[id(member)]
            if inst is not None:
                sub.members = [inst if m is member else m for m in sub.members]
    return dedupe(problems)  # `at: [0, 2]` with one bad value is one mistake, not two


def _override_member(member: ComponentInstance, changed: dict, index: int, path: Path, model,
                     doc: Document, problems: list[Problem]) -> ComponentInstance | None:
    """The member with an override's `set` applied, validated like a component (schema, then
    its rules); None when the schema refuses it. Problems are appended, located in the override."""
    merged = {"type": member.type, "backend": member.backend,
              **{key: member.config[key] for key in member.written}, **changed}
    located = _override_locator(path, changed)
    # the member's own keys passed already: only what the override sets is checked again
    found = schema_problems({"type": member.type, **changed}, doc, _partial_schema(member.type), ("x",),
                            lambda p: located(p[1] if len(p) > 1 else None))
    for f in found:
        f.path = located(f.path[1] if len(f.path) > 1 else None)
    if found:
        problems += found
        return None
    inst, found = _configure(merged, member.name, model, doc, path, located_at=located)
    for f in found:
        f.message = f"sublayer {index} ({member.name}) with this override: {f.message}"
    problems += found
    inst.overrides = {**member.overrides, **changed}
    return inst


@lru_cache(maxsize=None)
def _partial_schema(type_name: str) -> dict:
    """A type's schema without its required keys: what an override's `set` must satisfy (the
    member it changes has them)."""
    return {k: v for k, v in component_schema(type_name).items() if k != "required"}


def _override_locator(path: Path, changed: dict):
    """Where a problem of an overridden config is shown: at the key the override sets, or at its
    `set:` when the problem is on a key it leaves alone (the override still caused it)."""
    return lambda key: path + ("set", key) if key in changed else path + ("set",)


def _pick_member(sub: Sublayer, name, path, doc, problems) -> ComponentInstance | None:
    """The member an override changes; None (with the problem reported, unless the member is a
    broken component, reported already) when there is none."""
    if any(m is None for m in sub.members):
        return None  # a broken component (reported already) cannot be configured
    if name is None:
        if sub.parallel:
            problems.append(Problem(f"sublayer {sub.index} is a parallel group of "
                                    f"{', '.join(sub.symbols)}: say which member to change",
                                    path, doc.loc(path), f"add `component: {sub.symbols[0]}`"))
            return None
        return sub.members[0]
    for m in sub.members:
        if m.name == name:
            return m
    problems.append(Problem(f"sublayer {sub.index} has no component '{name}' (it has "
                            f"{', '.join(sub.symbols)})", path + ("component",),
                            doc.loc(path + ("component",)),
                            did_you_mean(name, sub.symbols) or "name a member of that sublayer"))
    return None
