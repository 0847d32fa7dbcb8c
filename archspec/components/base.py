"""The component contract, spec side. A component type is one package in `archspec/components/`:

    <type>/spec.py     a `Component` subclass decorated with `@register`: schema fragment, derived
                       defaults, checks, accounting (parameters, FLOPs, inference state,
                       activation memory, notes), kernel support; imports no torch, so that
                       validate, report, graph and diff stay instant
    <type>/module.py   its nn.Module (components/modules.py has the module-side base), imported
                       only when a model is built (`Component.module` names it)

Nothing else in the pipeline names a component type. docs/components.md walks through adding one.
"""
from __future__ import annotations

import copy
import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from ..costs import FlopConvention, Flops, causal_pairs  # noqa: F401  (part of the contract)
from ..ops import triton_rule

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


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
    # the published models' options (docs/spec.md): a learned position table in the embedding,
    # its output times sqrt(d_model), c tanh(logits / c) in the head, a norm after each sublayer
    learned_positions: bool = False
    scale_embeddings: bool = False
    logit_softcap: float | None = None
    post_norm: bool = False
    group_gates: str = "scalar"  # parallel groups' gates: scalar, or per token softmax / sigmoid

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def out_proj_std(self) -> float:
        """Std of projections that write into the residual stream (GPT-2 scaling), so the
        residual's variance does not grow with depth."""
        return self.init_std / math.sqrt(2 * max(1, self.n_sublayers))


