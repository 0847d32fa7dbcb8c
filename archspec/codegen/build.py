"""Stage 6: emit a trainable nn.Module from a resolved spec.

Modules are always constructed on the meta device first (free, whatever the size), then either
returned as they are (`meta=True`) or materialised on the target device in the spec's dtype and
initialised. Each component's kernel backend is chosen through its registry: `auto` takes the
fastest one that runs on the device; the spec (`backend:` in a component) or the caller can force
one. The model's norm (`model.norm` in the spec: every sublayer's norm and the final one) is
chosen by the same rule; a caller's dict names it by the key "model.norm".

Before a component is given its `triton` backend on a CUDA device, its kernels are compiled for
that device (ops.triton_support.kernel_failures). A kernel that does not compile or does not fit
makes `auto` fall back to the next backend (the reference) for that component, with one
KernelFallbackWarning per component symbol and the reason in `model.backends`; a forced `triton`
raises KernelUnavailable. This is the only place to switch: once a launch fails mid-forward or
mid-backward, there is no backend to swap in.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from ..accounting import account
from ..backends import check_override, choose, requested
from ..components.base import DTYPE_BYTES, Backend, Component
from ..components.modules import DTYPE_NAMES, TORCH_DTYPES, SharedUse
from ..errors import BuildRefused, KernelFallbackWarning
from ..ops import triton_support
from ..plan import EMBEDDING, FINAL_NORM, HEAD, MEMBER, NORM, POST_NORM, SHARED, Node, Plan, plan
from ..spec import ResolvedSpec
from ..units import human_bytes
from .model import BackendChoice, Block, CausalLM

MEMORY_HEADROOM = 0.8  # refuse builds needing more than this share of free memory


def build(spec: ResolvedSpec, device: str | torch.device = "cpu", dtype: str | None = None,
          meta: bool = False, backend: str | dict | None = None, force: bool = False,
          seed: int | None = None) -> CausalLM:
    """Build the model. `backend` forces a backend (a string) on every component and on the
    model's norm that has one (the others keep their own choice: `--backend triton` means "the
    kernels wherever they exist"; a name no component has is an error), or per component name,
    with "model.norm" for the norm (a dict); `force` builds even when the weights would not fit
    in memory.

    A `triton` backend whose kernels do not compile on the CUDA device: under `auto` the
    component gets its reference backend (a KernelFallbackWarning, and `model.backends` says
    why); forced, a KernelUnavailable (a ValueError) names the kernel and the compiler's reason."""
    requested = torch.device(device)
    device = torch.device("meta") if meta else requested
    dtype_name = dtype or spec.model.dtype
    if dtype_name not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype '{dtype_name}' (use one of {', '.join(TORCH_DTYPES)})")
    if not meta and not force:
        check_memory(spec, device, dtype_name)
    check_override(spec, backend)
    # backends are chosen for where the model will run: a meta build of a model meant for
    # device X shows X's choices (the CPU's when no real device was named)
    target = requested if requested.type != "meta" else torch.device("cpu")
    with torch.device("meta"):
        model = _construct(plan(spec), backend, target, TORCH_DTYPES[dtype_name])
    model = model.to(TORCH_DTYPES[dtype_name])
    if meta:
        return freeze(model)
    if seed is not None:
        torch.manual_seed(seed)
    model = model.to_empty(device=device)
    model.reset_parameters()
    return freeze(model)


def freeze(model: CausalLM) -> CausalLM:
    """requires_grad=False on every parameter of the nodes the spec freezes (`freeze:`,
    archspec/freeze.py); returns the model."""
    spec_model = model.spec.model
    frozen: set[str] = set()
    shapes: dict[tuple, list[str]] = {}  # parameter names of an instance (or its shared key), asked once

    def visit(node: Node) -> None:
        if node.frozen:
            inst, key = node.instance, (id(node.instance), node.shared_key)
            if key not in shapes:
                shapes[key] = list(inst.component.shared_params(inst.config, spec_model)[node.shared_key]
                                   if node.role == SHARED else inst.component.param_shapes(inst.config, spec_model))
            frozen.update(node.param_name(k) for k in shapes[key])
        else:
            for c in node.children:
                visit(c)

    for node in plan(model.spec):
        visit(node)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return model


