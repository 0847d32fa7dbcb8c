"""Triton kernels of the RMSNorms in naive.py; the only module of this package that imports
triton (triton_rmsnorm.py wraps them in custom ops and chooses their tiles). Two apply kernels (forward,
backward) serve every variant, chosen by constexpr flags: a residual add before the norm
(HAS_RESIDUAL), a SiLU gate (HAS_GATE, NORM_BEFORE_GATE), groups normalised separately; two
stats kernels serve groups too wide for one program (SPLIT).

Rows of width N = NG * GROUP (any leading shape flattened to M rows, contiguous), computed in
float32, stored in the input dtype. An apply program holds a [BLOCK_M, BLOCK_NG, BLOCK_G] tile,
BLOCK_M rows by one column block; grid (row blocks, column blocks). A column block is BLOCK_NG
whole groups (padded to powers of two, masked) when a group fits in BLOCK_G columns, so a
group's statistics are a reduction over the tile's last axis. A wider group (SPLIT) is cut into
chunks of BLOCK_G columns, one column block each, and its statistics come from a stats kernel
run first, which loops over the group's chunks. No program holds more than one column block
of a row, so registers do not grow with the width (a thread of a 16-warp program has at most
128 registers). Per group of a row:

    forward
      h  = x + r, rounded to the input dtype (HAS_RESIDUAL; stored: the new residual stream),
           then normalised as rounded, as the reference normalises the stream it stored
      s  = silu(z) = z sigmoid(z)                                        (HAS_GATE)
      u  = h * s (gate before the norm)  or  h
      rstd = 1 / sqrt(mean(u^2) + eps);  uhat = u * rstd
      y  = uhat * w * s (gate after the norm)  or  uhat * w

    backward (dy, optional dh: the gradient reaching the residual output h); rstd recomputed
      g    = dy * s (gate after the norm)  or  dy;    dz = dy * uhat * w * silu'(z) (gate after)
      dw  += g * uhat  (summed over the program's rows: one partial row per program and column
                        block, summed in torch afterwards -- deterministic, no atomics)
      gh   = g * w;   c = mean(gh * uhat) = rstd * mean(gh * u);   du = rstd * (gh - uhat * c)
      dx   = du * s, dz = du * h * silu'(z) (gate before the norm)  or  dx = du;   dx += dh
      silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))

    SPLIT (stats kernels; grid (row blocks, groups)): sum(u^2) and, backward, sum(gh * u) are
      accumulated chunk by chunk, elementwise in [BLOCK_M, BLOCK_G] float32 and reduced once at
      the end; rstd (and c) are stored per (row, group), float32 [M, NG], for the apply kernel
      to load. The forward's also stores h, which its apply kernel then reads as its input.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _columns(blk, NG, GROUP, BLOCK_NG: tl.constexpr, BLOCK_G: tl.constexpr):
    """Column block `blk` of a row of NG groups of GROUP columns: groups blk * BLOCK_NG.. when a
    group fits in BLOCK_G columns (then chunks = 1), else (BLOCK_NG = 1) chunk blk % chunks of
    group blk // chunks. The columns [BLOCK_NG, BLOCK_G] (the weight's offsets) with their mask,
    and the groups [BLOCK_NG] with theirs (where the group statistics are)."""
    chunks = tl.cdiv(GROUP, BLOCK_G)
    grp = (blk // chunks) * BLOCK_NG + tl.arange(0, BLOCK_NG)
    j = (blk % chunks) * BLOCK_G + tl.arange(0, BLOCK_G)
    grp_mask = grp < NG
    cols = grp[:, None] * GROUP + j[None, :]
    col_mask = grp_mask[:, None] & (j[None, :] < GROUP)
    return cols, col_mask, grp, grp_mask


@triton.jit
def _tile(row0, M, N, cols, col_mask, BLOCK_M: tl.constexpr):
    """Offsets [BLOCK_M, BLOCK_NG, BLOCK_G] of rows row0.. of an [M, N] matrix and their mask."""
    rows = row0 + tl.arange(0, BLOCK_M)
    offs = rows.to(tl.int64)[:, None, None] * N + cols[None, :, :]
    mask = (rows[:, None, None] < M) & col_mask[None, :, :]
    return offs, mask


@triton.jit
def _group_stat(PTR, row0, M, NG, grp, grp_mask, BLOCK_M: tl.constexpr):
    """A stats kernel's figure for each (row, group) of the tile: [BLOCK_M, BLOCK_NG, 1]."""
    rows = row0 + tl.arange(0, BLOCK_M)
    offs = rows.to(tl.int64)[:, None] * NG + grp[None, :]
    mask = (rows[:, None] < M) & grp_mask[None, :]
    return tl.load(PTR + offs, mask=mask, other=0.0)[:, :, None]


