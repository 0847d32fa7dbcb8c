"""`archspec kernels`: every Triton kernel launch configuration the shipped specs (or given ones)
use, plus the extremes each kernel family accepts, and, with targets, the ahead-of-time gate:
each configuration compiled for each GPU target (archspec/ops/aot.py) and checked: it compiles,
its shared memory fits the target's per-block limit, nothing spills, and a tt.dot on 16-bit
inputs uses tensor cores.

Launches are collected, never run: each component whose `triton` backend takes its config
reports its launches (`Component.kernel_launches`, recorded from the real launchers on meta
tensors), per dtype; each kernel family under archspec/ops exposes `gate_launches()` for the
extremes of its range. Equal launches (the same specialisation) are compiled once and list
every place that uses them. Nothing here imports triton until a launch is recorded.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import torch

from .spec import NORM_NAME, ResolvedSpec

# the kernel families whose `gate_launches()` give the extremes of their supported range
FAMILIES = ("norm", "dispatch", "linear_attention")
EXTREME = "extreme"
DEFAULT_DTYPES = ("float32", "bfloat16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Collected:
    """A launch and where it comes from ("spec:component", or "extreme")."""

    launch: object  # triton_support.KernelLaunch
    sources: list[str] = field(default_factory=list)


def shipped_specs() -> list[Path]:
    """The specs shipped beside the package (the repository's specs/ directory); [] when the
    package is installed without them."""
    specs = Path(__file__).resolve().parent.parent / "specs"
    return sorted(specs.glob("*.yaml")) if specs.is_dir() else []


def parse_dtypes(text: str) -> list[torch.dtype]:
    """"float32,bfloat16" -> dtypes; ValueError naming the known ones."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in DTYPES]
    if unknown or not names:
        raise ValueError(f"unknown dtype {', '.join(map(repr, unknown)) or '(none given)'} "
                         f"(use: {', '.join(DTYPES)})")
    return [DTYPES[n] for n in dict.fromkeys(names)]


def _instances(spec: ResolvedSpec):
    """The model norm and every distinct configured component of the spec's sublayers (an
    override makes its own config)."""
    seen = set()
    for inst in [spec.norm] + [m for sub in spec.sublayers for m in sub.members]:
        key = (inst.name, inst.type, json.dumps(inst.config, sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            yield inst


def _label(spec: ResolvedSpec, inst) -> str:
    name = NORM_NAME if inst is spec.norm else inst.name
    return f"{Path(spec.source).stem}:{name} ({inst.type})"


def spec_launches(spec: ResolvedSpec, dtypes: Iterable[torch.dtype] | None = None) -> list[tuple[object, str]]:
    """(launch, "spec:component (type)") of every component whose `triton` backend takes its
    config, for each dtype (default: the spec's own, the dtype it builds in)."""
    from .components.modules import DTYPE_NAMES, TORCH_DTYPES
    dtypes = [TORCH_DTYPES[spec.model.dtype]] if dtypes is None else list(dtypes)
    found = []
    for inst in _instances(spec):
        backend = inst.component.backends.get("triton")
        if backend is None:
            continue
        for dtype in dtypes:
            model = replace(spec.model, dtype=DTYPE_NAMES[dtype])
            if not _runs_kernels(backend, inst, model):
                continue
            for launch in inst.component.kernel_launches(inst.config, model, dtype):
                found.append((launch, _label(spec, inst)))
    return found


def _runs_kernels(backend, inst, model) -> bool:
    """Whether a build of this instance in `model` runs the kernels on a GPU: the kernels take
    its config, and either the spec forces them or `auto` would pick them."""
    if backend.supports(inst.config, model) is not None:
        return False
    return inst.backend == "triton" or backend.auto_skips(inst.config, model) is None


def extreme_launches() -> list:
    """Every family's `gate_launches()` (each family package exports it)."""
    return [launch for family in FAMILIES
            for launch in importlib.import_module(f"archspec.ops.{family}").gate_launches()]


def collect_launches(specs: Iterable[ResolvedSpec], dtypes: Iterable[torch.dtype] | None = None,
                     extremes: bool = True) -> list[Collected]:
    """Every distinct launch of the specs' components (each with the places that use it), in
    `dtypes` (default: each spec's own), then the families' extremes; in first-seen order."""
    dtypes = None if dtypes is None else list(dtypes)
    by_launch: dict = {}
    pairs = [pair for spec in specs for pair in spec_launches(spec, dtypes)]
    if extremes:
        pairs += [(launch, EXTREME) for launch in extreme_launches()]
    for launch, source in pairs:
        entry = by_launch.setdefault(launch, Collected(launch))
        if source not in entry.sources:
            entry.sources.append(source)
    return list(by_launch.values())


def kernels_report(specs: Iterable[ResolvedSpec], dtypes: Iterable[torch.dtype] | None = None,
                   targets: Iterable | None = None, jobs: int | None = None, timeout: float | None = None,
                   extremes: bool = True, progress: Callable | None = None,
                   only: Iterable[str] | None = None) -> dict:
    """The launches (and, given targets, their compile results) as a JSON-ready dict:
    {"launches": [...], "results": [...] (with targets), "ok": bool (with targets)}. `only`:
    keep the kernels whose name ("family.function") starts with one of these."""
    from .ops.aot import DEFAULT_TIMEOUT, compile_launches
    collected = collect_launches(specs, dtypes, extremes)
    if only:
        prefixes = tuple(only)
        collected = [c for c in collected if c.launch.kernel.startswith(prefixes)]
    launches = [{"kernel": c.launch.kernel, "config": c.launch.config, "dtype": c.launch.dtype,
                 "num_warps": c.launch.num_warps, "num_stages": c.launch.num_stages,
                 "constexprs": {k: _json_value(v) for k, v in c.launch.constexprs},
                 "signature": dict(c.launch.signature), "divisible_by_16": list(c.launch.divisible_by_16),
                 "sources": c.sources} for c in collected]
    report = {"launches": launches}
    if targets is None:
        return report
    targets = list(targets)
    pairs = [(c.launch, t) for c in collected for t in targets]
    results = compile_launches(pairs, jobs=jobs, timeout=timeout or DEFAULT_TIMEOUT, progress=progress)
    report["targets"] = [{"name": t.name, "capability": t.capability, "shared_limit": t.shared_limit}
                         for t in targets]
    report["results"] = [{**r.to_dict(), "sources": c.sources}
                         for r, (c, _) in zip(results, ((c, t) for c in collected for t in targets))]
    report["ok"] = all(r.ok for r in results)
    return report


def _json_value(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return getattr(value, "name", None) or str(value)


# --- rendering -----------------------------------------------------------------------------------

def render(report: dict, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    if "results" in report:
        return _results_table(report)
    return _launches_table(report)


def _launches_table(report: dict) -> str:
    lines = []
    for kernel in dict.fromkeys(l["kernel"] for l in report["launches"]):
        rows = [l for l in report["launches"] if l["kernel"] == kernel]
        lines.append(f"{kernel}  ({len(rows)} configuration{'s' * (len(rows) != 1)})")
        for l in rows:
            lines.append(f"  {l['config']}")
            lines.append(f"      used by: {', '.join(l['sources'])}")
    lines.append(f"{len(report['launches'])} launch configurations")
    return "\n".join(lines) + "\n"


def _results_table(report: dict) -> str:
    head = ("status", "target", "kernel", "regs", "spill", "stack", "shared/limit", "tc", "time")
    rows, configs, notes = [head], [None], []
    for r in report["results"]:
        rows.append(("ok" if r["ok"] else "FAIL", r["target"], r["kernel"], _cell(r["registers"]),
                     _cell(r["spill_bytes"]), _cell(r["stack_bytes"]),
                     f"{_cell(r['shared_bytes'])}/{r['shared_limit']}",
                     {True: "yes", False: "NO", None: "-"}[r["tensor_cores"]], f"{r['compile_s']}s"))
        configs.append(r["config"])
        if not r["ok"]:
            notes.append(f"{r['kernel']} [{r['config']}] on {r['target']} (used by "
                         f"{', '.join(r['sources'])}):\n    " + "\n    ".join(r["problems"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    text = []
    for row, config in zip(rows, configs):
        text.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if config:
            text.append(" " * (widths[0] + 2) + config)
    failed = sum(not r["ok"] for r in report["results"])
    text.append(f"{len(report['results'])} compiles, {failed} failed")
    if notes:
        text += ["", "failures:"] + notes
    return "\n".join(text) + "\n"


def _cell(value) -> str:
    return "-" if value is None else str(value)
