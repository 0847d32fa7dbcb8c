"""The component contract, module side: what every component's nn.Module shares (imported only
when a model is built; the spec side, components/base.py, imports no torch).

    module(x [B, T, d], ctx) -> y [B, T, d]      a sublayer member; ctx: ForwardContext
    module.reset_parameters()                    fill weights after a meta-device build
    module.form      "fast" (default) or, where a type has one, "reference": the plain,
                     slow ground truth the fast form is tested against (the same parameters)
    module.backend   "reference" or "triton": whether its Triton kernels run (set once, by
                     the `triton` backend of a type with has_kernels; same parameters, same math)

Decoding (every sublayer type; the defaults below serve a stateless one: mlp, gated_adapter):
    state = module.init_state(batch, max_len, device, dtype)   its state for sequences of at
                     most max_len tokens (None: stateless); fresh, nothing consumed
    y = module.prefill(x [B, T, d], state, ctx)      the parallel form over a prompt, filling a
                     fresh state as T steps would: y [B, T, d]
    y_t = module.step(x_t [B, d], state, ctx)        one token (x_t has no time axis), updating
                     `state` in place: y_t [B, d]
    state = module.cat_states([s_1, s_2, ...])      one state holding the rows of several, in
                     order, each row at its own position (prompts of different lengths, each
                     group prefilled alone): default `cat_rows`
prefill on x[:, :P] and then steps on x[:, P], x[:, P + 1], ... give forward(x) (to rounding),
and the state's tensors hold batch x `state_bytes(cfg, model, max_len)` bytes after max_len
tokens (tests/test_contract.py). `ctx` carries the shared weights (ctx.shared) as in forward.

Positions: a state's `pos` (an int) counts the tokens its furthest row consumed. A state whose
step depends on the position (RoPE, a KV slot, a chunk boundary) has a field `lag`: None when
every row is at `pos`, else int64 [B] (after cat_states of states at different positions): row
b is at position pos - lag[b], and its step reads only what that row has written. A merged
state so holds 8 bytes per row more than the figure (the per-row offset), and no padding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from ..ops.triton_support import install_flop_formulas

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}
DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}  # torch dtype -> spec name


class ForwardContext:
    """Carried through one forward pass: components add auxiliary losses here (MoE load
    balancing, MoM routing); the model returns their sum next to the LM loss."""

    def __init__(self, shared: dict | None = None):
        self.aux_losses: dict[str, torch.Tensor] = {}
        # weights shared across sublayers (Component.shared_params), by key: model.shared[key]
        self.shared = shared if shared is not None else {}
        # the embedding output [B, T, d] (or [B, d] in a decoding step), for components that
        # read it beside the stream (feed_block's concat_embeddings); set by the model
        self.embeddings: torch.Tensor | None = None

    def add_aux_loss(self, name: str, value: torch.Tensor) -> None:
        self.aux_losses[name] = self.aux_losses[name] + value if name in self.aux_losses else value


class ComponentModule(nn.Module):
    """Base of every component's module. Modules are first built on the meta device (free),
    then materialised: `reset_parameters()` fills weights and recomputes buffers in place."""

    # the forms this type computes in: the fast one first, then "reference" where it has a
    # separate ground truth (tests and benchmarks switch `form`; training never does)
    forms: ClassVar[tuple[str, ...]] = ("fast",)
    backends: ClassVar[tuple[str, ...]] = ("reference",)

    def __init__(self):
        super().__init__()
        self._form = self.forms[0]
        self._backend = "reference"

    @property
    def form(self) -> str:
        return self._form

    @form.setter
    def form(self, value: str) -> None:
        if value not in self.forms:
            raise ValueError(f"{type(self).__name__} computes in the forms {', '.join(self.forms)}; got {value!r}")
        self._form = value

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in self.backends:
            raise ValueError(f"{type(self).__name__} has the backends {', '.join(self.backends)}; got {value!r}")
        self._backend = value

    # --- decoding (module docstring); the defaults are those of a stateless type ------------
    def init_state(self, batch: int, max_len: int, device=None, dtype=None):
        """The state for `batch` sequences of at most `max_len` tokens; None: stateless."""
        return None

    def prefill(self, x: torch.Tensor, state, ctx=None) -> torch.Tensor:
        """x [B, T, d] -> y [B, T, d], filling the fresh `state` (stateless: the forward)."""
        return self(x, ctx)

    def step(self, x_t: torch.Tensor, state, ctx=None) -> torch.Tensor:
        """x_t [B, d] -> y_t [B, d], updating `state` (stateless: the forward of one token)."""
        return self(x_t[:, None], ctx)[:, 0]

    def cat_states(self, states: list):
        """One state holding the rows of `states` (this module's, same max_len) in order, each
        row at its own position (module docstring: `lag`); None: stateless."""
        return cat_rows(states)

    def reset_parameters(self) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError(f"{type(self).__name__} must define reset_parameters")


class SharedUse(ComponentModule):
    """One use of a `share` group (Component.whole_share_key): no weights of its own; forward,
    prefill and step run the group's module, `model.shared[key]`, with this use's own decoding
    state. `target` is kept outside the module tree, so its weights are counted and saved once,
    under `shared.<key>`."""

    def __init__(self, key: str, target: nn.Module):
        super().__init__()
        self.key = key
        self.__dict__["target"] = target  # not a submodule: the model owns it as shared[key]

    def reset_parameters(self) -> None:
        pass  # the weights are the group's: CausalLM resets shared[key] once

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        return self.target(x, ctx)

    def init_state(self, batch: int, max_len: int, device=None, dtype=None):
        return self.target.init_state(batch, max_len, device, dtype)

    def prefill(self, x: torch.Tensor, state, ctx=None) -> torch.Tensor:
        return self.target.prefill(x, state, ctx)

    def step(self, x_t: torch.Tensor, state, ctx=None) -> torch.Tensor:
        return self.target.step(x_t, state, ctx)


def with_kernels(module: ComponentModule) -> ComponentModule:
    """The `triton` backend: `module` with its Triton kernels on."""
    install_flop_formulas()  # so a model is counted right before its kernels first run
    module.backend = "triton"
    return module


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or in float64 if it is float64: where a module computes in float32 for
    low-precision inputs, a float64 model (the gradcheck reference) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def build_child(child, model) -> ComponentModule | None:
    """The module of a child component (Component.children), or None for an absent one. The
    parent keeps it as the attribute the child is named by, so the parameter names are the
    ones the spec side prefixes."""
    return None if child is None else child.component.build(child.config, model, "reference")


def state_device_dtype(module: nn.Module, device=None, dtype=None) -> tuple:
    """(device, dtype) of a decoding state: the given ones, else the module's weights'."""
    w = next(module.parameters())
    return (w.device if device is None else torch.device(device)), (w.dtype if dtype is None else dtype)


def state_nbytes(state) -> int:
    """Bytes of every tensor a decoding state holds (dataclass fields, dict values, tuple and
    list items, nested; other values such as a position count nothing)."""
    if isinstance(state, torch.Tensor):
        return state.nbytes
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        state = [getattr(state, f.name) for f in dataclasses.fields(state)]
    elif isinstance(state, dict):
        state = list(state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return 0


def cat_rows(states: list):
    """The default cat_states: a state of the same dataclass whose tensors are those of
    `states` concatenated along the batch axis (the class's `batch_axes` names the fields whose
    batch axis is not 0; None stays None), `pos` the largest, `lag` (where the class has one)
    each row's distance behind it, and every other field equal in all (else a ValueError)."""
    first = states[0]
    if first is None or len(states) == 1:
        return first
    axes = getattr(type(first), "batch_axes", {})
    pos = max(s.pos for s in states)
    out = {}
    for f in dataclasses.fields(first):
        values = [getattr(s, f.name) for s in states]
        if f.name == "pos":
            out["pos"] = pos
        elif f.name == "lag":
            out["lag"] = cat_lags(states, pos, axes)
        elif isinstance(values[0], torch.Tensor):
            out[f.name] = torch.cat(values, axes.get(f.name, 0))
        elif any(v != values[0] for v in values):
            raise ValueError(f"cat_states: the states disagree in {f.name} ({values}); "
                             "make them with the same init_state arguments")
        else:
            out[f.name] = values[0]
    return type(first)(**out)


def cat_lags(states: list, pos: int, axes: dict) -> torch.Tensor | None:
    """The merged `lag` [B] (int64; None when every row is at `pos`): each state's rows are
    pos - state.pos behind, plus their own lag."""
    if all(s.pos == pos and s.lag is None for s in states):
        return None
    lags = []
    for s in states:
        tensors = [(f.name, getattr(s, f.name)) for f in dataclasses.fields(s)
                   if isinstance(getattr(s, f.name), torch.Tensor)]
        if not tensors:  # a state without tensors (moe's token router) has nothing per position
            return None
        name, t = tensors[0]
        own = torch.zeros(t.shape[axes.get(name, 0)], dtype=torch.long, device=t.device) if s.lag is None else s.lag
        lags.append(own + (pos - s.pos))
    return torch.cat(lags)


def row_positions(state, batch: int, device) -> torch.Tensor:
    """int64 [B]: each row's position (the next token's): pos - lag, or pos for every row."""
    if state.lag is None:
        return torch.full((batch,), state.pos, dtype=torch.long, device=device)
    return state.pos - state.lag


def fresh(state) -> None:
    """Raise unless `state` has consumed nothing: prefill fills a fresh state."""
    if state.pos != 0:
        raise ValueError(f"prefill fills a fresh state; this one has consumed {state.pos} tokens "
                         "(continue it with step, or start from init_state)")


@torch.no_grad()
def init_dt_bias(bias: torch.Tensor, dt_min: float, dt_max: float, floor: float) -> None:
    """bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] and floored, so that
    softplus(bias) starts at dt. softplus^-1(y) = y + log(1 - exp(-y)) = y + log(-expm1(-y))."""
    u = torch.rand(bias.shape, device=bias.device, dtype=torch.float32)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))
