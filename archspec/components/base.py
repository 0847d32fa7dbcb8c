"""The component contract. A component type is one file in `archspec/components/` that defines a
subclass of `Component` decorated with `@register`: its schema fragment, its semantic checks,
its accounting (parameter shapes, forward FLOPs, inference state, activation memory) and its
modules (one per kernel backend). Nothing else in the pipeline names a component type.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

import torch
from torch import nn

from ..costs import FlopConvention, Flops, causal_pairs  # noqa: F401  (part of the contract)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}
DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}  # torch dtype -> spec name


@dataclass(frozen=True)
class ModelConfig:
    """Model-wide settings every component may read."""

    vocab_size: int
    d_model: int
    max_seq_len: int
    dtype: str = "float32"
    tie_embeddings: bool = False
    init_std: float = 0.02
    n_sublayers: int = 1
    name: str = "model"

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def out_proj_std(self) -> float:
        """Std of projections that write into the residual stream (GPT-2 scaling), so the
        residual's variance does not grow with depth."""
        return self.init_std / math.sqrt(2 * max(1, self.n_sublayers))


class ForwardContext:
    """Carried through one forward pass: components add auxiliary losses here (MoE load
    balancing, MoM routing); the model returns their sum next to the LM loss."""

    def __init__(self, shared: dict | None = None):
        self.aux_losses: dict[str, torch.Tensor] = {}
        # weights shared across sublayers (Component.shared_params), by key: model.shared[key]
        self.shared = shared if shared is not None else {}

    def add_aux_loss(self, name: str, value: torch.Tensor) -> None:
        self.aux_losses[name] = self.aux_losses[name] + value if name in self.aux_losses else value


@dataclass(frozen=True)
class CheckIssue:
    """A semantic problem in one component config; the validator locates `key`."""

    key: str | None
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Backend:
    """One implementation of a component's module. `available(device)` returns None when it can
    run there, else the reason it cannot. `preferred(device)`: whether `auto` may pick it there
    (Triton kernels run on the CPU under TRITON_INTERPRET=1, for tests, but `auto` keeps the
    reference there: the interpreter is for proving correctness, not for speed)."""

    name: str
    factory: Callable[[dict, ModelConfig], nn.Module]
    priority: int = 0
    available: Callable[[torch.device], str | None] = lambda device: None
    preferred: Callable[[torch.device], bool] = lambda device: True
    # supports(cfg, model): None when it implements this resolved config in this model, else
    # why not (a kernel's chunk size; a norm's width, d_model, which only the model knows)
    supports: Callable[[dict, ModelConfig], str | None] = lambda cfg, model: None
    # auto_skips(cfg, model): None when `auto` may pick it for this config, else why `auto`
    # keeps to the others though this one runs it (kernels that spill registers in this dtype:
    # right, but below the bar `archspec kernels` holds them to); forcing it still works
    auto_skips: Callable[[dict, ModelConfig], str | None] = lambda cfg, model: None


