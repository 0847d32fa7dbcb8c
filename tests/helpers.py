"""Checks that several test files share: plain functions (the fixtures are in conftest.py).

* saved_tensors, saved_bytes, saved_bytes_by: what autograd keeps for backward, the measure an
  `activation_bytes` estimate is checked against;
* assert_decodes_like_forward with its adapters decoding and in_place: a component's
  token-by-token form against its parallel forward;
* assert_located: a spec problem is reported where it should be, saying what it should.
"""
from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from archspec.errors import Problem


# --- what autograd saves ---------------------------------------------------------------------

def saved_tensors(run: Callable[[], object], tag: Callable[[], str] = lambda: "") -> list[tuple[str, torch.Tensor]]:
    """(tag(), tensor) for every tensor autograd saves for backward while run() executes, in the
    order saved; a tensor saved twice appears twice. tag() is read when the tensor is saved, so a
    caller can name the part of the model running then. The tensors are kept alive until the
    list goes, so two entries with the same storage address are the same storage."""
    saved: list[tuple[str, torch.Tensor]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append((tag(), t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return saved


def saved_bytes_by(run: Callable[[], object], weights: nn.Module,
                   tag: Callable[[], str] = lambda: "") -> dict[str, int]:
    """Bytes of the activations autograd saves while run() executes, by tag() when each storage
    is first saved: every distinct storage once, however many views of it are saved, and the
    parameters and buffers of `weights` left out (weights, not activations). Whole storages are
    what memory holds and what the estimates count, so the figure is exact: callers compare it
    with an estimate by equality, or state why theirs is a bound."""
    skip = {t.untyped_storage().data_ptr() for t in [*weights.parameters(), *weights.buffers()]}
    out: dict[str, int] = defaultdict(int)
    for label, t in saved_tensors(run, tag):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            skip.add(storage.data_ptr())
            out[label] += storage.nbytes()
    return dict(out)


def saved_bytes(module: nn.Module, *inputs) -> int:
    """saved_bytes_by for one forward module(*inputs): the bytes an `activation_bytes`
    estimate predicts (per sequence, so times the batch) for the module's reference path."""
    return sum(saved_bytes_by(lambda: module(*inputs), module).values())


# --- decoding ----------------------------------------------------------------------------------

Step = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]


def in_place(step: Callable[[torch.Tensor, dict], torch.Tensor]) -> Step:
    """A step that updates its cache in place, step(x_t, cache) -> y_t, in the form
    assert_decodes_like_forward takes: (x_t, state) -> (y_t, state)."""
    return lambda x_t, cache: (step(x_t, cache), cache)


def decoding(module: nn.Module, batch: int, seq_len: int) -> tuple[Callable[[], object], Step]:
    """(init, step) of a module's token-by-token form, whichever of today's signatures it has:
    mamba and mamba2 `initial_state(batch)` and `step(x_t, state) -> (y_t, state)`; moe
    `init_cache(batch, seq_len, device)` and mom `init_cache(batch, seq_len, device, dtype)`
    (seq_len fixes their capacity limit), sparse_attention `init_cache(batch, device, dtype)`,
    whose steps update the cache in place. The one place to change when decoding is unified."""
    if hasattr(module, "initial_state"):
        return (lambda: module.initial_state(batch)), module.step
    if "seq_len" in inspect.signature(module.init_cache).parameters:
        return (lambda: module.init_cache(batch, seq_len)), in_place(module.step)
    return (lambda: module.init_cache(batch)), in_place(module.step)


def assert_decodes_like_forward(module: nn.Module, x: torch.Tensor, *, init: Callable[[], object],
                                step: Step, tol: float, start: int = 0,
                                each: Callable[[int, object], None] | None = None):
    """Steps `module` token by token over x[:, start:] from the state init() returns (a fresh
    one, or a prefill's) and checks the outputs against the parallel forward module(x)[:, start:]
    without gradients. The error is normwise: max |step - forward| over the largest |forward| of
    the whole sequence, in float64, and must be below `tol`. Elementwise relative error would be
    meaningless: outputs cross zero, and both forms' rounding errors are absolute (eps times the
    size of the terms summed), which the largest entry bounds. `tol` is the caller's, justified
    there: it depends on the dtype and on how differently the two forms order their sums.
    each(t, state) runs after the step that has consumed t tokens (checks of the state, such as
    its size). Returns (the forward's output, the final state)."""
    with torch.no_grad():
        full = module(x)
        state = init()
        outs = []
        for t in range(start, x.shape[1]):
            y, state = step(x[:, t], state)
            outs.append(y)
            if each is not None:
                each(t + 1, state)
    steps = torch.stack(outs, 1).double()
    err = ((steps - full[:, start:].double()).abs().max() / full.double().abs().max()).item()
    assert err < tol, f"decoding differs from the forward by {err:.3g} of its largest output (tol {tol})"
    return full, state


# --- located problems --------------------------------------------------------------------------

def assert_located(found: list[Problem], *, key: str | None = None, path: tuple | None = None,
                   at: int | tuple[int, int] | None = None, message: str | None = None,
                   words: str | None = None, hint: str | None = None,
                   hint_words: str | None = None) -> Problem:
    """Checks the problem a bad spec raises (`found`: the `problems` fixture's list, what
    SpecError carries) and returns it. With `key`, it is the one problem whose path ends at key
    (others may be reported too); without, the spec's only problem. It has the whole `path`,
    is `at` a 1-based line or (line, column), and has exactly the `message` and `hint`, or
    contains `words` and `hint_words`; what is not given is not checked."""
    chosen = [p for p in found if p.path and p.path[-1] == key] if key is not None else found
    assert len(chosen) == 1, [p.format() for p in found]
    (p,) = chosen
    if path is not None:
        assert p.path == path, p.format()
    if at is not None:
        assert (p.loc.line if isinstance(at, int) else (p.loc.line, p.loc.col)) == at, p.format()
    if message is not None:
        assert p.message == message, p.format()
    if words is not None:
        assert words in p.message, p.format()
    if hint is not None:
        assert p.hint == hint, p.format()
    if hint_words is not None:
        assert p.hint and hint_words in p.hint, p.format()
    return p
