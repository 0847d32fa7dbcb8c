"""The Triton RMSNorms as torch custom ops (`archspec::*`), with fake implementations, autograd
and FLOP formulas, and their Python entry points. The math is naive.py's; the kernels are in
triton_kernels.py (imported only when a kernel runs).

    fused_rmsnorm(x, w, eps)                  x: [..., n], w: [n]  ->  y = x / rms(x) * w
    fused_add_rmsnorm(x, r, w, eps)           ->  (y, h): h = x + r (x when r is None), y = h / rms(h) * w
    fused_gated_rmsnorm(x, z, w, eps, norm_before_gate, group_size=None)
        norm_before_gate=True:  y = x / rms(x) * w * silu(z)
        norm_before_gate=False: y = u / rms(u) * w,  u = x * silu(z)
    rms(u) = sqrt(mean(u^2) + eps) over each group of `group_size` columns (default: the row)

Inputs are float32, bfloat16 or float16 (z and w may differ from x); the work is in float32,
outputs are in x's dtype (h too: the residual stream as the model stores it), gradients in each
input's dtype. Backward ops: `rmsnorm_backward` gives (dx, dw) from dy and dh (the gradient of
h; dx is also the residual's gradient), `gated_rmsnorm_backward` gives (dx, dz, dw). dw is
summed per program in the kernel and across programs in torch: deterministic, no atomics.

Rows of up to MAX_WIDTH columns (costs.py). A program holds one column block of at most
FWD_COLUMNS (forward) or BWD_COLUMNS (backward) columns; a group wider than that is split into
chunks, and a stats kernel run first gives its rstd (and the backward's c = mean(gh * uhat)) per
row, so each op is one or two launches per direction (triton_kernels.py).
"""
from __future__ import annotations

import torch

from ..triton_support import (check_runnable, install_flop_formulas, interpreting, launch, register_flops,
                              triton_unavailable)
from .costs import DTYPE_NAMES, MAX_WIDTH, width_unsupported

DTYPES = tuple(getattr(torch, name) for name in DTYPE_NAMES)
TILE = 4096  # elements of a narrow rows' tile, [BLOCK_M rows, column block]: rows per program
# The widest column block one program holds (padded columns): at 16 warps, 16 float32 per
# thread per tensor in the forward, 8 in the backward and the stats kernels, which hold more
# tensors at once. Measured by the gate (`archspec kernels --compile`) on sm_80 and sm_90: the
# backward spilled at 8192 (28-200 bytes; at 16384, 6,388), the forward passes at 8192. A group
# wider than its direction's block is split into column chunks (SPLIT, triton_kernels.py).
FWD_COLUMNS = 8192
BWD_COLUMNS = 4096
BWD_PROGRAMS_PER_SM = 4  # backward programs per CUDA multiprocessor (each loops over row blocks)
BWD_PROGRAMS_CPU = 4  # ... under the interpreter



# --- checks (ValueError: what is wrong and what to do) -----------------------------------------

def _check(x: torch.Tensor, weight: torch.Tensor, others: dict[str, torch.Tensor | None],
           group_size: int | None = None) -> int:
    """Validate the inputs of a norm over x's last dimension; returns the group size."""
    if x.dim() < 1:
        raise ValueError("fused RMSNorm: x must have at least one dimension (the normalised one)")
    n = int(x.shape[-1])  # (a tensor while torch.jit traces: fvcore)
    for name, t in {"x": x, "weight": weight, **others}.items():
        if t is not None and t.dtype not in DTYPES:
            raise ValueError(f"fused RMSNorm: {name} is {t.dtype}; the Triton kernels take "
                             "float32, bfloat16 or float16 (use backend 'reference' for others)")
        if t is not None and t.device != x.device:
            raise ValueError(f"fused RMSNorm: {name} is on {t.device} but x is on {x.device}; "
                             "move them to one device")
    if weight.shape != (n,):
        raise ValueError(f"fused RMSNorm: weight has shape {tuple(weight.shape)}, expected ({n},) "
                         "(one scale per column of x's last dimension)")
    for name, t in others.items():
        if t is not None and t.shape != x.shape:
            raise ValueError(f"fused RMSNorm: {name} has shape {tuple(t.shape)} but x has "
                             f"{tuple(x.shape)}; they must match")
    reason = width_unsupported(n, group_size)
    if reason is not None:
        raise ValueError(f"fused RMSNorm: {reason}")
    if torch.compiler.is_compiling():
        return group_size or n
    install_flop_formulas()
    if x.device.type != "meta":
        reason = triton_unavailable(x.device)
        if reason is not None:
            raise ValueError(f"fused RMSNorm: cannot run the Triton kernel on {x.device}: {reason}")
    return group_size or n