@triton.jit
def _chunk(row0, c0, grp, M, N, GROUP, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """Offsets [BLOCK_M, BLOCK_G] of columns c0.. of group `grp` in rows row0.., and their mask."""
    rows = row0 + tl.arange(0, BLOCK_M)
    j = c0 + tl.arange(0, BLOCK_G)
    offs = rows.to(tl.int64)[:, None] * N + (grp * GROUP + j)[None, :]
    mask = (rows[:, None] < M) & (j[None, :] < GROUP)
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
def _fwd_input(X, R, Z, H, offs, mask, HAS_RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr,
               NORM_BEFORE_GATE: tl.constexpr, ROUND_BF16: tl.constexpr):
    """(u, s): what the forward normalises and the gate silu(z) (u itself without a gate), at
    `offs`; stores h = x + r (HAS_RESIDUAL) and normalises it as stored."""
    u = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        u += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
        h = _cast(u, H, ROUND_BF16)
        tl.store(H + offs, h, mask=mask)
        u = h.to(tl.float32)
    s = u
    if HAS_GATE:
        s, _ = _silu_parts(tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32))
        if not NORM_BEFORE_GATE:
            u = u * s
    return u, s


@triton.jit
def _bwd_input(DY, X, Z, offs, mask, HAS_GATE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):
    """(x, u, dy, s, silu'(z)) at `offs` in float32 (without a gate, s and silu'(z) are x)."""
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    u, s, ds = x, x, x
    if HAS_GATE:
        s, ds = _silu_parts(tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32))
        if not NORM_BEFORE_GATE:
            u = x * s
    return x, u, dy, s, ds


