"""Triton kernels of the RMSNorms in reference.py; the only module of this package that imports
triton (fused.py wraps them in custom ops). One forward and one backward kernel serve every
variant, chosen by constexpr flags: a residual add before the norm (HAS_RESIDUAL), a SiLU gate
(HAS_GATE, NORM_BEFORE_GATE), groups normalised separately.

Rows of width N = NG * GROUP (any leading shape flattened to M rows, contiguous), computed in
float32, stored in the input dtype. A program holds a [BLOCK_M, BLOCK_NG, BLOCK_G] tile: BLOCK_M
rows, each split into its NG groups of GROUP columns (padded to powers of two, masked), so a
group's statistics are a reduction over the last axis. Per group of a row:

    forward
      h  = x + r, rounded to the input dtype (HAS_RESIDUAL; stored: the new residual stream),
           then normalised as rounded, as the reference normalises the stream it stored
      s  = silu(z) = z sigmoid(z)                                        (HAS_GATE)
      u  = h * s (gate before the norm)  or  h
      rstd = 1 / sqrt(mean(u^2) + eps);  uhat = u * rstd
      y  = uhat * w * s (gate after the norm)  or  uhat * w

    backward (dy, optional dh: the gradient reaching the residual output h); rstd recomputed
      g    = dy * s (gate after the norm)  or  dy;    dz = dy * uhat * w * silu'(z) (gate after)
      dw  += g * uhat  (summed over the program's rows: one partial row per program, summed in
                        torch afterwards -- deterministic, no atomics)
      gh   = g * w;   du = rstd * (gh - uhat * mean(gh * uhat))
      dx   = du * s, dz = du * h * silu'(z) (gate before the norm)  or  dx = du;   dx += dh
      silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _columns(NG, GROUP, BLOCK_NG: tl.constexpr, BLOCK_G: tl.constexpr):
    """Column offsets [BLOCK_NG, BLOCK_G] of a row split into NG groups of GROUP (the weight's
    offsets) and their mask."""
    grp = tl.arange(0, BLOCK_NG)
    j = tl.arange(0, BLOCK_G)
    cols = grp[:, None] * GROUP + j[None, :]
    col_mask = (grp[:, None] < NG) & (j[None, :] < GROUP)
    return cols, col_mask


@triton.jit
def _tile(row0, M, N, cols, col_mask, BLOCK_M: tl.constexpr):
    """Offsets [BLOCK_M, BLOCK_NG, BLOCK_G] of rows row0.. of an [M, N] matrix and their mask."""
    rows = row0 + tl.arange(0, BLOCK_M)
    offs = rows.to(tl.int64)[:, None, None] * N + cols[None, :, :]
    mask = (rows[:, None, None] < M) & col_mask[None, :, :]
    return offs, mask


@triton.jit
def _cast(v, PTR, ROUND_BF16: tl.constexpr):
    """float32 `v` in PTR's element type, rounded to nearest even. Triton's interpreter truncates
    float32 -> bfloat16 (GPUs round in hardware), so there (ROUND_BF16) it is rounded by hand, as
    torch does: add 0x7FFF plus the kept part's lowest bit, keep the high 16 bits."""
    out = v.to(PTR.dtype.element_ty)
    if ROUND_BF16:
        if PTR.dtype.element_ty == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return out


@triton.jit
def _silu_parts(z):
    """(silu(z), silu'(z)) in float32."""
    sig = tl.sigmoid(z)
    return z * sig, sig * (1.0 + z * (1.0 - sig))


@triton.jit
def _normed(u, eps, GROUP):
    """(u * rstd, rstd[..., None]) over each group (the last axis; padding holds zeros)."""
    rstd = tl.rsqrt(tl.sum(u * u, axis=2) / GROUP + eps)
    return u * rstd[:, :, None], rstd[:, :, None]


@triton.jit
def norm_fwd_kernel(X, R, Z, W, Y, H, M, N, NG, GROUP, eps,
                    HAS_RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr,
                    NORM_BEFORE_GATE: tl.constexpr, ROUND_BF16: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_NG: tl.constexpr, BLOCK_G: tl.constexpr):
    cols, col_mask = _columns(NG, GROUP, BLOCK_NG, BLOCK_G)
    offs, mask = _tile(tl.program_id(0) * BLOCK_M, M, N, cols, col_mask, BLOCK_M)
    u = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        u += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
        h = _cast(u, H, ROUND_BF16)
        tl.store(H + offs, h, mask=mask)
        u = h.to(tl.float32)
    if HAS_GATE:
        s, _ = _silu_parts(tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32))
        if not NORM_BEFORE_GATE:
            u = u * s
    uhat, _ = _normed(u, eps, GROUP)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = uhat * w[None, :, :]
    if HAS_GATE:
        if NORM_BEFORE_GATE:
            y = y * s
    tl.store(Y + offs, _cast(y, Y, ROUND_BF16), mask=mask)


@triton.jit
def norm_bwd_kernel(DY, DH, X, Z, W, DX, DZ, DW_PARTIAL, M, N, NG, GROUP, eps, blocks_per_program,
                    HAS_DH: tl.constexpr, HAS_GATE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
                    ROUND_BF16: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_NG: tl.constexpr, BLOCK_G: tl.constexpr):
    """X is the normalised input (h, the stored residual stream, after a residual add)."""
    pid = tl.program_id(0)
    # the columns are computed once, outside the loop: a loop-carried value must keep its type
    # (a `_` reused for tensors of two shapes does not compile for a GPU)
    cols, col_mask = _columns(NG, GROUP, BLOCK_NG, BLOCK_G)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :, :]
    dw = tl.zeros((BLOCK_NG, BLOCK_G), dtype=tl.float32)
    for i in range(0, blocks_per_program):
        row0 = (pid * blocks_per_program + i) * BLOCK_M
        offs, mask = _tile(row0, M, N, cols, col_mask, BLOCK_M)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        u = x
        if HAS_GATE:
            z = tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
            s, ds = _silu_parts(z)
            if not NORM_BEFORE_GATE:
                u = x * s
        uhat, rstd = _normed(u, eps, GROUP)
        if HAS_GATE:
            if NORM_BEFORE_GATE:
                tl.store(DZ + offs, _cast(g * uhat * w * ds, DZ, ROUND_BF16), mask=mask)
                g = g * s
        dw += tl.sum(g * uhat, axis=0)
        gh = g * w
        du = rstd * (gh - uhat * (tl.sum(gh * uhat, axis=2) / GROUP)[:, :, None])
        dx = du
        if HAS_GATE:
            if not NORM_BEFORE_GATE:
                tl.store(DZ + offs, _cast(du * x * ds, DZ, ROUND_BF16), mask=mask)
                dx = du * s
        if HAS_DH:
            dx += tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + offs, _cast(dx, DX, ROUND_BF16), mask=mask)
    tl.store(DW_PARTIAL + pid.to(tl.int64) * N + cols, dw, mask=col_mask)