def _construct(the_plan: Plan, override, device: torch.device, dtype: torch.dtype) -> CausalLM:
    spec = the_plan.spec
    # backends are chosen for the dtype the model is built in (kernels may take some only)
    model_cfg = replace(spec.model, dtype=DTYPE_NAMES[dtype])
    choose = _Chooser(device, dtype, model_cfg, override)
    chosen: dict[str, BackendChoice] = {}
    modules = {}
    for node in the_plan.configurable:
        impl, chosen[node.name] = choose(node)
        modules[node.name] = impl.factory(node.instance.config, model_cfg)
    shared = {n.shared_key: n.component.build_shared(n.shared_key, n.instance.config, model_cfg)
              for n in the_plan.with_role(SHARED)}
    for node in the_plan.with_role(MEMBER):  # the uses of a `share` group run its one module
        key = node.component.whole_share_key(node.instance.config)
        if key is not None:  # the group's module is its reference (build_shared)
            modules[node.name], chosen[node.name] = SharedUse(key, shared[key]), BackendChoice("reference")
    blocks = []
    for sub in spec.sublayers:
        nodes = the_plan.of_sublayer(sub.index)
        norm = [modules[n.name] for n in nodes if n.role == NORM]  # none: a feed sublayer
        post = [modules[n.name] for n in nodes if n.role == POST_NORM]
        blocks.append(Block(norm[0] if norm else None,
                            {n.symbol: modules[n.name] for n in nodes if n.role == MEMBER},
                            post[0] if post else None, sub.gates, model_cfg.d_model, model_cfg.init_std))
    (embedding,), (final_norm,), (head,) = (the_plan.with_role(r) for r in (EMBEDDING, FINAL_NORM, HEAD))
    model = CausalLM(_reference(embedding, model_cfg), blocks, modules[final_norm.name],
                     _reference(head, model_cfg), model_cfg.tie_embeddings, shared)
    model.backends = chosen
    model.spec = spec
    return model


def _reference(node: Node, model_cfg):
    """A model part that has one implementation (the embedding, the head)."""
    return node.component.build(node.instance.config, model_cfg, "reference")


class _Chooser:
    """Chooses each node's backend for one build: the rule (backends.choose), then, for a
    `triton` backend, the check that its kernels compile on the device. The check runs once per
    distinct (component type, config) of the build (compile results are also cached per
    process, in triton_support), and each component symbol warns once."""

    def __init__(self, device: torch.device, dtype: torch.dtype, model_cfg, override):
        self.device, self.dtype, self.model_cfg, self.override = device, dtype, model_cfg, override
        self.checked: dict[tuple, list] = {}
        self.warned: set[str] = set()

    def __call__(self, node: Node) -> tuple[Backend, BackendChoice]:
        impl = choose(node, self.device, self.model_cfg, self.override)
        if impl.name != "triton":
            return impl, BackendChoice(impl.name)
        comp, cfg = node.component, node.instance.config
        failures = self._failures(comp, cfg)
        if not failures:
            return impl, BackendChoice(impl.name)
        if requested(node, self.override) != "auto":
            raise triton_support.KernelUnavailable(_forced_message(node.symbol, comp, self.device, failures))
        fallback = self._fallback(node, failures)
        if node.symbol not in self.warned:
            self.warned.add(node.symbol)
            warnings.warn(_fallback_message(node.symbol, comp, fallback.name, failures),
                          KernelFallbackWarning, stacklevel=5)
        return fallback, BackendChoice(fallback.name, tuple(failures))

    def _failures(self, comp: Component, cfg: dict) -> list:
        key = (comp.type, json.dumps(cfg, sort_keys=True, default=str))
        if key not in self.checked:
            self.checked[key] = triton_support.kernel_failures(comp, cfg, self.model_cfg, self.dtype,
                                                               self.device)
        return self.checked[key]

    def _fallback(self, node: Node, failures: list) -> Backend:
        """`auto`'s next choice without the kernels (the reference)."""
        try:
            return choose(node, self.device, self.model_cfg, "auto", exclude=frozenset({"triton"}))
        except ValueError as e:
            raise triton_support.KernelUnavailable(
                f"{node.symbol} ({node.type}): its kernel {failures[0]} and no other backend can run "
                f"on {self.device}: {e}") from None


