"""Component definitions as the diff sees them: the `components:` symbols a layout uses (a
definition no sublayer uses is not part of the model) and the symbols renamed between A and B."""
from __future__ import annotations

from ..spec import ComponentInstance, ResolvedSpec


def used(spec: ResolvedSpec) -> dict[str, int]:
    """Symbols the layout uses, in first-use order, with the number of sublayers using each."""
    out: dict[str, int] = {}
    for sub in spec.sublayers:
        for m in sub.members:
            out[m.name] = out.get(m.name, 0) + 1
    return out


def definition(spec: ResolvedSpec, symbol: str) -> ComponentInstance:
    """The `components:` entry of a symbol (its config before any per-sublayer override)."""
    d = spec.components.get(symbol)
    if d is None:  # cannot happen for a resolved spec; fall back to the first use
        d = next(m for s in spec.sublayers for m in s.members if m.name == symbol)
    return d


def same_definition(x: ComponentInstance, y: ComponentInstance) -> bool:
    return x.type == y.type and x.backend == y.backend and x.config == y.config


def renames(a: ResolvedSpec, b: ResolvedSpec) -> dict[str, str]:
    """A symbol used only in A whose definition (type, backend, resolved config) equals that of
    a symbol used only in B: renamed, not removed and added. Paired in first-use order."""
    used_a, used_b = used(a), used(b)
    only_a = [s for s in used_a if s not in used_b]
    only_b = [s for s in used_b if s not in used_a]
    out: dict[str, str] = {}
    for s in only_a:
        da = definition(a, s)
        hit = next((t for t in only_b
                    if t not in out.values() and same_definition(da, definition(b, t))), None)
        if hit is not None:
            out[s] = hit
    return out
