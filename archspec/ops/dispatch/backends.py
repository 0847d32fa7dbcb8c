"""MoM's dispatch entry points: each gathers or combines by the plain PyTorch ground truth
(`backend="reference"`, naive.py) or by the Triton kernels (`backend="triton"`,
triton_dispatch.py), after checking its arguments (ValueError: what is wrong and what to do).
Shapes and math: the package docstring."""
from __future__ import annotations

from torch import Tensor

from ..triton_support import check_runnable, install_flop_formulas
from . import naive
from .plan import RowMap, check_token, check_token_range, row_map
from .triton_dispatch import dispatch_combine, dispatch_gather


def _check_2d(t: Tensor, name: str, shape: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {shape}, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D {shape}, got shape {tuple(t.shape)}; reshape it to "
                         f"2-D first (e.g. {name}.reshape({name}.shape[0], -1))")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float32, bfloat16, float16), got {t.dtype}")


def _check_device(*tensors: Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}; move them "
                         "with .to(device)")


def _check_backend(backend: str) -> None:
    if backend not in ("reference", "triton"):
        raise ValueError(f"unknown dispatch backend {backend!r}; use 'reference' or 'triton'")


def _as_row_map(token: Tensor | RowMap, n_tokens: int, what: str) -> RowMap:
    if isinstance(token, RowMap):
        if token.n_tokens != n_tokens:
            raise ValueError(f"{what}: the RowMap was built for {token.n_tokens} tokens but {n_tokens} "
                             f"are needed; build it with row_map(token, {n_tokens})")
        return token
    return row_map(token, n_tokens)


def _token_of(token: Tensor | RowMap) -> Tensor:
    t = token.token if isinstance(token, RowMap) else token
    check_token(t)
    return t


def gather_rows(x: Tensor, token: Tensor | RowMap, backend: str = "reference") -> Tensor:
    """x [N, D] -> x[token] [P, D] (x's dtype). `token`: int64 [P] with values in [0, N), or a
    `RowMap` of N tokens (row_map(token, N)), reused across ops. Differentiable in x."""
    _check_backend(backend)
    _check_2d(x, "x", "[N, D]")
    t = _token_of(token)
    _check_device(x, t)
    if backend == "reference":
        check_token_range(t, x.shape[0], "gather_rows of x")
        return naive.gather_rows(x, t)
    rows = _as_row_map(token, x.shape[0], "gather_rows")
    install_flop_formulas()  # so a FlopCounterMode created before the first call counts the ops
    if x.device.type != "meta":
        check_runnable(x)
    return dispatch_gather(x, rows.token, rows.order, rows.offsets)


def combine_rows(o: Tensor, weight: Tensor, token: Tensor | RowMap, n_tokens: int | None = None,
                 backend: str = "reference") -> Tensor:
    """o [P, D], weight [P], token int64 [P] (values in [0, n_tokens)) -> out [n_tokens, D]
    (o's dtype), out[t] = sum over rows r with token[r] == t of weight[r] o[r], accumulated in
    float32. `token` may be a `RowMap` (then n_tokens defaults to its own). Differentiable in o
    and weight."""
    _check_backend(backend)
    _check_2d(o, "o", "[P, D]")
    t = _token_of(token)
    if n_tokens is None:
        if not isinstance(token, RowMap):
            raise ValueError("combine_rows needs n_tokens (the number of output rows) with a token tensor; "
                             "pass n_tokens=..., or a RowMap from row_map(token, n_tokens)")
        n_tokens = token.n_tokens
    n_tokens = int(n_tokens)
    if not isinstance(weight, Tensor) or weight.dim() != 1 or not weight.is_floating_point():
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a 1-D floating-point tensor [P] (one weight per packed row), "
                         f"got {got}")
    if not (o.shape[0] == weight.shape[0] == t.shape[0]):
        raise ValueError(f"o, weight and token must have one entry per packed row: got o {tuple(o.shape)}, "
                         f"weight {tuple(weight.shape)}, token {tuple(t.shape)}")
    _check_device(o, weight, t)
    if backend == "reference":
        if n_tokens < 0:
            raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
        check_token_range(t, n_tokens, "combine_rows")
        return naive.combine_rows(o, weight, t, n_tokens)
    rows = _as_row_map(token, n_tokens, "combine_rows")
    install_flop_formulas()
    if o.device.type != "meta":
        check_runnable(o)
    return dispatch_combine(o, weight, rows.token, rows.order, rows.offsets)