def _fallback_message(symbol: str, comp: Component, fallback: str, failures: list) -> str:
    first = failures[0]
    more = f" ({len(failures) - 1} more kernel configuration(s) failed too)" if len(failures) > 1 else ""
    return (f"{symbol} ({comp.type}): Triton kernel {first.kernel} [{first.config}] cannot run on "
            f"{first.target}: {first.reason}{more}. {symbol} uses the '{fallback}' backend instead "
            f"(correct, slower). Set `backend: {fallback}` on {symbol} to silence this.")


def _forced_message(symbol: str, comp: Component, device: torch.device, failures: list) -> str:
    first = failures[0]
    more = f" ({len(failures) - 1} more kernel configuration(s) failed too)" if len(failures) > 1 else ""
    return (f"backend 'triton' of {symbol} ({comp.type}) cannot run on {device} ({first.target}): "
            f"kernel {first.kernel} [{first.config}] failed: {first.reason}{more}. "
            f"Use backend 'reference' for {symbol}, or 'auto' to fall back to it automatically.")


def weight_bytes(spec: ResolvedSpec, dtype: str | None = None) -> int:
    """Bytes of the weights in `dtype` (default: the spec's)."""
    return account(spec).total().params * DTYPE_BYTES[dtype or spec.model.dtype]


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory available for a new allocation on `device`, when it can be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        free = _meminfo_available()
        limit = _cgroup_free()  # a container's limit can be far below the host's free memory
        if free is None:
            return limit
        return free if limit is None else min(free, limit)
    return None


MEMINFO = Path("/proc/meminfo")
# (limit, usage) files of cgroup v2, then v1; a limit of 'max' (or v1's huge number) is no limit
CGROUP_FILES = [(Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
                (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
                 Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"))]
_NO_LIMIT = 2**60


def _meminfo_available() -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _cgroup_free() -> int | None:
    """Memory left under this process's cgroup limit, or None when there is no limit."""
    for limit_file, usage_file in CGROUP_FILES:
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            limit = int(text)
            if limit >= _NO_LIMIT:
                return None
            usage = int(usage_file.read_text().strip())
        except (OSError, ValueError):
            continue
        return max(0, limit - usage)
    return None


def check_memory(spec: ResolvedSpec, device: torch.device, dtype: str, extra_bytes: int = 0,
                 extra_what: str = "") -> None:
    """Refuse, with the estimate, a build whose weights (plus `extra_bytes`, e.g. a training
    step's gradients and activations) would not fit in free memory."""
    weights = weight_bytes(spec, dtype)
    need = weights + extra_bytes
    free = free_memory_bytes(device)
    if free is not None and need > MEMORY_HEADROOM * free:
        what = f"{human_bytes(weights)} for its weights in {dtype}"
        what += f" and {human_bytes(extra_bytes)} for {extra_what}" if extra_bytes else " alone"
        raise BuildRefused(
            f"building '{spec.name}' needs {what}, but {device} has {human_bytes(free)} free; "
            "refusing (it would exhaust memory). Use `--meta` (or meta=True) for a free structural "
            "build, `archspec report` for the numbers, or `--force` (force=True) to build anyway.")
