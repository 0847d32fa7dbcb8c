"""Freezing: which parameters train. A spec's top-level `freeze:` lists what does not
(docs/spec.md, "Freezing"); everything else trains.

    freeze: [embedding, head, norms, A, D.ffn]

An entry is one of
    embedding        the token embedding
    head             the LM head (with tie_embeddings it is the embedding's table: name both)
    norms            every norm (each sublayer's and the final one)
    gates            the gates of every parallel group (scalar or token gates)
    SYMBOL           a component of `components:`, at every place the layout uses it
    SYMBOL.CHILD     a component it is built from (Component.children), e.g. `D.ffn`, `D.adapters.0`

Shared weights (a parameter that several uses read: PKM values, the tied embedding and head)
are frozen when every use is frozen; a freeze list that freezes some of their uses and not
others is an error, as is an entry that names nothing or freezes no parameter. Validation
(`check`) runs on the resolved sublayers; the plan marks each node (`Node.frozen`), and the
accounting, report, build and diff read that. No torch here.
"""
from __future__ import annotations

from .errors import Problem, did_you_mean

EMBEDDING, HEAD, NORMS, GATES = "embedding", "head", "norms", "gates"
MODEL_PARTS = (EMBEDDING, HEAD, NORMS, GATES)


def child_paths(inst, model, prefix: str = "") -> dict[str, object]:
    """Every child of an instance (and theirs) by its path below it ('ffn', 'adapters.0'): the
    Child objects, so that callers can count their parameters."""
    out: dict[str, object] = {}
    for key, c in inst.component.children(inst.config, model).items():
        out[prefix + key] = c
        out.update(child_paths(_AsInstance(c), model, f"{prefix}{key}."))
    return out


class _AsInstance:
    """A Child seen as an instance (component and config), for child_paths' recursion."""

    def __init__(self, c):
        self.component, self.config = c.component, c.config


def check(raw, sublayers, norm, model, doc, broken=frozenset()) -> tuple[tuple[str, ...], list[Problem]]:
    """The freeze entries of a spec (`raw`: its `freeze:` value, None when absent) against its
    resolved sublayers: (entries, problems), every problem located at its entry. Entries naming
    a `broken` component (its own problems reported) are left alone."""
    if not isinstance(raw, list) or not all(isinstance(e, str) for e in raw):
        return (), []  # absent, or refused by the schema
    problems: list[Problem] = []
    uses: dict[str, list] = {}  # symbol -> its distinct instances in the layout
    known: set[int] = set()
    for sub in sublayers:
        for m in sub.members:
            if m is not None and id(m) not in known:
                known.add(id(m))
                uses.setdefault(m.name, []).append(m)
    parallel = any(sub.parallel for sub in sublayers)
    # what an unknown entry is compared with, made once (did_you_mean indexes one collection)
    names = [*MODEL_PARTS, *uses]
    listing = ", ".join([*MODEL_PARTS, *sorted(uses)[:20]])
    asked = _Asked()
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = ("freeze", i)

        def problem(message: str, hint: str | None) -> None:
            problems.append(Problem(message, where, doc.loc(where), hint))

        if entry.partition(".")[0] in broken:
            continue
        if entry in seen:
            problem(f"'{entry}' is listed twice", "list each part once")
            continue
        seen.add(entry)
        why = _entry_problem(entry, uses, parallel, norm, model, names, listing, asked)
        if why is not None:
            problem(*why)
    problems += _shared_problems(raw, uses, model, doc)
    if model.tie_embeddings and (EMBEDDING in raw) != (HEAD in raw):
        i = raw.index(EMBEDDING if EMBEDDING in raw else HEAD)
        other = HEAD if EMBEDDING in raw else EMBEDDING
        problems.append(Problem(f"the LM head is tied to the embedding (one table), so '{raw[i]}' "
                                f"alone freezes half of a shared weight", ("freeze", i), doc.loc(("freeze", i)),
                                f"freeze both (add '{other}') or neither"))
    return tuple(raw), problems