@triton.jit
def norm_fwd_stats_kernel(X, R, Z, H, RSTD, M, N, NG, GROUP, eps,
                          HAS_RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr,
                          NORM_BEFORE_GATE: tl.constexpr, ROUND_BF16: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """RSTD[row, grp] = 1 / sqrt(sum(u^2) / GROUP + eps), the sum over the group's chunks; h
    stored on the way (HAS_RESIDUAL)."""
    row0 = tl.program_id(0) * BLOCK_M
    grp = tl.program_id(1)
    acc = tl.zeros((BLOCK_M, BLOCK_G), dtype=tl.float32)
    for c0 in range(0, GROUP, BLOCK_G):
        offs, mask = _chunk(row0, c0, grp, M, N, GROUP, BLOCK_M, BLOCK_G)
        u, _ = _fwd_input(X, R, Z, H, offs, mask, HAS_RESIDUAL, HAS_GATE, NORM_BEFORE_GATE, ROUND_BF16)
        acc += u * u
    rows = row0 + tl.arange(0, BLOCK_M)
    rstd = tl.rsqrt(tl.sum(acc, axis=1) / GROUP + eps)
    tl.store(RSTD + rows.to(tl.int64) * NG + grp, rstd, mask=rows < M)


@triton.jit
def norm_bwd_stats_kernel(DY, X, Z, W, RSTD, C, M, N, NG, GROUP, eps,
                          HAS_GATE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """RSTD[row, grp] as the forward's and C[row, grp] = mean(gh * uhat) = rstd * sum(gh * u) /
    GROUP, both sums over the group's chunks in one pass (uhat = u * rstd needs rstd, not yet
    known; gh * u does not)."""
    row0 = tl.program_id(0) * BLOCK_M
    grp = tl.program_id(1)
    acc_uu = tl.zeros((BLOCK_M, BLOCK_G), dtype=tl.float32)
    acc_gu = tl.zeros((BLOCK_M, BLOCK_G), dtype=tl.float32)
    for c0 in range(0, GROUP, BLOCK_G):
        offs, mask = _chunk(row0, c0, grp, M, N, GROUP, BLOCK_M, BLOCK_G)
        _, u, g, s, _ = _bwd_input(DY, X, Z, offs, mask, HAS_GATE, NORM_BEFORE_GATE)
        if HAS_GATE:
            if NORM_BEFORE_GATE:
                g = g * s
        j = c0 + tl.arange(0, BLOCK_G)
        w = tl.load(W + grp * GROUP + j, mask=j < GROUP, other=0.0).to(tl.float32)
        acc_uu += u * u
        acc_gu += g * w[None, :] * u
    rows = row0 + tl.arange(0, BLOCK_M)
    rstd = tl.rsqrt(tl.sum(acc_uu, axis=1) / GROUP + eps)
    stat = rows.to(tl.int64) * NG + grp
    tl.store(RSTD + stat, rstd, mask=rows < M)
    tl.store(C + stat, rstd * tl.sum(acc_gu, axis=1) / GROUP, mask=rows < M)


@triton.jit
def norm_fwd_kernel(X, R, Z, W, Y, H, RSTD, M, N, NG, GROUP, eps,
                    HAS_RESIDUAL: tl.constexpr, HAS_GATE: tl.constexpr,
                    NORM_BEFORE_GATE: tl.constexpr, SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_NG: tl.constexpr, BLOCK_G: tl.constexpr):
    """y of one tile; SPLIT: rstd from norm_fwd_stats_kernel (X is then h, HAS_RESIDUAL off)."""
    row0 = tl.program_id(0) * BLOCK_M
    cols, col_mask, grp, grp_mask = _columns(tl.program_id(1), NG, GROUP, BLOCK_NG, BLOCK_G)
    offs, mask = _tile(row0, M, N, cols, col_mask, BLOCK_M)
    u, s = _fwd_input(X, R, Z, H, offs, mask, HAS_RESIDUAL, HAS_GATE, NORM_BEFORE_GATE, ROUND_BF16)
    if SPLIT:
        uhat = u * _group_stat(RSTD, row0, M, NG, grp, grp_mask, BLOCK_M)
    else:
        uhat, _ = _normed(u, eps, GROUP)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = uhat * w[None, :, :]
    if HAS_GATE:
        if NORM_BEFORE_GATE:
            y = y * s
    tl.store(Y + offs, _cast(y, Y, ROUND_BF16), mask=mask)


@triton.jit
def norm_bwd_kernel(DY, DH, X, Z, W, DX, DZ, DW_PARTIAL, RSTD, C, M, N, NG, GROUP, eps,
                    blocks_per_program,
                    HAS_DH: tl.constexpr, HAS_GATE: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr,
                    SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_NG: tl.constexpr, BLOCK_G: tl.constexpr):
    """dx, dz of `blocks_per_program` row blocks of one column block, and their dw partial (one
    row of DW_PARTIAL per program: its columns are this column block's). X is the normalised
    input (h, the stored residual stream, after a residual add). SPLIT: rstd and c from
    norm_bwd_stats_kernel."""
    pid = tl.program_id(0)
    # the columns are computed once, outside the loop: a loop-carried value must keep its type
    # (a `_` reused for tensors of two shapes does not compile for a GPU)
    cols, col_mask, grp, grp_mask = _columns(tl.program_id(1), NG, GROUP, BLOCK_NG, BLOCK_G)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :, :]
    dw = tl.zeros((BLOCK_NG, BLOCK_G), dtype=tl.float32)
    for i in range(0, blocks_per_program):
        row0 = (pid * blocks_per_program + i) * BLOCK_M
        offs, mask = _tile(row0, M, N, cols, col_mask, BLOCK_M)
        x, u, g, s, ds = _bwd_input(DY, X, Z, offs, mask, HAS_GATE, NORM_BEFORE_GATE)
        if SPLIT:
            rstd = _group_stat(RSTD, row0, M, NG, grp, grp_mask, BLOCK_M)
            uhat = u * rstd
        else:
            uhat, rstd = _normed(u, eps, GROUP)
        if HAS_GATE:
            if NORM_BEFORE_GATE:
                tl.store(DZ + offs, _cast(g * uhat * w * ds, DZ, ROUND_BF16), mask=mask)
                g = g * s
        dw += tl.sum(g * uhat, axis=0)
        gh = g * w
        if SPLIT:
            c = _group_stat(C, row0, M, NG, grp, grp_mask, BLOCK_M)
        else:
            c = (tl.sum(gh * uhat, axis=2) / GROUP)[:, :, None]
        du = rstd * (gh - uhat * c)
        dx = du
        if HAS_GATE:
            if not NORM_BEFORE_GATE:
                tl.store(DZ + offs, _cast(du * x * ds, DZ, ROUND_BF16), mask=mask)
                dx = du * s
        if HAS_DH:
            dx += tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + offs, _cast(dx, DX, ROUND_BF16), mask=mask)
    tl.store(DW_PARTIAL + pid.to(tl.int64) * N + cols, dw, mask=col_mask)
