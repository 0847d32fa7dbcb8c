"""Checks that several test files share: plain functions (the fixtures are in conftest.py).

* saved_tensors, saved_bytes, saved_bytes_by: what autograd keeps for backward, the measure an
  `activation_bytes` estimate is checked against;
* assert_decodes_like_forward and state_bytes_per_sequence: a component's decoding contract
  (prefill, then steps) against its parallel forward, and its state's bytes;
* assert_located: a spec problem is reported where it should be, saying what it should.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from archspec.components.modules import state_nbytes
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

def state_bytes_per_sequence(state, batch: int) -> int:
    """The bytes a decoding state's tensors hold (modules.state_nbytes), per sequence: every
    tensor in a state has the batch axis, so the total divides by `batch` exactly."""
    total = state_nbytes(state)
    assert total % batch == 0, f"{total} state bytes do not divide into {batch} sequences"
    return total // batch


def assert_decodes_like_forward(module: nn.Module, x: torch.Tensor, *, tol: float, prompt: int = 0,
                                max_len: int | None = None, state=None, ctx=None,
                                each: Callable[[int, object], None] | None = None):
    """The decoding contract (archspec/components/modules.py) against the parallel forward,
    without gradients: from init_state(B, max_len or T) (or the given `state`), prefill over
    x[:, :prompt] (when prompt > 0), then one step per token of x[:, prompt:]; the
    concatenated outputs must match module(x). The error is normwise: max |decoded - forward|
    over the largest |forward| of the whole sequence, in float64, and must be below `tol`.
    Elementwise relative error would be meaningless: outputs cross zero, and both forms'
    rounding errors are absolute (eps times the size of the terms summed), which the largest
    entry bounds. `tol` is the caller's, justified there: it depends on the dtype and on how
    differently the two forms order their sums. each(t, state) runs after every step (t:
    tokens consumed). Returns (the forward's output, the final state)."""
    b, t, _ = x.shape
    with torch.no_grad():
        full = module(x, ctx)
        if state is None:
            state = module.init_state(b, max_len or t, x.device, x.dtype)
        outs = [module.prefill(x[:, :prompt], state, ctx)] if prompt else []
        for i in range(prompt, t):
            outs.append(module.step(x[:, i], state, ctx)[:, None])
            if each is not None:
                each(i + 1, state)
    decoded = torch.cat(outs, 1).double()
    err = ((decoded - full.double()).abs().max() / full.double().abs().max()).item()
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