def _pow2(v: int) -> int:
    return 1 << max(0, v - 1).bit_length()


# --- launchers ---------------------------------------------------------------------------------

def _layout(m: int, n: int, group: int, device: torch.device, columns: int) -> tuple[dict, int]:
    """(meta, column blocks) of an apply kernel over m rows of n columns in groups of `group`,
    column blocks at most `columns` wide: whole groups per block when a group fits (SPLIT off),
    else chunks of `columns` of one group (SPLIT: the stats kernel gives the group statistics)."""
    ng = n // group
    if _pow2(group) <= columns:
        block_g = _pow2(group)
        block_ng = min(_pow2(ng), columns // block_g)
        blocks, split = _cdiv(ng, block_ng), False
    else:
        block_g, block_ng = columns, 1
        blocks, split = ng * _cdiv(group, columns), True
    block_m = _rows_per_program(m, block_ng * block_g)
    return dict(BLOCK_M=block_m, BLOCK_NG=block_ng, BLOCK_G=block_g, SPLIT=split,
                ROUND_BF16=_round_bf16(device), num_warps=_warps(block_m * block_ng * block_g)), blocks


def _stats_layout(m: int, group: int) -> dict:
    """Meta of a stats kernel: BLOCK_M rows by chunks of BWD_COLUMNS columns of one group."""
    block_g = min(_pow2(group), BWD_COLUMNS)
    block_m = _rows_per_program(m, block_g)
    return dict(BLOCK_M=block_m, BLOCK_G=block_g, num_warps=_warps(block_m * block_g))


def _rows_per_program(m: int, width: int) -> int:
    return max(1, min(_pow2(m), TILE // width))


def _warps(elements: int) -> int:
    """8 elements per thread at 4096 and beyond (16 warps, the most that pays here)."""
    return min(16, max(2, elements // 256))


def _round_bf16(device: torch.device) -> bool:
    # rounding by hand only where the interpreter runs (the CPU); a GPU, and the meta tensors
    # the gate records launches with, round in hardware
    return device.type == "cpu" and interpreting()


def _rows(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1, n).contiguous()


def _forward(x, residual, z, weight, eps, norm_before_gate, group):
    """(y, h or None) of the forward kernels; x, residual, z: [..., n]."""
    check_runnable(x)
    n = x.shape[-1]
    x2, r2, z2 = _rows(x, n), _rows(residual, n), _rows(z, n)
    m = x2.shape[0]
    y = torch.empty_like(x2)
    h = torch.empty_like(x2) if residual is not None else None
    if not m:
        return y.reshape(x.shape), _shaped(h, x)
    from .triton_kernels import norm_fwd_kernel, norm_fwd_stats_kernel
    meta, blocks = _layout(m, n, group, x.device, FWD_COLUMNS)
    flags = dict(HAS_GATE=z is not None, NORM_BEFORE_GATE=bool(norm_before_gate))
    # absent optional tensors are never read (their flags are off); x (or y) stands in for them
    rstd, source, has_residual = y, x2, residual is not None
    if meta["SPLIT"]:
        rstd = torch.empty(m, n // group, dtype=torch.float32, device=x.device)
        stats = _stats_layout(m, group)
        launch(norm_fwd_stats_kernel, (_cdiv(m, stats["BLOCK_M"]), n // group), x2, _or(r2, x2),
               _or(z2, x2), _or(h, y), rstd, m, n, n // group, group, eps, HAS_RESIDUAL=has_residual,
               ROUND_BF16=meta["ROUND_BF16"], **flags, **stats)
        if has_residual:  # h is stored: normalise it as stored
            source, has_residual = h, False
    launch(norm_fwd_kernel, (_cdiv(m, meta["BLOCK_M"]), blocks), source, _or(r2, x2), _or(z2, x2),
           weight.contiguous(), y, _or(h, y), rstd, m, n, n // group, group, eps,
           HAS_RESIDUAL=has_residual, **flags, **meta)
    return y.reshape(x.shape), _shaped(h, x)


def _backward(dy, dh, x, z, weight, eps, norm_before_gate, group):
    """(dx, dz or None, dw); x is the normalised input (h after a residual add)."""
    check_runnable(x)
    n = x.shape[-1]
    x2, z2, dy2, dh2 = _rows(x, n), _rows(z, n), _rows(dy, n), _rows(dh, n)
    m = x2.shape[0]
    dx = torch.empty_like(x2)
    dz = torch.empty_like(z2) if z is not None else None
    if not m:
        return dx.reshape(x.shape), _shaped(dz, x), torch.zeros_like(weight)
    from .triton_kernels import norm_bwd_kernel, norm_bwd_stats_kernel
    meta, blocks = _layout(m, n, group, x.device, BWD_COLUMNS)
    flags = dict(HAS_GATE=z is not None, NORM_BEFORE_GATE=bool(norm_before_gate))
    w = weight.contiguous()
    rstd = c = dx  # not read unless SPLIT
    if meta["SPLIT"]:
        rstd, c = (torch.empty(m, n // group, dtype=torch.float32, device=x.device) for _ in range(2))
        stats = _stats_layout(m, group)
        launch(norm_bwd_stats_kernel, (_cdiv(m, stats["BLOCK_M"]), n // group), dy2, x2, _or(z2, x2), w,
               rstd, c, m, n, n // group, group, eps, **flags, **stats)
    # the machine's programs are shared among the column blocks: one dw partial row per program
    n_blocks = _cdiv(m, meta["BLOCK_M"])
    per_program = _cdiv(n_blocks, min(n_blocks, max(1, _max_bwd_programs(x.device) // blocks)))
    programs = _cdiv(n_blocks, per_program)
    partial = torch.empty(programs, n, dtype=torch.float32, device=x.device)
    launch(norm_bwd_kernel, (programs, blocks), dy2, _or(dh2, dy2), x2, _or(z2, x2), w, dx,
           _or(dz, dx), partial, rstd, c, m, n, n // group, group, eps, per_program,
           HAS_DH=dh is not None, **flags, **meta)
    return dx.reshape(x.shape), _shaped(dz, x), partial.sum(0).to(weight.dtype)


def _max_bwd_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return BWD_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return BWD_PROGRAMS_CPU


def _or(t, default):
    return default if t is None else t


def _shaped(t, like):
    return None if t is None else t.reshape(like.shape)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- custom ops --------------------------------------------------------------------------------

@torch.library.custom_op("archspec::rmsnorm", mutates_args=())
def rmsnorm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _forward(x, None, None, weight, eps, True, x.shape[-1])[0]


@rmsnorm_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("archspec::add_rmsnorm", mutates_args=())
def add_rmsnorm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(x, residual, None, weight, eps, True, x.shape[-1])


@add_rmsnorm_op.register_fake
def _(x, residual, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)


@torch.library.custom_op("archspec::rmsnorm_backward", mutates_args=())
def rmsnorm_backward_op(dy: torch.Tensor, dh: torch.Tensor | None, x: torch.Tensor,
                        weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    dx, _, dw = _backward(dy, dh, x, None, weight, eps, True, x.shape[-1])
    return dx, dw


@rmsnorm_backward_op.register_fake
def _(dy, dh, x, weight, eps):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


@torch.library.custom_op("archspec::gated_rmsnorm", mutates_args=())
def gated_rmsnorm_op(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float,
                     norm_before_gate: bool, group_size: int) -> torch.Tensor:
    return _forward(x, None, z, weight, eps, norm_before_gate, group_size)[0]


@gated_rmsnorm_op.register_fake
def _(x, z, weight, eps, norm_before_gate, group_size):
    return x.new_empty(x.shape)


@torch.library.custom_op("archspec::gated_rmsnorm_backward", mutates_args=())
def gated_rmsnorm_backward_op(dy: torch.Tensor, x: torch.Tensor, z: torch.Tensor,
                              weight: torch.Tensor, eps: float, norm_before_gate: bool,
                              group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dy, None, x, z, weight, eps, norm_before_gate, group_size)


@gated_rmsnorm_backward_op.register_fake
def _(dy, x, z, weight, eps, norm_before_gate, group_size):
    return x.new_empty(x.shape), z.new_empty(z.shape), weight.new_empty(weight.shape)


def _save_x_weight(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _rmsnorm_grad(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw = rmsnorm_backward_op(dy, None, x, weight, ctx.eps)
    return dx, dw, None


def _save_h_weight(ctx, inputs, output):
    _, _, weight, eps = inputs
    ctx.save_for_backward(output[1], weight)  # h: what was normalised
    ctx.eps = eps


def _add_rmsnorm_grad(ctx, dy, dh):
    h, weight = ctx.saved_tensors
    dx, dw = rmsnorm_backward_op(dy, dh, h, weight, ctx.eps)
    return dx, dx, dw, None  # h = x + r: both get dL/dh


def _save_gated(ctx, inputs, output):
    x, z, weight, eps, norm_before_gate, group_size = inputs
    ctx.save_for_backward(x, z, weight)
    ctx.args = (eps, norm_before_gate, group_size)


def _gated_grad(ctx, dy):
    x, z, weight = ctx.saved_tensors
    dx, dz, dw = gated_rmsnorm_backward_op(dy, x, z, weight, *ctx.args)
    return dx, dz, dw, None, None, None


rmsnorm_op.register_autograd(_rmsnorm_grad, setup_context=_save_x_weight)
add_rmsnorm_op.register_autograd(_add_rmsnorm_grad, setup_context=_save_h_weight)
gated_rmsnorm_op.register_autograd(_gated_grad, setup_context=_save_gated)


def _elementwise(*args) -> int:
    """Norms are elementwise work: `Flops.other` in our accounting, which neither FlopCounterMode
    nor the fvcore comparison includes (archspec/flopcount.py), so their kernels count 0 there,
    as `rms_norm`'s decomposition does. Registered so fvcore does not report them unsupported."""
    return 0


for _op in (rmsnorm_op, add_rmsnorm_op, rmsnorm_backward_op, gated_rmsnorm_op,
            gated_rmsnorm_backward_op):
    register_flops(_op, _elementwise)


# --- entry points ------------------------------------------------------------------------------

def fused_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * w over x's last dimension, by the Triton kernel."""
    _check(x, weight, {})
    return rmsnorm_op(x, weight, float(eps))


def fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h): h = x + residual in x's dtype (x itself when residual is None), y = rmsnorm(h),
    in one kernel. h is the new residual stream."""
    if residual is not None and residual.dtype != x.dtype:
        raise ValueError(f"fused_add_rmsnorm: residual is {residual.dtype} but x is {x.dtype}; "
                         "the residual stream has one dtype (cast one of them)")
    _check(x, weight, {"residual": residual})
    if residual is None:
        return rmsnorm_op(x, weight, float(eps)), x
    return add_rmsnorm_op(x, residual, weight, float(eps))


def fused_gated_rmsnorm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float,
                        norm_before_gate: bool, group_size: int | None = None) -> torch.Tensor:
    """naive.gated_rmsnorm by the Triton kernel (see the module docstring)."""
    group = _check(x, weight, {"z": z}, group_size)
    return gated_rmsnorm_op(x, z, weight, float(eps), bool(norm_before_gate), group)


# --- launches for the ahead-of-time gate (`archspec kernels`) ----------------------------------

# Rows a training step normalises at once: enough that every width's tile holds its most rows
# (BLOCK_M = TILE // width), as any real batch does.
TRAIN_ROWS = TILE


def kernel_launches(width: int, dtype: torch.dtype, *, rows: int = TRAIN_ROWS, residual: bool = False,
                    gate: bool = False, norm_before_gate: bool = True, group_size: int | None = None,
                    z_dtype: torch.dtype | None = None, weight_dtype: torch.dtype | None = None,
                    dh: bool | None = None, backward: bool = True) -> list:
    """The Triton launches (triton_support.KernelLaunch) of one forward and backward of a norm
    over `rows` rows of `width` columns with `dtype` inputs: the launchers run on meta tensors
    and record instead of launching. `residual`: the fused add (the backward then gets the
    residual stream's gradient dh unless `dh` says otherwise); `gate`: the gated norm, z in
    `z_dtype` (default dtype); the weight in `weight_dtype` (default dtype); `backward`: False
    for decoding, which runs the forward only."""
    from ..triton_support import recorded_launches
    meta = dict(device="meta")
    x = torch.empty(rows, width, dtype=dtype, **meta)
    z = torch.empty(rows, width, dtype=z_dtype or dtype, **meta) if gate else None
    weight = torch.empty(width, dtype=weight_dtype or dtype, **meta)
    group = _check(x, weight, {"z": z, "residual": x if residual else None}, group_size)
    with_dh = residual if dh is None else dh
    with recorded_launches() as found:
        _forward(x, x if residual else None, z, weight, 1e-5, norm_before_gate, group)
        if backward:
            _backward(x, x if with_dh else None, x, z, weight, 1e-5, norm_before_gate, group)
    return found


def gate_launches() -> list:
    """Launches at the extremes of what the kernels accept (`width_unsupported`): the narrowest
    row (one column, the most rows a tile holds; and one row), the widest column block each
    direction holds whole (FWD_COLUMNS, BWD_COLUMNS: the forward's then also splits in the
    backward), the widest row (MAX_WIDTH, split in both: stats kernels and chunks), each plain,
    with the residual add (with and without dh), gated either way, as one group, as many small
    groups and as groups wider than a block; masked columns one short of each; float32 (the
    widest loads) and bfloat16 (conversions)."""
    found = []
    for dtype in (torch.float32, torch.bfloat16):
        found += kernel_launches(1, dtype)
        found += kernel_launches(1, dtype, rows=1)  # and its backward: one block per program
        for width in (BWD_COLUMNS, FWD_COLUMNS, MAX_WIDTH):
            found += kernel_launches(width, dtype, residual=True)
            found += kernel_launches(width, dtype, residual=True, dh=False)
            found += kernel_launches(width, dtype, gate=True, norm_before_gate=False)
            found += kernel_launches(width, dtype, gate=True, norm_before_gate=True)
            found += kernel_launches(width - 1, dtype)  # masked columns
        # many groups of 16 in column blocks; three groups wider than a block (chunks of ragged
        # groups: 3 * 5000 columns) and three a block holds whole, with a masked group padding
        # them to four (3 * 2048)
        found += kernel_launches(MAX_WIDTH, dtype, gate=True, norm_before_gate=True, group_size=16)
        found += kernel_launches(3 * 5000, dtype, gate=True, norm_before_gate=False, group_size=5000)
        found += kernel_launches(3 * 2048, dtype, gate=True, norm_before_gate=True, group_size=2048)
    return found
