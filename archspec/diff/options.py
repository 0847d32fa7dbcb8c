"""The diff's options that are not specs: ignore paths and sequence lengths. A bad one is a
DiffOptionError (a usage error, exit 2 in the CLI), never a traceback."""
from __future__ import annotations

from typing import Iterable

from .. import components as C
from ..components.base import ModelConfig
from ..errors import did_you_mean
from ..schema import component_schema
from ..spec import ResolvedSpec

MODEL_FIELDS = ("vocab_size", "d_model", "max_seq_len", "dtype", "tie_embeddings", "init_std",
                "learned_positions", "scale_embeddings", "logit_softcap", "post_norm", "group_gates")


class DiffOptionError(ValueError):
    """A bad option (ignore path, sequence length, budget): a usage error, not a spec problem."""


# --- ignore paths ---------------------------------------------------------------------------------
def check_ignore(paths: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise ignore paths (comma lists split). Forms: `model.FIELD`,
    `model.norm` or `model.norm.KEY`, `TYPE.KEY` (a component type's hyperparameter) and
    `*.KEY` (that key in every component type). Raises DiffOptionError naming a bad path."""
    out: list[str] = []
    for path in _split(paths):
        head, _, rest = path.partition(".")
        if head == "model":
            _check_model_path(path, rest)
        else:
            _check_component_path(path, head, rest)
        if path not in out:
            out.append(path)
    return tuple(out)


def _split(paths: Iterable[str] | str) -> list[str]:
    """One string or many, each possibly a comma list, as single non-empty paths."""
    paths = [paths] if isinstance(paths, str) else paths
    return [p for raw in paths for p in (x.strip() for x in str(raw).split(",")) if p]


def _check_model_path(path: str, rest: str) -> None:
    if rest in MODEL_FIELDS or rest == "norm":
        return
    if rest.startswith("norm."):
        keys = set().union(*(_component_keys(t) for t in C.types_with_role("norm"))) | {"type"}
        if rest[5:] not in keys:
            raise DiffOptionError(_unknown(path, rest[5:], keys, "a norm key"))
    elif rest == "name":
        raise DiffOptionError("--ignore model.name: the model's name is shown, never compared")
    else:
        raise DiffOptionError(_unknown(path, rest, set(MODEL_FIELDS) | {"norm"}, "a model field"))


def _check_component_path(path: str, head: str, rest: str) -> None:
    sublayer_types = C.types_with_role("sublayer")
    if head == "*" and rest:
        keys = set().union(*(_component_keys(t) for t in sublayer_types))
        if rest not in keys:
            raise DiffOptionError(_unknown(path, rest, keys, "a hyperparameter of any component"))
    elif head in sublayer_types and rest:
        keys = _component_keys(head)
        if rest not in keys:
            raise DiffOptionError(_unknown(path, rest, keys, f"a hyperparameter of '{head}'"))
    else:
        hint = did_you_mean(head, [*sublayer_types, "model"])
        raise DiffOptionError(
            f"--ignore '{path}' is not model.FIELD, TYPE.KEY or *.KEY"
            + (f"; {hint}" if hint and rest else "")
            + f" (component types: {', '.join(sublayer_types)})")


def _component_keys(type_name: str) -> set[str]:
    """Keys a resolved config of the type may hold: the schema's and the derived ones."""
    from ..spec import _fill_defaults
    comp = C.get(type_name)
    keys = set(component_schema(type_name)["properties"]) - {"type"}
    try:
        cfg = comp.derive(_fill_defaults(type_name, comp.example), ModelConfig(97, 64, 64))
        keys |= set(cfg)
    except Exception:  # noqa: BLE001 - an example that fails to derive only narrows the check
        pass
    return keys | {"backend"}


def _unknown(path: str, key: str, choices: set[str], what: str) -> str:
    hint = did_you_mean(key, sorted(choices))
    return f"--ignore '{path}': '{key}' is not {what}" + (f"; {hint}" if hint else
                                                           f" (one of: {', '.join(sorted(choices))})")


class Ignore:
    """The checked ignore paths, asked per model field or per (component type, key)."""

    def __init__(self, paths: tuple[str, ...]):
        self.paths = set(paths)

    def model(self, name: str) -> bool:
        return (f"model.{name}" in self.paths
                or (name.startswith("norm.") and "model.norm" in self.paths))

    def key(self, type_name: str, key: str) -> bool:
        return f"{type_name}.{key}" in self.paths or f"*.{key}" in self.paths


# --- sequence lengths -----------------------------------------------------------------------------
def check_seq_lens(a: ResolvedSpec, b: ResolvedSpec, seq_lens) -> tuple[int, ...]:
    """The lengths to account at, duplicates dropped: by default the smaller max_seq_len; a
    length above either spec's max_seq_len is a DiffOptionError, as in `report`."""
    if seq_lens is None:
        return (min(a.model.max_seq_len, b.model.max_seq_len),)
    lens = (seq_lens,) if isinstance(seq_lens, int) else tuple(seq_lens)
    if not lens:
        raise DiffOptionError("give at least one sequence length")
    out: list[int] = []
    for t in lens:
        _check_seq_len(t, a, b)
        if t not in out:
            out.append(t)
    return tuple(out)


def _check_seq_len(t, a: ResolvedSpec, b: ResolvedSpec) -> None:
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise DiffOptionError(f"sequence lengths must be positive integers, got {t!r}")
    for side, spec in (("A", a), ("B", b)):
        if t > spec.model.max_seq_len:
            raise DiffOptionError(f"--seq-len {t} exceeds the max_seq_len {spec.model.max_seq_len} "
                                  f"of {side} ({spec.name}, {spec.source})")
