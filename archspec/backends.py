"""Which backend each node of a plan gets: the one rule that `report` and `build` both call.

The spec names a backend per component (`backend:`, default `auto`) and for the model's norm
(`model: {norm: {backend: ...}}`); the caller may override, with a name for every component that
has it (`--backend triton`: "the kernels wherever they exist") or a dict by symbol ('model.norm'
for the norm). `auto` takes the highest-priority backend that runs on the device, is preferred
there and supports the config (Component.choose_backend). `build` then also checks that a
`triton` backend's kernels compile on the device (codegen/build.py) and may fall back.
"""
from __future__ import annotations

from .plan import Node, Plan
from .spec import NORM_NAME, ResolvedSpec

Override = str | dict | None


def check_override(spec: ResolvedSpec, override: Override) -> None:
    """Raise ValueError for an override that names what the spec does not have."""
    if isinstance(override, dict):
        unknown = sorted(set(override) - set(spec.components) - {NORM_NAME})
        if unknown:
            raise ValueError(f"backend given for unknown component(s) {', '.join(map(repr, unknown))} "
                             f"(the spec defines: {', '.join(sorted(spec.components))}; "
                             f"'{NORM_NAME}' names the model's norm)")
    elif isinstance(override, str):
        known = {name for inst in [spec.norm, *spec.components.values()] for name in inst.component.backends}
        if override != "auto" and override not in known:
            raise ValueError(f"no '{override}' backend in any component of this spec "
                             f"(they have: {', '.join(sorted(known))})")
    elif override is not None:
        raise ValueError(f"backend must be a name or a dict of component name -> name, got {override!r}")


def requested(node: Node, override: Override) -> str:
    """What is asked of `node`: the caller's override where it applies, else the spec's."""
    if isinstance(override, str) and (override == "auto" or override in node.component.backends):
        return override
    if isinstance(override, dict) and node.symbol in override:
        return override[node.symbol]
    return node.instance.backend


def choose(node: Node, device, model, override: Override = None, exclude: frozenset = frozenset()):
    """The Backend the rule gives `node` on `device` (ValueError when none can run it)."""
    return node.component.choose_backend(requested(node, override), device, node.instance.config,
                                         model, exclude=exclude)


def planned(the_plan: Plan, device, override: Override = None, model=None) -> dict[str, str]:
    """Per configurable node (norms and members): the backend's name, or 'unavailable: why'."""
    model = model or the_plan.spec.model
    out = {}
    chosen: dict[tuple, str] = {}  # the rule's answer depends on the instance and its symbol only
    for node in the_plan.configurable:
        key = (id(node.instance), node.symbol)
        if key not in chosen:
            try:
                chosen[key] = choose(node, device, model, override).name
            except ValueError as e:
                chosen[key] = f"unavailable: {e}"
        out[node.name] = chosen[key]
    return out