@dataclass(frozen=True)
class CheckIssue:
    """A semantic problem in one component config; the validator locates `key`."""

    key: str | None
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Backend:
    """One implementation of a component's module. `factory(cfg, model)` builds it (importing
    torch and the module side only then). `available(device)` returns None when it can run
    there, else the reason it cannot. `preferred(device)`: whether `auto` may pick it there
    (Triton kernels run on the CPU under TRITON_INTERPRET=1, for tests, but `auto` keeps the
    reference there: the interpreter is for proving correctness, not for speed). A device is a
    torch.device or its name ('cuda:1')."""

    name: str
    factory: Callable[[dict, ModelConfig], Any]
    priority: int = 0
    available: Callable[[Any], str | None] = lambda device: None
    preferred: Callable[[Any], bool] = lambda device: True
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
    # "package.module:Class": the nn.Module implementing it, imported when a model is built
    module: ClassVar[str | None] = None
    # whether it has a `triton` backend: its module runs Triton kernels when built with
    # backend "triton" (kernels_unsupported, kernels_auto_skips and kernel_launches say where)
    has_kernels: ClassVar[bool] = False
    # False for a type whose parameters a model part owns (the residual's gates are the block's):
    # it is accounted for here but has no module, so no backends
    has_module: ClassVar[bool] = True
    # True for a type whose output feeds the next sublayer's input instead of the residual
    # stream (feed_block): it reads the stream un-normed, stands alone in its sublayer, and its
    # sublayer has no norm and no residual of the model's (plan.py)
    feeds_next: ClassVar[bool] = False
    # config keys that may differ between the uses of one `share` group (per-use weights, such
    # as feed_block's adapters); every other key must be the same in all of them
    per_use_keys: ClassVar[tuple[str, ...]] = ()
    # JSON Schema (Draft 2020-12) fragment for the component's hyperparameters: `properties`,
    # `required`, with reference defaults. `type` and `backend` are added by the registry.
    schema: ClassVar[dict] = {"properties": {}}
    # A small valid config (d_model 64) for docs and for the contract tests every component
    # gets automatically (tests/test_contract.py).
    example: ClassVar[dict] = {}
    # old spellings of keys, {old: new}: a spec that uses one gets a located error naming the
    # new key (one name per concept across types; docs/components.md)
    renamed: ClassVar[dict[str, str]] = {}

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
    # A type implements the own_* hooks: its own parameters and work. The public methods below
    # add its children's (components it is built from, `children`); callers use those.
    def own_param_shapes(self, cfg: dict, model: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Every parameter tensor of the module itself, by its name in `named_parameters()`."""
        return {}

    def own_flops(self, cfg: dict, model: ModelConfig, seq_len: int, conv: FlopConvention,
                  realized: dict | None = None) -> Flops:
        """Forward FLOPs for one sequence of `seq_len` tokens. `realized`: what the data made
        happen, for a type whose work depends on it (routing: the kept assignments, the rows a
        memory received; each type documents its keys); None: the report's assumption."""
        return Flops()

    def own_flops_bounds(self, cfg: dict, model: ModelConfig, seq_len: int,
                         conv: FlopConvention) -> tuple[int, int] | None:
        """For types whose computed work depends on the data (routing that changes how much
        padding a chunked kernel does): the least and the most matmul + attention FLOPs one
        sequence can take. None (the default): `own_flops` is exact for every input."""
        return None

    def own_state_bytes(self, cfg: dict, model: ModelConfig, seq_len: int) -> int:
        """Inference state carried per sequence after `seq_len` tokens (KV cache, SSM state)."""
        return 0

    def own_activation_bytes(self, cfg: dict, model: ModelConfig, seq_len: int) -> int:
        """Estimate of the tensors the reference path saves for backward, per sequence."""
        return 0

    def own_notes(self, cfg: dict, model: ModelConfig) -> list[str]:
        """What a reader of the report must know about this type's figures (assumptions behind
        data-dependent FLOPs, non-causal options). Shown once per distinct note."""
        return []

    def own_param_count(self, cfg: dict, model: ModelConfig) -> int:
        """How many parameters own_param_shapes lists. A type with a tensor per routed part (a
        memory, an expert) says it in closed form, so that counting, which validation and the
        report do for every distinct config, does not list them (tests/test_contract.py checks
        that the two agree)."""
        return numel(self.own_param_shapes(cfg, model))

    def own_active_param_count(self, cfg: dict, model: ModelConfig) -> int:
        """Parameters used per token (differs from the total for routed components)."""
        return self.own_param_count(cfg, model)

    def children(self, cfg: dict, model: ModelConfig) -> dict[str, "Child"]:
        """Components this one is built from, by attribute name (MoE's shared experts: an mlp).
        The framework prefixes their parameters (`<name>.`), adds their costs and notes, and
        draws them in the graph; the module builds them with `modules.build_child`."""
        return {}

    def param_shapes(self, cfg: dict, model: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Every parameter of the module, its children's included, by its `named_parameters()` name
        (none for an instance of a `share` group: its weights are the group's, shared_params)."""
        return {} if self.whole_share_key(cfg) else self._unshared_param_shapes(cfg, model)

    def _unshared_param_shapes(self, cfg: dict, model: ModelConfig) -> dict[str, tuple[int, ...]]:
        shapes = dict(self.own_param_shapes(cfg, model))
        for name, child in self.children(cfg, model).items():
            shapes.update({f"{name}.{k}": s for k, s in child.component.param_shapes(child.config, model).items()})
        return shapes

    def param_count(self, cfg: dict, model: ModelConfig) -> int:
        """numel(param_shapes(...)), children included, without listing the tensors."""
        if self.whole_share_key(cfg):
            return 0
        return self.own_param_count(cfg, model) + sum(
            c.component.param_count(c.config, model) for c in self.children(cfg, model).values())

    def flops(self, cfg: dict, model: ModelConfig, seq_len: int, conv: FlopConvention,
              realized: dict | None = None) -> Flops:
        """Forward FLOPs of one sequence of `seq_len` tokens, children included (own_flops)."""
        total = self.own_flops(cfg, model, seq_len, conv, realized)
        for child in self.children(cfg, model).values():
            total = total + child.component.flops(child.config, model, seq_len, conv)
        return total

    def flops_bounds(self, cfg: dict, model: ModelConfig, seq_len: int,
                     conv: FlopConvention) -> tuple[int, int] | None:
        """The least and most matmul + attention FLOPs (own_flops_bounds) with the children's."""
        own = self.own_flops_bounds(cfg, model, seq_len, conv)
        if own is None:
            return None
        exact = sum(f.matmul + f.attention for f in
                    (c.component.flops(c.config, model, seq_len, conv) for c in self.children(cfg, model).values()))
        return own[0] + exact, own[1] + exact

    def state_bytes(self, cfg: dict, model: ModelConfig, seq_len: int) -> int:
        return self.own_state_bytes(cfg, model, seq_len) + sum(
            c.component.state_bytes(c.config, model, seq_len) for c in self.children(cfg, model).values())

    def activation_bytes(self, cfg: dict, model: ModelConfig, seq_len: int) -> int:
        return self.own_activation_bytes(cfg, model, seq_len) + sum(
            c.component.activation_bytes(c.config, model, seq_len) for c in self.children(cfg, model).values())

    def notes(self, cfg: dict, model: ModelConfig) -> list[str]:
        out = list(self.own_notes(cfg, model))
        for c in self.children(cfg, model).values():
            out += [n for n in c.component.notes(c.config, model) if n not in out]
        return out

    def active_param_count(self, cfg: dict, model: ModelConfig) -> int:
        return 0 if self.whole_share_key(cfg) else self._unshared_active_param_count(cfg, model)

    def _unshared_active_param_count(self, cfg: dict, model: ModelConfig) -> int:
        return self.own_active_param_count(cfg, model) + sum(
            c.component.active_param_count(c.config, model) for c in self.children(cfg, model).values())

    # --- weights shared across sublayers ---------------------------------------------------
    def whole_share_key(self, cfg: dict) -> str | None:
        """`share: G` on a type without a sharing scheme of its own (one that keeps the default
        shared_params; schema/__init__.py offers the key only there): every instance of group G
        is one module, `shared.<type>_G`, holding all its weights (counted and saved once; its
        FLOPs and decoding state count per use). None: the instance's weights are its own."""
        group = cfg.get("share")
        if group is None or type(self).shared_params is not Component.shared_params:
            return None
        return f"{self.type}_{group}"

    def shared_params(self, cfg: dict, model: ModelConfig) -> dict[str, dict[str, tuple[int, ...]]]:
        """Weights shared by every instance that names the same key (PKM values shared across
        layers, a Zamba2 block): {key: {parameter name: shape}}. Each key is built once, by
        `build_shared`, as `model.shared[key]`; it is counted once and saved once, and the
        instances' modules read it from `ctx.shared[key]` in forward. `param_shapes` lists only
        the instance's own weights. Keys are module names (no dots). A type that overrides this
        has its own scheme; the default serves `share: G` (whole_share_key)."""
        key = self.whole_share_key(cfg)
        return {} if key is None else {key: self._unshared_param_shapes(cfg, model)}

    def shared_active_param_count(self, key: str, cfg: dict, model: ModelConfig) -> int:
        """Parameters of shared weights `key` this instance uses per token (PKM: the value rows
        it reads); the shared part's active count sums this over its users, capped at its
        size. Default: all of them (a whole shared instance: its own active count)."""
        if key == self.whole_share_key(cfg):
            return self._unshared_active_param_count(cfg, model)
        return numel(self.shared_params(cfg, model)[key])

    def build_shared(self, key: str, cfg: dict, model: ModelConfig):
        """The module holding shared weights `key` (see shared_params); for `share: G`, the
        type's own module (its reference backend), which every instance of the group runs."""
        if key == self.whole_share_key(cfg):
            return self.build(cfg, model, "reference")
        raise NotImplementedError(f"'{self.type}' declares shared weights but no build_shared")

    # --- kernels ---------------------------------------------------------------------------
    def kernels_unsupported(self, cfg: dict, model: ModelConfig) -> str | None:
        """(has_kernels) None when the kernels implement this config in this model, else why
        not (a chunk size; a width only the model knows): `auto` then keeps the reference, and
        forcing `triton` is an error that says why."""
        return None

    def kernels_auto_skips(self, cfg: dict, model: ModelConfig) -> str | None:
        """(has_kernels) None when `auto` may pick the kernels for this config, else why it
        keeps the reference though they run it right (they spill registers in this dtype: below
        the bar `archspec kernels` holds them to); forcing `triton` still runs them."""
        return None

    def kernel_launches(self, cfg: dict, model: ModelConfig, dtype) -> list:
        """(has_kernels) Every Triton kernel launch (archspec.ops.triton_support.KernelLaunch)
        that this config's `triton` backend makes in a forward and backward pass with `dtype`
        (a torch dtype) inputs: what `archspec kernels` compiles ahead of time, and what a build
        compiles for its CUDA device before it gives the component its kernels
        (codegen/build.py: a launch that does not compile makes `auto` fall back to the
        reference)."""
        return []

    # --- emission ------------------------------------------------------------------------
    def add_backend(self, name: str, factory, priority: int = 0, available=None, preferred=None,
                    supports=None, auto_skips=None) -> None:
        self.backends[name] = Backend(name, factory, priority, available or (lambda device: None),
                                      preferred or (lambda device: True), supports or (lambda cfg, model: None),
                                      auto_skips or (lambda cfg, model: None))

    def choose_backend(self, requested: str, device, cfg: dict | None = None,
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

    def build(self, cfg: dict, model: ModelConfig, backend: str = "auto", device="cpu"):
        """This component's nn.Module for `cfg` in `model`, by `backend`'s rule on `device`."""
        return self.choose_backend(backend, device, cfg, model).factory(cfg, model)


@dataclass(frozen=True)
class Child:
    """A component another is built from: its type and resolved config (make with `child`)."""

    type: str
    config: dict

    @property
    def component(self) -> Component:
        return REGISTRY[self.type]


def child(type_name: str, model: ModelConfig, **written) -> Child:
    """A child of `type_name` configured as a spec would: `written` over the schema's defaults,
    then derived."""
    comp = REGISTRY[type_name]
    cfg = {k: copy.deepcopy(p["default"]) for k, p in comp.schema.get("properties", {}).items() if "default" in p}
    cfg.update(written)
    return Child(type_name, comp.derive(cfg, model))


REGISTRY: dict[str, Component] = {}


def register(cls: type[Component]) -> type[Component]:
    """Class decorator: make a component type available to specs. Its `reference` backend builds
    `cls.module` (or a `Module` class attribute, for a type defined in one file, as tests do);
    with `has_kernels`, its `triton` backend builds the same module with its kernels on
    (components/modules.py: with_kernels)."""
    if cls.type in REGISTRY:
        raise RuntimeError(f"component type '{cls.type}' registered twice")
    instance = cls()
    module_class = _inline_module(cls) if hasattr(cls, "Module") else _lazy_module(cls.module) if cls.module else None
    if module_class is not None:
        instance.add_backend("reference", lambda cfg, model: module_class()(cfg, model), priority=0)
    if cls.has_kernels:
        instance.add_backend("triton", lambda cfg, model: _with_kernels(module_class()(cfg, model)),
                             priority=triton_rule.TRITON_PRIORITY, available=triton_rule.triton_unavailable,
                             preferred=triton_rule.triton_preferred, supports=instance.kernels_unsupported,
                             auto_skips=instance.kernels_auto_skips)
    REGISTRY[cls.type] = instance
    return cls


def _inline_module(cls) -> Callable[[], type]:
    return lambda: cls.Module


def _lazy_module(path: str) -> Callable[[], type]:
    """'package.module:Class' -> a loader of the class (importing torch only when called)."""
    module_name, _, class_name = path.partition(":")
    return lambda: getattr(importlib.import_module(module_name), class_name)


def _with_kernels(module):
    from .modules import with_kernels
    return with_kernels(module)


def get(type_name: str) -> Component:
    return REGISTRY[type_name]


def types_with_role(role: str) -> list[str]:
    return sorted(t for t, c in REGISTRY.items() if c.role == role)


def numel(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())