class _Asked:
    """What one check has worked out: each instance's child_paths, and how many more misspelled
    child paths get a 'did you mean' (each compares the entry with every child of the component,
    so thousands of them would cost errors x children; the rest get the list of children)."""

    def __init__(self, hints: int = 64):
        self.paths: dict[int, dict] = {}
        self.hints_left = hints


def _entry_problem(entry: str, uses: dict, parallel: bool, norm, model, names: list[str],
                   listing: str, asked: _Asked) -> tuple[str, str | None] | None:
    """(message, hint) when `entry` names nothing to freeze, else None; `names` and `listing`:
    what it may name, for a hint."""
    if entry in (EMBEDDING, HEAD):
        return None  # a tied head is the embedding's table: checked with it (check)
    if entry == NORMS:
        if norm.component.param_count(norm.config, model) == 0:
            return f"the model's norm ({norm.type}) has no parameters: 'norms' freezes nothing", "remove it"
        return None
    if entry == GATES:
        if not parallel:
            return ("the layout has no parallel group, so there are no gates to freeze",
                    "remove 'gates', or write a parallel group such as '[A | F]'")
        return None
    symbol, _, below = entry.partition(".") if entry not in uses else (entry, "", "")
    if symbol not in uses:
        return (f"'{entry}' names no component the layout uses nor a model part",
                did_you_mean(entry, names) or f"name one of: {listing}, or SYMBOL.CHILD")
    if not below:
        if all(m.component.param_count(m.config, model) == 0 for m in uses[symbol]):
            return f"component '{symbol}' has no parameters: freezing it freezes nothing", "remove it"
        return None
    for m in uses[symbol]:
        if id(m) not in asked.paths:
            asked.paths[id(m)] = child_paths(m, model)
        paths = asked.paths[id(m)]
        if below not in paths:
            asked.hints_left -= 1
            close = did_you_mean(below, list(paths)) if asked.hints_left >= 0 else None
            shown = ", ".join(list(paths)[:20]) + (f" and {len(paths) - 20} more" if len(paths) > 20 else "")
            hint = (close or f"its children: {shown}") if paths \
                else f"'{symbol}' ({m.type}) is built from no other component: freeze '{symbol}' itself"
            return f"component '{symbol}' ({m.type}) has no child '{below}'", hint
        c = paths[below]
        if c.component.param_count(c.config, model) == 0:
            return f"'{entry}' has no parameters: freezing it freezes nothing", "remove it"
    return None


def _shared_problems(raw: list, uses: dict, model, doc) -> list[Problem]:
    """Shared weights (Component.shared_params) whose readers are frozen in part."""
    readers: dict[str, list[str]] = {}
    for symbol, insts in uses.items():
        for m in insts:
            for key in m.component.shared_params(m.config, model):
                if symbol not in readers.setdefault(key, []):
                    readers[key].append(symbol)
    out = []
    for key, symbols in readers.items():
        frozen = [s for s in symbols if s in raw]
        if frozen and len(frozen) < len(symbols):
            training = [s for s in symbols if s not in raw]
            where = ("freeze", raw.index(frozen[0]))
            out.append(Problem(f"'{frozen[0]}' shares weights '{key}' with {', '.join(training)}, which "
                               "train: a shared weight cannot both train and stay frozen", where,
                               doc.loc(where), f"freeze {', '.join(training)} too, or none of them"))
    return out


def frozen_params(node, params: int, model, cache: dict) -> int:
    """Parameters of a plan node that do not train: all `params` (its count, children
    included) when the node is frozen, else those of its frozen children; `cache` keeps the
    figure per instance (the nodes of one instance agree)."""
    if node.frozen:
        return params
    if not node.children:
        return 0
    key = id(node.instance)
    if key not in cache:
        cache[key] = sum(_child_params(c, model) for c in node.children)
    return cache[key]


def _child_params(node, model) -> int:
    if node.frozen:
        return node.component.param_count(node.instance.config, model)
    return sum(_child_params(c, model) for c in node.children)