class Component:
    """Base of every component type. Subclasses set the class attributes and override what
    applies; every method takes the resolved config (defaults filled) and the ModelConfig."""

    type: ClassVar[str]
    # 'sublayer' components may appear in the layout; others are model parts (embedding,
    # norm, head) configured under `model:`.
    role: ClassVar[str] = "sublayer"
    summary: ClassVar[str] = ""
    # False for a type whose parameters a model part owns (the residual's gates are the block's):
    # it is accounted for here but has no module, so no backends
    has_module: ClassVar[bool] = True
    # JSON Schema (Draft 2020-12) fragment for the component's hyperparameters: `properties`,
    # `required`, with reference defaults. `type` and `backend` are added by the registry.
    schema: ClassVar[dict] = {"properties": {}}
    # A small valid config (d_model 64) for docs and for the contract tests every component
    # gets automatically (tests/test_contract.py).
    example: ClassVar[dict] = {}

    def __init__(self):
        self.backends: dict[str, Backend] = {}

    # --- configuration -------------------------------------------------------------------
    def derive(self, cfg: dict, model: ModelConfig) -> dict:
        """Fill defaults that depend on other values (e.g. head_dim = d_model / n_heads)."""
        return cfg

    def check(self, cfg: dict, model: ModelConfig, written: frozenset = frozenset()) -> list[CheckIssue]:
        """Semantic rules the schema cannot express. `written` holds the keys the spec set
        itself (the rest are defaults)."""
        return []

    # --- accounting ----------------------------------------------------------------------
    def param_shapes(self, cfg: dict, model: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Every parameter tensor of the module, by its name in `named_parameters()`."""
        return {}

    def flops(self, cfg: dict, model: ModelConfig, seq_len: int, conv: FlopConvention) -> Flops:
        """Forward FLOPs for one sequence of `seq_len` tokens."""
        return Flops()

    def shared_params(self, cfg: dict, model: ModelConfig) -> dict[str, dict[str, tuple[int, ...]]]:
        """Weights shared by every instance that names the same key (PKM values shared across
        layers, a Zamba block): {key: {parameter name: shape}}. Each key is built once, by
        `build_shared`, as `model.shared[key]`; it is counted once and saved once, and the
        instances' modules read it from `ctx.shared[key]` in forward. `param_shapes` lists only
        the instance's own weights. Keys are module names (no dots)."""
        return {}

    def shared_active_param_count(self, key: str, cfg: dict, model: ModelConfig) -> int:
        """Parameters of shared weights `key` this instance uses per token (PKM: the value rows
        it reads); the shared part's active count sums this over its users, capped at its
        size. Default: all of them."""
        return numel(self.shared_params(cfg, model)[key])

    def build_shared(self, key: str, cfg: dict, model: ModelConfig) -> "ComponentModule":
        """The module holding shared weights `key` (see shared_params)."""
        raise NotImplementedError(f"'{self.type}' declares shared weights but no build_shared")

    def flops_bounds(self, cfg: dict, model: ModelConfig, seq_len: int,
                     conv: FlopConvention) -> tuple[int, int] | None:
        """For components whose computed work depends on the data (routing that changes how
        much padding a chunked kernel does): the least and the most matmul + attention FLOPs one
        sequence can take. None (the default): `flops` is exact for every input."""
        return None

    def state_bytes(self, cfg: dict, model: ModelConfig, seq_len: int) -> int:
        """Inference state carried per sequence after `seq_len` tokens (KV cache, SSM state)."""
        return 0

    def activation_bytes(self, cfg: dict, model: ModelConfig, seq_len: int) -> int:
        """Estimate of the tensors the reference path saves for backward, per sequence."""
        return 0

    def notes(self, cfg: dict, model: ModelConfig) -> list[str]:
        """What a reader of the report must know about this component's figures (assumptions
        behind data-dependent FLOPs, non-causal options). Shown once per distinct note."""
        return []

    def active_param_count(self, cfg: dict, model: ModelConfig) -> int:
        """Parameters used per token (differs from the total for routed components)."""
        return sum(math.prod(s) for s in self.param_shapes(cfg, model).values())

    # --- emission ------------------------------------------------------------------------
    def add_backend(self, name: str, factory, priority: int = 0, available=None, preferred=None,
                    supports=None, auto_skips=None) -> None:
        self.backends[name] = Backend(name, factory, priority, available or (lambda device: None),
                                      preferred or (lambda device: True), supports or (lambda cfg, model: None),
                                      auto_skips or (lambda cfg, model: None))

    def choose_backend(self, requested: str, device: torch.device, cfg: dict | None = None,
                       model: ModelConfig | None = None, exclude: frozenset[str] = frozenset()) -> Backend:
        """'auto' picks the highest-priority backend that can run on `device`, is preferred
        there and supports `cfg` in `model` (when given: both or neither), leaving out the
        backends named in `exclude` (the build's fallback when a kernel does not compile on the
        device)."""
        if (cfg is None) != (model is None):
            raise TypeError("choose_backend: give both cfg and model (to check support), or neither")

        def unsupported(b: Backend) -> str | None:
            return None if cfg is None else b.supports(cfg, model)

        def skipped(b: Backend) -> str | None:
            return None if cfg is None else b.auto_skips(cfg, model)

        if requested == "auto":
            usable = [b for b in self.backends.values() if b.name not in exclude and
                      b.available(device) is None and b.preferred(device) and unsupported(b) is None
                      and skipped(b) is None]
            if not usable:
                reasons = "; ".join(f"{b.name}: {b.available(device) or unsupported(b) or skipped(b)}"
                                    for b in self.backends.values())
                raise ValueError(f"no backend of '{self.type}' can run on {device} ({reasons or 'none registered'})")
            return max(usable, key=lambda b: b.priority)
        if requested not in self.backends:
            raise ValueError(f"component type '{self.type}' has no '{requested}' backend "
                             f"(it has: {', '.join(sorted(self.backends))})")
        backend = self.backends[requested]
        reason = backend.available(device)
        if reason is not None:
            raise ValueError(f"backend '{requested}' of '{self.type}' cannot run on {device}: {reason}")
        reason = unsupported(backend)
        if reason is not None:
            raise ValueError(f"backend '{requested}' of '{self.type}' does not support this config: {reason}")
        return backend

    def kernel_launches(self, cfg: dict, model: ModelConfig, dtype: torch.dtype) -> list:
        """Every Triton kernel launch (archspec.ops.triton_support.KernelLaunch) that this
        config's `triton` backend makes in a forward and backward pass with `dtype` inputs:
        what `archspec kernels` compiles ahead of time, and what a build compiles for its CUDA
        device before it gives the component its kernels (codegen/build.py: a launch that does
        not compile makes `auto` fall back to the reference). Components without kernels: []."""
        return []

    def build(self, cfg: dict, model: ModelConfig, backend: str = "auto",
              device: torch.device | str = "cpu") -> nn.Module:
        return self.choose_backend(backend, torch.device(device), cfg, model).factory(cfg, model)


REGISTRY: dict[str, Component] = {}


def register(cls: type[Component]) -> type[Component]:
    """Class decorator: make a component type available to specs. Its `reference` backend is
    the class's `Module` attribute, built as `Module(cfg, model)`."""
    if cls.type in REGISTRY:
        raise RuntimeError(f"component type '{cls.type}' registered twice")
    instance = cls()
    if hasattr(cls, "Module"):
        instance.add_backend("reference", lambda cfg, model, m=cls.Module: m(cfg, model), priority=0)
    REGISTRY[cls.type] = instance
    return cls


def get(type_name: str) -> Component:
    return REGISTRY[type_name]


def types_with_role(role: str) -> list[str]:
    return sorted(t for t, c in REGISTRY.items() if c.role == role)


def numel(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


@torch.no_grad()
def init_dt_bias(bias: torch.Tensor, dt_min: float, dt_max: float, floor: float) -> None:
    """bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] and floored, so that
    softplus(bias) starts at dt. softplus^-1(y) = y + log(1 - exp(-y)) = y + log(-expm1(-y))."""
    u = torch.rand(bias.shape, device=bias.device, dtype=torch.float32)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))


class ComponentModule(nn.Module):
    """Base of every component's module. Modules are first built on the meta device (free),
    then materialised: `reset_parameters()` fills weights and recomputes buffers in place."""

    def reset_parameters(self) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError(f"{type(self).__name__} must define reset_parameters")
