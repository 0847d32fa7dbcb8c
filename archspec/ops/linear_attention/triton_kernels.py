"""Triton kernels of the chunked linear-attention rules (linear, gla, delta, gated_delta); the
only module here that imports triton. The math is chunk.py's (the reference); triton_chunk.py
wraps these kernels in custom ops and chooses their block sizes. Notation per chunk of C = BT
rows (t, s), sequences packed:

    G_t = sum_{r <= t} g_r (chunk-local, 0 without decay);  gam_t = exp(G_t);  Gam = exp(G_C)
    E[t, s] = exp(G_t - G_s) for s <= t (masked to -inf before the exp, never an overflow)
    P = (q k^T) * E (s <= t)                                   [C, C]
    delta rules:  A = beta (k k^T) * E (s < t);  T = (I + A)^-1
                  U = T (beta v),  W = T (beta gam k);  X = U - W S      (the values written)
    linear:       X = v
    state pass:   S_next = Gam S + (k exp(G_C - G))^T X
    output:       O = (q gam) S + P X

T is formed as (I - A)(I + A^2)(I + A^4)... (A is nilpotent: A^C = 0), log2(C) - 1 squarings:
matmuls only, as accurate as an fp32 triangular solve for unit-norm keys (max |error| ~5e-8 at
C = 64, K in 8..256, checked against a float64 solve when this was written).

Backward (dO, dS_final given), per chunk, the reverse state pass first:
    dX = P^T dO + (k exp(G_C - G)) dS_next;   dS = Gam dS_next + (q gam)^T dO - W^T dX
then, in parallel over chunks:
    dq = gam (dO S^T) + (dP * E) k,   dP = dO X^T (s <= t)
    dk = (dP * E)^T q + exp(G_C - G) (X dS_next^T)
    delta rules: dU = dX, dW = -dX S^T;  d(beta v) = T^T dU;  d(beta gam k) = T^T dW
                 dT = dU (beta v)^T + dW (beta gam k)^T;  dA = -T^T dT T^T (s < t)
                 dk += B k + B^T k (B = beta * dA * E), dbeta from beta v, beta gam k and A
    dG_t collects every place G enters (q gam, beta gam k, E in P and A with +G_t / -G_s,
    exp(G_C - G_s), Gam); dg is its reverse cumsum within the chunk.

Tiling (what keeps every program inside a GPU's registers and shared memory at head sizes up
to 256, as fla tiles): no program holds more than [C, BK] of keys or [C, BV] of values at once.
The key dimension is cut into NK blocks of BK columns, the value dimension into blocks of BV.
A kernel that contracts over K loops over its key blocks; the sequential state passes keep the
state of one value block as NK <= 2 separate [BK, BV] tiles (s0, s1), since a register tile
cannot be sliced; the backward's per-key-block work runs as separate programs
(grid axis i_k) whose contributions to dG are summed by `chunk_dg_kernel`.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """a b with fp32 accumulation. PREC "bf16" / "fp16": both operands rounded to that type
    (tensor cores at full rate, half the registers of fp32 operands; "*_emulated": the same
    rounding in triton's interpreter); else tl.dot's input_precision for fp32 operands
    ("tf32x3": fp32 accuracy on tensor cores, "tf32", "ieee")."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PREC == "fp16":
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    elif PREC == "bf16_emulated":
        return tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), input_precision="ieee")
    elif PREC == "fp16_emulated":
        return tl.dot(a.to(tl.float16).to(tl.float32), b.to(tl.float16).to(tl.float32),
                      input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _operand(x, PREC: tl.constexpr):
    """x as _dot rounds its operands: converted once for an operand that serves several dots
    (then _dot's own conversion is the identity)."""
    if PREC == "bf16":
        return x.to(tl.bfloat16)
    elif PREC == "fp16":
        return x.to(tl.float16)
    elif PREC == "bf16_emulated":
        return _round_bf16(x.to(tl.float32))
    elif PREC == "fp16_emulated":
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def _round_bf16(v):
    """float32 v rounded to the nearest bfloat16 (ties to even), kept in float32. Triton's
    interpreter computes bf16 dots wrongly and truncates float32 -> bfloat16 casts, so under it
    the kernels round their dot operands by hand, as the GPU's conversion does (PREC
    "bf16_emulated"); the arithmetic is then the GPU's up to the order of the fp32 sums."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _chunk_rows(cu_seqlens, chunk_indices, i_c, BT: tl.constexpr):
    """(first row of chunk i_c, its real row count, its sequence, its index in the sequence)."""
    i_n = tl.load(chunk_indices + 2 * i_c).to(tl.int64)
    i_j = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    start = bos + i_j * BT
    return start, tl.minimum(eos - start, BT), i_n, i_j


@triton.jit
def _chunk_index(chunk_offsets, i_n, i_j):
    """Index of chunk i_j of sequence i_n among all chunks (the saved states' row)."""
    return tl.load(chunk_offsets + i_n).to(tl.int64) + i_j


@triton.jit
def _sequence(cu_seqlens, chunk_offsets, i_n):
    """(first row, end row, first chunk, chunk count) of sequence i_n."""
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    return bos, eos, c0, tl.load(chunk_offsets + i_n + 1).to(tl.int64) - c0


@triton.jit
def _rows_ptrs(ptr, start, n_rows, stride, col0, n_cols, BT: tl.constexpr, BD: tl.constexpr):
    """(pointers, mask) of the [BT, BD] tile of rows start.. (stride apart), columns col0..:
    the row offset goes into the scalar base, so the tile's own offsets stay 32-bit."""
    r = tl.arange(0, BT)
    c = col0 + tl.arange(0, BD)
    mask = (r[:, None] < n_rows) & (c[None, :] < n_cols)
    return ptr + start * stride + (r[:, None] * stride + c[None, :]), mask


@triton.jit
def _load_raw(ptr, start, n_rows, stride, col0, n_cols, BT: tl.constexpr, BD: tl.constexpr):
    """[BT, BD] tile in its stored type, zero outside (for operands that go straight to a dot:
    16-bit inputs stay 16-bit, half the registers)."""
    ptrs, mask = _rows_ptrs(ptr, start, n_rows, stride, col0, n_cols, BT, BD)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _load_rows(ptr, start, n_rows, stride, col0, n_cols, BT: tl.constexpr, BD: tl.constexpr):
    """[BT, BD] fp32 tile of rows start.. (stride apart), columns col0.., zero outside."""
    return _load_raw(ptr, start, n_rows, stride, col0, n_cols, BT, BD).to(tl.float32)


@triton.jit
def _store_rows(ptr, x, start, n_rows, stride, col0, n_cols, BT: tl.constexpr, BD: tl.constexpr):
    ptrs, mask = _rows_ptrs(ptr, start, n_rows, stride, col0, n_cols, BT, BD)
    tl.store(ptrs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_vec(ptr, start, n_rows, stride, BT: tl.constexpr):
    r = tl.arange(0, BT)
    return tl.load(ptr + (start + r) * stride, mask=r < n_rows, other=0.0).to(tl.float32)


@triton.jit
def _store_vec(ptr, x, start, n_rows, stride, BT: tl.constexpr):
    r = tl.arange(0, BT)
    tl.store(ptr + (start + r) * stride, x, mask=r < n_rows)


@triton.jit
def _load_last_row(ptr, start, n_rows, stride, col0, n_cols, BD: tl.constexpr):
    """[BD] columns col0.. of the last real row (start + n_rows - 1)."""
    c = col0 + tl.arange(0, BD)
    return tl.load(ptr + (start + n_rows - 1) * stride + c, mask=c < n_cols, other=0.0).to(tl.float32)


@triton.jit
def _state_ptrs(ptr, K, V, row0, col0, BK: tl.constexpr, BV: tl.constexpr):
    rk = row0 + tl.arange(0, BK)
    cv = col0 + tl.arange(0, BV)
    return ptr + rk[:, None] * V + cv[None, :], (rk[:, None] < K) & (cv[None, :] < V)


@triton.jit
def _load_state(ptr, K, V, row0, col0, BK: tl.constexpr, BV: tl.constexpr):
    """[BK, BV] block (rows row0.., columns col0..) of one [K, V] state."""
    ptrs, mask = _state_ptrs(ptr, K, V, row0, col0, BK, BV)
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_state(ptr, x, K, V, row0, col0, BK: tl.constexpr, BV: tl.constexpr):
    ptrs, mask = _state_ptrs(ptr, K, V, row0, col0, BK, BV)
    tl.store(ptrs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _initial_state(ptr, i_n, i_h, H, K, V, row0, col, GIVEN: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr):
    """Block (row0, col) of sequence i_n's state from ptr [N, H, K, V], or zeros."""
    if GIVEN:
        return _load_state(ptr + (i_n * H + i_h) * K * V, K, V, row0, col, BK, BV)
    else:
        return tl.zeros([BK, BV], dtype=tl.float32)


@triton.jit
def _initial_tiles(ptr, i_n, i_h, H, K, V, col, GIVEN: tl.constexpr, BK: tl.constexpr,
                   NK: tl.constexpr, BV: tl.constexpr):
    """The state passes' NK <= 2 tiles (rows 0.. and BK..) of sequence i_n's state block at
    column col, from ptr [N, H, K, V] or zeros; with NK = 1 the second is zeros, never used."""
    s0 = _initial_state(ptr, i_n, i_h, H, K, V, 0, col, GIVEN, BK, BV)
    if NK > 1:
        s1 = _initial_state(ptr, i_n, i_h, H, K, V, BK, col, GIVEN, BK, BV)
    else:
        s1 = tl.zeros([BK, BV], dtype=tl.float32)
    return s0, s1


@triton.jit
def _store_tiles(base, s0, s1, K, V, col, BK: tl.constexpr, NK: tl.constexpr, BV: tl.constexpr):
    """Store the NK <= 2 state tiles into one [K, V] state at base."""
    _store_state(base, s0, K, V, 0, col, BK, BV)
    if NK > 1:
        _store_state(base, s1, K, V, BK, col, BK, BV)


@triton.jit
def _decays(g, start, n_rows, i_h, H, HAS_G: tl.constexpr, BT: tl.constexpr):
    """(G [BT] chunk-local inclusive cumsum, G_C the chunk total); zeros without decay."""
    if HAS_G:
        gv = _load_vec(g + i_h, start, n_rows, H, BT)
        G = tl.cumsum(gv, 0)
        return G, tl.sum(gv, 0)
    else:
        zero = tl.zeros([BT], dtype=tl.float32)
        return zero, tl.sum(zero, 0)


@triton.jit
def _pair_decay(G, STRICT: tl.constexpr, BT: tl.constexpr):
    """E[t, s] = exp(G_t - G_s) on (s <= t) or (s < t), else 0."""
    r = tl.arange(0, BT)
    if STRICT:
        keep = r[:, None] > r[None, :]
    else:
        keep = r[:, None] >= r[None, :]
    return tl.exp(tl.where(keep, G[:, None] - G[None, :], float("-inf")))


@triton.jit
def _scores(q, k, start, n, i_h, H, K, scale, BT: tl.constexpr, BK: tl.constexpr,
            NK: tl.constexpr, PREC: tl.constexpr):
    """(q scale) k^T of one chunk [BT, BT], contracted over the NK key blocks."""
    acc = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, NK):
        qb = _load_raw(q + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
        kb = _load_raw(k + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
        acc += _dot(qb, tl.trans(kb), PREC)
    return acc * scale


# --- forward ----------------------------------------------------------------------------------

@triton.jit
def wy_fwd_kernel(k, v, beta, g, T_out, U_out, W_out, cu_seqlens, chunk_indices,
                  H, K, V, HAS_G: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  NK: tl.constexpr, BV: tl.constexpr, LOG2_BT: tl.constexpr, PREC: tl.constexpr,
                  INV_PREC: tl.constexpr):
    """Delta rules, one program per (chunk, head): T = (I + A)^-1, U = T beta v, W = T beta gam k,
    looping over key and value blocks. T_out [rows, H, 2 BT] takes T and, beside it, k k^T
    below the diagonal (the backward's dA terms read it rather than recompute it). The squarings that form T take fp32 operands (INV_PREC)
    whatever the inputs: their errors compound over log2(C) - 1 products."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    b = _load_vec(beta + i_h, start, n, H, BT)
    G, _ = _decays(g, start, n, i_h, H, HAS_G, BT)
    kk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, NK):
        kb = _load_raw(k + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
        kk += _dot(kb, tl.trans(kb), PREC)
    strict = _pair_decay(G, True, BT)
    _store_rows(T_out + i_h * 2 * BT, tl.where(strict > 0, kk, 0.0), start, n, H * 2 * BT, BT, 2 * BT, BT, BT)
    a = kk * b[:, None] * strict
    # (I + A)^-1 = (I - A)(I + A^2)(I + A^4)...: A is strictly lower, so A^BT = 0
    r = tl.arange(0, BT)
    power = -a
    t = (r[:, None] == r[None, :]).to(tl.float32) + power
    for _ in tl.static_range(LOG2_BT - 1):
        power = _dot(power, power, INV_PREC)
        t = t + _dot(t, power, INV_PREC)
    _store_rows(T_out + i_h * 2 * BT, t, start, n, H * 2 * BT, 0, 2 * BT, BT, BT)
    for i_v in range(0, tl.cdiv(V, BV)):
        vb = _load_rows(v + i_h * V, start, n, H * V, i_v * BV, V, BT, BV)
        _store_rows(U_out + i_h * V, _dot(t, vb * b[:, None], PREC), start, n, H * V, i_v * BV, V, BT, BV)
    for i_k in range(0, NK):
        kb = _load_rows(k + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
        kg = kb * (b * tl.exp(G))[:, None]
        _store_rows(W_out + i_h * K, _operand(_dot(t, kg, PREC), PREC), start, n, H * K, i_k * BK, K, BT, BK)


@triton.jit
def _minus_w_s(x, W, s, start, n, i_h, H, K, i_k: tl.constexpr, BT: tl.constexpr,
               BK: tl.constexpr, PREC: tl.constexpr):
    """x - W[:, block i_k] s (the delta rules' correction by one key block of the state)."""
    w = _load_raw(W + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    return x - _dot(w, s, PREC)


@triton.jit
def _advance(s, k, g, start, n, i_h, H, K, x, x_end, gam_end, i_k: tl.constexpr,
             GLA: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Key block i_k of S_next = Gam S + (k exp(G_C - G))^T X. Scalar decays arrive folded into
    x_end = exp(G_C - G) X and gam_end = Gam; gla's per-channel ones are read here."""
    kb = _load_raw(k + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    if GLA:
        Gb = _load_rows(g + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
        G_last = _load_last_row(g + i_h * K, start, n, H * K, i_k * BK, K, BK)
        k_end = kb.to(tl.float32) * tl.exp(G_last[None, :] - Gb)
        return s * tl.exp(G_last)[:, None] + _dot(tl.trans(k_end), x, PREC)
    else:
        return s * gam_end + _dot(tl.trans(kb), x_end, PREC)


@triton.jit
def state_fwd_kernel(k, v, g, U, W, X_out, h_out, h0, ht, cu_seqlens, chunk_offsets,
                     H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, GLA: tl.constexpr,
                     HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, BT: tl.constexpr,
                     BK: tl.constexpr, NK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """One program per (sequence, head, value block): the sequential pass over the chunks, the
    state held as NK <= 2 tiles s0, s1 of [BK, BV]. Stores the state entering every chunk (h_out)
    and, for the delta rules, X = U - W S."""
    i_n, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, c0, n_chunks = _sequence(cu_seqlens, chunk_offsets, i_n)
    col = i_v * BV
    s0, s1 = _initial_tiles(h0, i_n, i_h, H, K, V, col, HAS_H0, BK, NK, BV)
    for j in range(0, n_chunks):
        _store_tiles(h_out + ((c0 + j) * H + i_h) * K * V, s0, s1, K, V, col, BK, NK, BV)
        start = bos + j * BT
        n = tl.minimum(eos - start, BT)
        if DELTA:
            x = _load_rows(U + i_h * V, start, n, H * V, col, V, BT, BV)
            x = _minus_w_s(x, W, s0, start, n, i_h, H, K, 0, BT, BK, PREC)
            if NK > 1:
                x = _minus_w_s(x, W, s1, start, n, i_h, H, K, 1, BT, BK, PREC)
            _store_rows(X_out + i_h * V, _operand(x, PREC), start, n, H * V, col, V, BT, BV)
        else:
            x = _load_rows(v + i_h * V, start, n, H * V, col, V, BT, BV)
        x_end = x
        gam_end = 1.0
        if not GLA:
            G, G_last = _decays(g, start, n, i_h, H, HAS_G, BT)
            x_end = x * tl.exp(G_last - G)[:, None]
            gam_end = tl.exp(G_last)
        s0 = _advance(s0, k, g, start, n, i_h, H, K, x, x_end, gam_end, 0, GLA, BT, BK, PREC)
        if NK > 1:
            s1 = _advance(s1, k, g, start, n, i_h, H, K, x, x_end, gam_end, 1, GLA, BT, BK, PREC)
    if STORE_HT:
        _store_tiles(ht + (i_n * H + i_h) * K * V, s0, s1, K, V, col, BK, NK, BV)


@triton.jit
def output_fwd_kernel(q, k, v, g, X, P, h, o, cu_seqlens, chunk_indices, chunk_offsets, scale,
                      H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, GLA: tl.constexpr,
                      BT: tl.constexpr, BK: tl.constexpr, NK: tl.constexpr, BV: tl.constexpr,
                      PREC: tl.constexpr):
    """One program per (chunk, head, value block): O = (q gam) S + P X, over the key blocks."""
    i_c, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, n, i_n, i_j = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    state = h + (_chunk_index(chunk_offsets, i_n, i_j) * H + i_h) * K * V
    col = i_v * BV
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    p = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, NK):
        qb = _load_raw(q + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
        s = _load_state(state, K, V, i_k * BK, col, BK, BV)
        if GLA:
            Gb = _load_rows(g + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
            acc += _dot(qb.to(tl.float32) * tl.exp(Gb), s, PREC)
        else:
            kb = _load_raw(k + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
            acc += _dot(qb, s, PREC)
            p += _dot(qb, tl.trans(kb), PREC)
    if DELTA:
        x = _load_raw(X + i_h * V, start, n, H * V, col, V, BT, BV)
    else:
        x = _load_raw(v + i_h * V, start, n, H * V, col, V, BT, BV)
    if GLA:
        p = _load_rows(P + i_h * BT, start, n, H * BT, 0, BT, BT, BT)
        acc = acc * scale
    else:
        G, _ = _decays(g, start, n, i_h, H, HAS_G, BT)
        acc = acc * (scale * tl.exp(G))[:, None]
        p = p * scale * _pair_decay(G, False, BT)
    _store_rows(o + i_h * V, acc + _dot(p, x, PREC), start, n, H * V, col, V, BT, BV)


# --- backward ---------------------------------------------------------------------------------

@triton.jit
def _block_bwd(kds, ds, q, k, g, dout, start, n, i_h, H, K, scale, gam_end, i_k: tl.constexpr,
               GLA: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Key block i_k of one reverse step: (kds + k_end dS_block, Gam dS_block + (q gam)^T dO),
    the state's term of dX (scalar decays: exp(G_C - G) applied to the sum by the caller) and
    the state gradient before its W^T dX term. Scalar decays arrive folded into dout = scale
    gam dO and gam_end = Gam; gla's per-channel ones folded into q and k, but for Gam."""
    kb = _load_raw(k + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    qb = _load_raw(q + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    if GLA:  # q and k arrive decayed (gla_decayed_kernel): q scale exp(G), k exp(G_C - G)
        G_last = _load_last_row(g + i_h * K, start, n, H * K, i_k * BK, K, BK)
        kds += _dot(kb, ds, PREC)
        return kds, ds * tl.exp(G_last)[:, None] + _dot(tl.trans(qb), dout, PREC)
    else:
        kds += _dot(kb, ds, PREC)
        return kds, ds * gam_end + _dot(tl.trans(qb), dout, PREC)


@triton.jit
def _minus_wt_dx(ds, W, dx, start, n, i_h, H, K, i_k: tl.constexpr, BT: tl.constexpr,
                 BK: tl.constexpr, PREC: tl.constexpr):
    w = _load_raw(W + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    return ds - _dot(tl.trans(w), dx, PREC)


@triton.jit
def local_bwd_kernel(q, k, g, X, v, P, do, dX, dPE, dG, cu_seqlens, chunk_indices, scale, TOTAL,
                     H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, GLA: tl.constexpr,
                     DG_PART: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, NK: tl.constexpr,
                     BV: tl.constexpr, PREC: tl.constexpr):
    """One program per (chunk, head), looping over value blocks: the chunk-local parts of the
    backward, in parallel over chunks. dX = P^T dO (state_bwd_kernel adds the state's term);
    not gla: dPE = (dO X^T)(s <= t) * E for dqk_bwd_kernel, and P's part of dG (into
    dG[DG_PART]): +G_t in its rows, -G_s in its columns."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    if GLA:
        p = _load_rows(P + i_h * BT, start, n, H * BT, 0, BT, BT, BT)
    else:
        G, _ = _decays(g, start, n, i_h, H, HAS_G, BT)
        e = _pair_decay(G, False, BT)
        p = _scores(q, k, start, n, i_h, H, K, scale, BT, BK, NK, PREC) * e
    d_p = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        col = i_v * BV
        dout = _load_raw(do + i_h * V, start, n, H * V, col, V, BT, BV)
        _store_rows(dX + i_h * V, _dot(tl.trans(p), dout, PREC), start, n, H * V, col, V, BT, BV)
        if not GLA:
            if DELTA:
                x = _load_raw(X + i_h * V, start, n, H * V, col, V, BT, BV)
            else:
                x = _load_raw(v + i_h * V, start, n, H * V, col, V, BT, BV)
            d_p += _dot(dout, tl.trans(x), PREC)
    if not GLA:
        r = tl.arange(0, BT)
        d_p = tl.where(r[:, None] >= r[None, :], d_p, 0.0)
        _store_rows(dPE + i_h * BT, d_p * e, start, n, H * BT, 0, BT, BT, BT)
        if HAS_G:
            dp_p = d_p * p
            _store_vec(dG + DG_PART * TOTAL * H + i_h, tl.sum(dp_p, 1) - tl.sum(dp_p, 0), start, n, H, BT)


@triton.jit
def state_bwd_kernel(q, k, g, W, do, dX, dh_out, dht, dh0, cu_seqlens, chunk_offsets, scale,
                     H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, GLA: tl.constexpr,
                     HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, BT: tl.constexpr,
                     BK: tl.constexpr, NK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """One program per (sequence, head, value block), chunks in reverse: adds the state's term
    to dX (which holds local_bwd_kernel's P^T dO) and stores the gradient of the state leaving
    every chunk (dh_out) and of the initial state; dS held as NK <= 2 tiles."""
    i_n, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, c0, n_chunks = _sequence(cu_seqlens, chunk_offsets, i_n)
    col = i_v * BV
    ds0, ds1 = _initial_tiles(dht, i_n, i_h, H, K, V, col, HAS_DHT, BK, NK, BV)
    for i in range(0, n_chunks):
        j = n_chunks - 1 - i
        _store_tiles(dh_out + ((c0 + j) * H + i_h) * K * V, ds0, ds1, K, V, col, BK, NK, BV)
        start = bos + j * BT
        n = tl.minimum(eos - start, BT)
        dout = _load_raw(do + i_h * V, start, n, H * V, col, V, BT, BV)
        G = tl.zeros([BT], dtype=tl.float32)
        gam_end = 1.0
        if not GLA:
            G, G_last = _decays(g, start, n, i_h, H, HAS_G, BT)
            gam_end = tl.exp(G_last)
        dx = _load_rows(dX + i_h * V, start, n, H * V, col, V, BT, BV)
        if not GLA:
            dout = _operand(dout.to(tl.float32) * (scale * tl.exp(G))[:, None], PREC)
        kds = tl.zeros([BT, BV], dtype=tl.float32)
        kds, ds0 = _block_bwd(kds, ds0, q, k, g, dout, start, n, i_h, H, K, scale, gam_end, 0, GLA, BT, BK, PREC)
        if NK > 1:
            kds, ds1 = _block_bwd(kds, ds1, q, k, g, dout, start, n, i_h, H, K, scale, gam_end, 1, GLA, BT, BK, PREC)
        if GLA:
            dx += kds
        else:
            dx += kds * tl.exp(G_last - G)[:, None]
        _store_rows(dX + i_h * V, dx, start, n, H * V, col, V, BT, BV)
        if DELTA:
            ds0 = _minus_wt_dx(ds0, W, dx, start, n, i_h, H, K, 0, BT, BK, PREC)
            if NK > 1:
                ds1 = _minus_wt_dx(ds1, W, dx, start, n, i_h, H, K, 1, BT, BK, PREC)
    if STORE_DH0:
        _store_tiles(dh0 + (i_n * H + i_h) * K * V, ds0, ds1, K, V, col, BK, NK, BV)


@triton.jit
def dqk_bwd_kernel(q, k, v, g, X, h, do, dX, dh, dPE, dq, dk, dW, dG, cu_seqlens, chunk_indices,
                   chunk_offsets, scale, TOTAL, H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, NK: tl.constexpr, BV: tl.constexpr,
                   PREC: tl.constexpr):
    """linear, delta, gated_delta; one program per (chunk, head, key block i_k), looping over
    value blocks: dq, the attention and state terms of dk (the attention's through dPE from
    local_bwd_kernel), dW = -dX S^T (delta rules, for wy_bwd_kernel), and the key block's part
    of dG (row-sums over its channels) into dG[i_k]. Sums run in a fixed order: deterministic."""
    i_c, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, n, i_n, i_j = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    state = (_chunk_index(chunk_offsets, i_n, i_j) * H + i_h) * K * V
    row0 = i_k * BK
    qb = _load_rows(q + i_h * K, start, n, H * K, row0, K, BT, BK) * scale
    kb = _load_rows(k + i_h * K, start, n, H * K, row0, K, BT, BK)
    G, G_last = _decays(g, start, n, i_h, H, HAS_G, BT)
    gam = tl.exp(G)
    gam_end = tl.exp(G_last - G)
    d_qgam = tl.zeros([BT, BK], dtype=tl.float32)    # dO S^T
    d_kend = tl.zeros([BT, BK], dtype=tl.float32)    # X dS_next^T
    d_w = tl.zeros([BT, BK], dtype=tl.float32)       # -dX S^T
    s_ds = tl.zeros([BK], dtype=tl.float32)          # row sums of S * dS_next
    for i_v in range(0, tl.cdiv(V, BV)):
        col = i_v * BV
        dout = _load_raw(do + i_h * V, start, n, H * V, col, V, BT, BV)
        s = _load_state(h + state, K, V, row0, col, BK, BV)
        ds = _load_state(dh + state, K, V, row0, col, BK, BV)
        if DELTA:
            x = _load_raw(X + i_h * V, start, n, H * V, col, V, BT, BV)
            dx = _load_rows(dX + i_h * V, start, n, H * V, col, V, BT, BV)
            d_w -= _dot(dx, tl.trans(s), PREC)
        else:
            x = _load_raw(v + i_h * V, start, n, H * V, col, V, BT, BV)
        d_qgam += _dot(dout, tl.trans(s), PREC)
        d_kend += _dot(x, tl.trans(ds), PREC)
        s_ds += tl.sum(s * ds, 1)
    r = tl.arange(0, BT)
    d_pe = _load_rows(dPE + i_h * BT, start, n, H * BT, 0, BT, BT, BT)
    d_q = d_qgam * gam[:, None] + _dot(d_pe, kb, PREC)
    _store_rows(dq + i_h * K, d_q * scale, start, n, H * K, row0, K, BT, BK)
    _store_rows(dk + i_h * K, _dot(tl.trans(d_pe), qb, PREC) + d_kend * gam_end[:, None],
                start, n, H * K, row0, K, BT, BK)
    if DELTA:
        _store_rows(dW + i_h * K, d_w, start, n, H * K, row0, K, BT, BK)
    if HAS_G:
        # dG_t: +G_t in q gam, -G_s in exp(G_C - G_s); the chunk total G_C (through Gam and
        # exp(G_C - G_s)) lands on the last real row (P's terms: local_bwd_kernel)
        z = tl.sum(kb * gam_end[:, None] * d_kend, 1)
        d_G = tl.sum(qb * gam[:, None] * d_qgam, 1) - z
        d_last = tl.sum(z, 0) + tl.exp(G_last) * tl.sum(s_ds, 0)
        d_G += tl.where(r == n - 1, d_last, 0.0)
        _store_vec(dG + i_k.to(tl.int64) * TOTAL * H + i_h, d_G, start, n, H, BT)


@triton.jit
def wy_bwd_kernel(k, v, g, beta, T, dX, dW, dk, dv, dbeta, dT, dG, cu_seqlens, chunk_indices,
                  TOTAL, H, K, V, HAS_G: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  NK: tl.constexpr, BV: tl.constexpr, DG_PART: tl.constexpr, PREC: tl.constexpr):
    """Delta rules, one program per (chunk, head), through U = T beta v and W = T beta gam k:
    dv; the v and k terms of dbeta; W's term of dk (added in place); its part of dG (into
    dG[DG_PART]); and dT = dU (beta v)^T + dW (beta gam k)^T into dT for wy_inverse_bwd_kernel."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    b = _load_vec(beta + i_h, start, n, H, BT)
    G, _ = _decays(g, start, n, i_h, H, HAS_G, BT)
    bgam = b * tl.exp(G)
    tm = _operand(_load_rows(T + i_h * 2 * BT, start, n, H * 2 * BT, 0, 2 * BT, BT, BT), PREC)
    d_t = tl.zeros([BT, BT], dtype=tl.float32)
    d_beta = tl.zeros([BT], dtype=tl.float32)
    d_G = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        dx = _load_rows(dX + i_h * V, start, n, H * V, i_v * BV, V, BT, BV)
        vb = _load_rows(v + i_h * V, start, n, H * V, i_v * BV, V, BT, BV)
        d_t += _dot(dx, tl.trans(vb * b[:, None]), PREC)
        d_bv = _dot(tl.trans(tm), dx, PREC)
        _store_rows(dv + i_h * V, d_bv * b[:, None], start, n, H * V, i_v * BV, V, BT, BV)
        d_beta += tl.sum(d_bv * vb, 1)
    for i_k in range(0, NK):
        kb = _load_rows(k + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
        dw = _load_rows(dW + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
        kg = kb * bgam[:, None]
        d_kg = _dot(tl.trans(tm), dw, PREC)
        d_t += _dot(dw, tl.trans(kg), PREC)
        d_beta += tl.sum(d_kg * kb, 1) * tl.exp(G)
        d_G += tl.sum(kg * d_kg, 1)
        d_k = _load_rows(dk + i_h * K, start, n, H * K, i_k * BK, K, BT, BK) + d_kg * bgam[:, None]
        _store_rows(dk + i_h * K, d_k, start, n, H * K, i_k * BK, K, BT, BK)
    _store_rows(dT + i_h * BT, d_t, start, n, H * BT, 0, BT, BT, BT)
    _store_vec(dbeta + i_h, d_beta, start, n, H, BT)
    if HAS_G:
        _store_vec(dG + DG_PART * TOTAL * H + i_h, d_G, start, n, H, BT)


@triton.jit
def wy_inverse_bwd_kernel(g, beta, T, dT, dbeta, dG, cu_seqlens, chunk_indices, TOTAL, H,
                          HAS_G: tl.constexpr, BT: tl.constexpr, DG_PART: tl.constexpr,
                          PREC: tl.constexpr):
    """Delta rules, one program per (chunk, head), through T = (I + A)^-1, A = beta (k k^T) E:
    dA = -T^T dT T^T; adds A's terms to dbeta and to dG[DG_PART] (in place) and overwrites dT
    with B = beta dA E (s < t), from which wy_dk_bwd_kernel forms dk's A term."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    b = _load_vec(beta + i_h, start, n, H, BT)
    G, _ = _decays(g, start, n, i_h, H, HAS_G, BT)
    tm = _operand(_load_rows(T + i_h * 2 * BT, start, n, H * 2 * BT, 0, 2 * BT, BT, BT), PREC)
    d_t = _load_rows(dT + i_h * BT, start, n, H * BT, 0, BT, BT, BT)
    d_a = -_dot(_dot(tl.trans(tm), d_t, PREC), tl.trans(tm), PREC)
    d_ae = d_a * _pair_decay(G, True, BT)  # zero on and above the diagonal
    kk = _load_rows(T + i_h * 2 * BT, start, n, H * 2 * BT, BT, 2 * BT, BT, BT)  # below the diagonal
    d_beta = _load_vec(dbeta + i_h, start, n, H, BT)
    _store_vec(dbeta + i_h, d_beta + tl.sum(d_ae * kk, 1), start, n, H, BT)
    bd = d_ae * b[:, None]
    da_a = bd * kk  # dA * A
    _store_rows(dT + i_h * BT, bd, start, n, H * BT, 0, BT, BT, BT)
    if HAS_G:
        d_G = _load_vec(dG + DG_PART * TOTAL * H + i_h, start, n, H, BT)
        _store_vec(dG + DG_PART * TOTAL * H + i_h, d_G + tl.sum(da_a, 1) - tl.sum(da_a, 0), start, n, H, BT)


@triton.jit
def wy_dk_bwd_kernel(k, dT, dk, cu_seqlens, chunk_indices, H, K, BT: tl.constexpr,
                     BK: tl.constexpr, PREC: tl.constexpr):
    """Delta rules, one program per (chunk, head, key block): dk += B k + B^T k (B from
    wy_inverse_bwd_kernel), in place."""
    i_c, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    bd = _operand(_load_rows(dT + i_h * BT, start, n, H * BT, 0, BT, BT, BT), PREC)
    kb = _load_raw(k + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    d_k = _load_rows(dk + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    d_k += _dot(bd, kb, PREC) + _dot(tl.trans(bd), kb, PREC)
    _store_rows(dk + i_h * K, d_k, start, n, H * K, i_k * BK, K, BT, BK)


@triton.jit
def chunk_dg_kernel(dG, dg, cu_seqlens, chunk_indices, TOTAL, H, N_PARTS: tl.constexpr,
                    BT: tl.constexpr):
    """dg = the reverse cumsum within each chunk of dG summed over its N_PARTS parts [P, rows,
    H]; one program per (chunk, head). Scalar decays (gated_delta)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    total = tl.zeros([BT], dtype=tl.float32)
    for part in tl.static_range(N_PARTS):
        total += _load_vec(dG + part * TOTAL * H + i_h, start, n, H, BT)
    _store_vec(dg + i_h, tl.cumsum(total, 0, reverse=True), start, n, H, BT)


# --- gla: a decay per key channel -------------------------------------------------------------
# P[t, s] = sum_k q_tk k_sk exp(G_tk - G_sk) cannot be one matmul (exp(-G) overflows). As in
# chunk.py it is built from sub-chunks of BC rows: a block below the diagonal (sub-chunk i of
# the queries, j < i of the keys) factors the decay through b = G at the row before sub-chunk i,
# exp(G_t - b) exp(b - G_s), both <= 1, and is a matmul; a diagonal block is summed per key
# channel, one key row at a time. The backward's dq, dk contractions with dP use the same split.
# Everything but P and dP is per key channel: those kernels take a key block per program.

@triton.jit
def gla_cumsum_kernel(g, Gc, cu_seqlens, chunk_indices, H, K, BT: tl.constexpr, BK: tl.constexpr):
    """G = chunk-local inclusive cumsum of g per key channel, one program per (chunk, head,
    key block)."""
    i_c, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    gc = _load_rows(g + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    _store_rows(Gc + i_h * K, tl.cumsum(gc, 0), start, n, H * K, i_k * BK, K, BT, BK)


@triton.jit
def _sub_rows(ptr, start, n, i_h, H, D, i_sub, col0, BC: tl.constexpr, BD: tl.constexpr):
    """[BC, BD] tile of sub-chunk i_sub's rows, columns col0.. (zero past the chunk's n rows)."""
    return _load_rows(ptr + i_h * D, start + i_sub * BC, n - i_sub * BC, H * D, col0, D, BC, BD)


@triton.jit
def _boundary(Gc, start, n, i_h, H, K, i_sub, col0, BC: tl.constexpr, BK: tl.constexpr):
    """b = G at the row before sub-chunk i_sub (i_sub >= 1), columns col0.., [BK]."""
    ck = col0 + tl.arange(0, BK)
    row = i_sub * BC - 1
    return tl.load(Gc + (start + row) * H * K + i_h * K + ck, mask=ck < tl.where(row < n, K, 0), other=0.0)


@triton.jit
def _row(ptr, start, n, i_h, H, K, row, col0, BK: tl.constexpr):
    """[BK] columns col0.. of chunk row `row` (zeros past the chunk's n rows)."""
    ck = col0 + tl.arange(0, BK)
    ok = row < n
    return tl.load(ptr + (start + row) * H * K + i_h * K + ck, mask=ck < tl.where(ok, K, 0),
                   other=0.0).to(tl.float32)


@triton.jit
def gla_decayed_kernel(q, k, Gc, Q_out, K_out, cu_seqlens, chunk_indices, scale, H, K,
                       BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """gla, one program per (chunk, head, key block): q scale exp(G) and k exp(G_C - G) in the
    dots' operand type, the reverse state pass's operands (so that pass reads no [C, K] decay
    tile per block: what made it spill)."""
    i_c, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    Gb = _load_rows(Gc + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    G_last = _load_last_row(Gc + i_h * K, start, n, H * K, i_k * BK, K, BK)
    qb = _load_rows(q + i_h * K, start, n, H * K, i_k * BK, K, BT, BK) * scale
    kb = _load_rows(k + i_h * K, start, n, H * K, i_k * BK, K, BT, BK)
    _store_rows(Q_out + i_h * K, _operand(qb * tl.exp(Gb), PREC), start, n, H * K, i_k * BK, K, BT, BK)
    _store_rows(K_out + i_h * K, _operand(kb * tl.exp(G_last[None, :] - Gb), PREC), start, n, H * K,
                i_k * BK, K, BT, BK)


@triton.jit
def gla_scores_kernel(q, k, Gc, P, cu_seqlens, chunk_indices, scale, H, K, BT: tl.constexpr,
                      BC: tl.constexpr, BK: tl.constexpr, NK: tl.constexpr, PREC: tl.constexpr):
    """P (scaled, s <= t) of one chunk and head into P [rows, H, BT] (zeros above the diagonal
    must be there already), each block summed over the NK key blocks."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    NC: tl.constexpr = BT // BC
    rc = tl.arange(0, BC)
    for i in tl.static_range(NC):
        for j in tl.static_range(i):
            blk = tl.zeros([BC, BC], dtype=tl.float32)
            for i_k in range(0, NK):
                c0 = i_k * BK
                b = _boundary(Gc, start, n, i_h, H, K, i, c0, BC, BK)
                q_off = _sub_rows(q, start, n, i_h, H, K, i, c0, BC, BK) * scale \
                    * tl.exp(_sub_rows(Gc, start, n, i_h, H, K, i, c0, BC, BK) - b[None, :])
                k_j = _sub_rows(k, start, n, i_h, H, K, j, c0, BC, BK)
                G_j = _sub_rows(Gc, start, n, i_h, H, K, j, c0, BC, BK)
                blk += _dot(q_off, tl.trans(k_j * tl.exp(b[None, :] - G_j)), PREC)
            _store_rows(P + i_h * BT, blk, start + i * BC, n - i * BC, H * BT, j * BC, BT, BC, BC)
        diag = tl.zeros([BC, BC], dtype=tl.float32)
        for i_k in range(0, NK):
            c0 = i_k * BK
            q_i = _sub_rows(q, start, n, i_h, H, K, i, c0, BC, BK) * scale
            G_i = _sub_rows(Gc, start, n, i_h, H, K, i, c0, BC, BK)
            for s in range(0, BC):
                k_s = _row(k, start, n, i_h, H, K, i * BC + s, c0, BK)
                G_s = _row(Gc, start, n, i_h, H, K, i * BC + s, c0, BK)
                expo = tl.where(rc[:, None] >= s, G_i - G_s[None, :], float("-inf"))
                col = tl.sum(q_i * k_s[None, :] * tl.exp(expo), 1)
                diag += tl.where(rc[None, :] == s, col[:, None], 0.0)
        _store_rows(P + i_h * BT, diag, start + i * BC, n - i * BC, H * BT, i * BC, BT, BC, BC)


@triton.jit
def gla_chunk_bwd_kernel(q, k, v, Gc, h, do, dh, dP, dq, dk, dlast, cu_seqlens, chunk_indices,
                         chunk_offsets, scale, H, K, V, BT: tl.constexpr, BK: tl.constexpr,
                         BV: tl.constexpr, PREC: tl.constexpr):
    """gla, one program per (chunk, head, key block): the state terms of dq, dk; dP = dO v^T
    (s <= t, stored by key block 0's program); dlast = the gradient reaching G_C per key
    channel. gla_intra_bwd_kernel finishes."""
    i_c, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, n, i_n, i_j = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    c = _chunk_index(chunk_offsets, i_n, i_j)
    state = (c * H + i_h) * K * V
    row0 = i_k * BK
    kb = _load_rows(k + i_h * K, start, n, H * K, row0, K, BT, BK)
    Gb = _load_rows(Gc + i_h * K, start, n, H * K, row0, K, BT, BK)
    G_last = _load_last_row(Gc + i_h * K, start, n, H * K, row0, K, BK)
    d_qgam = tl.zeros([BT, BK], dtype=tl.float32)
    d_p = tl.zeros([BT, BT], dtype=tl.float32)
    d_kend = tl.zeros([BT, BK], dtype=tl.float32)
    s_ds = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        col = i_v * BV
        dout = _load_raw(do + i_h * V, start, n, H * V, col, V, BT, BV)
        s = _load_state(h + state, K, V, row0, col, BK, BV)
        ds = _load_state(dh + state, K, V, row0, col, BK, BV)
        x = _load_raw(v + i_h * V, start, n, H * V, col, V, BT, BV)
        d_qgam += _dot(dout, tl.trans(s), PREC)
        d_p += _dot(dout, tl.trans(x), PREC)
        d_kend += _dot(x, tl.trans(ds), PREC)
        s_ds += tl.sum(s * ds, 1)
    r = tl.arange(0, BT)
    if i_k == 0:
        d_p = tl.where(r[:, None] >= r[None, :], d_p, 0.0)
        _store_rows(dP + i_h * BT, d_p, start, n, H * BT, 0, BT, BT, BT)
    d_k = d_kend * tl.exp(G_last[None, :] - Gb)
    _store_rows(dq + i_h * K, d_qgam * tl.exp(Gb), start, n, H * K, row0, K, BT, BK)
    _store_rows(dk + i_h * K, d_k, start, n, H * K, row0, K, BT, BK)
    ck = row0 + tl.arange(0, BK)
    last = tl.sum(kb * d_k, 0) + tl.exp(G_last) * s_ds
    tl.store(dlast + (c * H + i_h) * K + ck, last, mask=ck < K)


@triton.jit
def gla_intra_bwd_kernel(q, k, Gc, dP, dq, dk, dlast, dg, cu_seqlens, chunk_indices,
                         chunk_offsets, scale, H, K, BT: tl.constexpr, BC: tl.constexpr,
                         BK: tl.constexpr, PREC: tl.constexpr):
    """gla, one program per (chunk, head, key block): adds dq_t += sum_s dP_ts k_s
    exp(G_t - G_s) and dk_s += sum_t dP_ts q_t exp(G_t - G_s) to the state terms in dq, dk (in
    place), then dG = q dq - k dk (+ dlast at the chunk's end) and dg = its reverse cumsum."""
    i_c, i_h, i_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, n, i_n, i_j = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    c = _chunk_index(chunk_offsets, i_n, i_j)
    c0 = i_k * BK
    NC: tl.constexpr = BT // BC
    rc = tl.arange(0, BC)
    # dq, by query sub-chunk i
    for i in tl.static_range(NC):
        G_i = _sub_rows(Gc, start, n, i_h, H, K, i, c0, BC, BK)
        acc = tl.zeros([BC, BK], dtype=tl.float32)
        if i > 0:
            b = _boundary(Gc, start, n, i_h, H, K, i, c0, BC, BK)
            off = tl.zeros([BC, BK], dtype=tl.float32)
            for j in tl.static_range(i):
                k_j = _sub_rows(k, start, n, i_h, H, K, j, c0, BC, BK)
                G_j = _sub_rows(Gc, start, n, i_h, H, K, j, c0, BC, BK)
                dp = _load_rows(dP + i_h * BT, start + i * BC, n - i * BC, H * BT, j * BC, BT, BC, BC)
                off += _dot(dp, k_j * tl.exp(b[None, :] - G_j), PREC)
            acc += off * tl.exp(G_i - b[None, :])
        for s in range(0, BC):
            k_s = _row(k, start, n, i_h, H, K, i * BC + s, c0, BK)
            G_s = _row(Gc, start, n, i_h, H, K, i * BC + s, c0, BK)
            dp_s = tl.load(dP + (start + i * BC + rc) * H * BT + i_h * BT + i * BC + s,
                           mask=(i * BC + rc) < n, other=0.0)
            expo = tl.where(rc[:, None] >= s, G_i - G_s[None, :], float("-inf"))
            acc += dp_s[:, None] * k_s[None, :] * tl.exp(expo)
        prev = _sub_rows(dq, start, n, i_h, H, K, i, c0, BC, BK)
        _store_rows(dq + i_h * K, prev + acc, start + i * BC, n - i * BC, H * K, c0, K, BC, BK)
    # dk, by key sub-chunk j
    for j in tl.static_range(NC):
        G_j = _sub_rows(Gc, start, n, i_h, H, K, j, c0, BC, BK)
        acc = tl.zeros([BC, BK], dtype=tl.float32)
        for i in tl.static_range(j + 1, NC):
            b = _boundary(Gc, start, n, i_h, H, K, i, c0, BC, BK)
            q_i = _sub_rows(q, start, n, i_h, H, K, i, c0, BC, BK) * scale
            G_i = _sub_rows(Gc, start, n, i_h, H, K, i, c0, BC, BK)
            dp = _load_rows(dP + i_h * BT, start + i * BC, n - i * BC, H * BT, j * BC, BT, BC, BC)
            acc += _dot(tl.trans(dp), q_i * tl.exp(G_i - b[None, :]), PREC) * tl.exp(b[None, :] - G_j)
        for t in range(0, BC):
            row = j * BC + t
            q_t = _row(q, start, n, i_h, H, K, row, c0, BK) * scale
            G_t = _row(Gc, start, n, i_h, H, K, row, c0, BK)
            dp_t = tl.load(dP + (start + row) * H * BT + i_h * BT + j * BC + rc,
                           mask=rc < tl.where(row < n, BC, 0), other=0.0)
            expo = tl.where(rc[:, None] <= t, G_t[None, :] - G_j, float("-inf"))
            acc += dp_t[:, None] * q_t[None, :] * tl.exp(expo)
        prev = _sub_rows(dk, start, n, i_h, H, K, j, c0, BC, BK)
        _store_rows(dk + i_h * K, prev + acc, start + j * BC, n - j * BC, H * K, c0, K, BC, BK)
    # dG = q dq - k dk per key channel, dlast at the end; dg = reverse cumsum within the chunk
    tl.debug_barrier()  # the rows of dq, dk stored above are read back by other threads
    qc = _load_rows(q + i_h * K, start, n, H * K, c0, K, BT, BK) * scale
    kc = _load_rows(k + i_h * K, start, n, H * K, c0, K, BT, BK)
    d_q = _load_rows(dq + i_h * K, start, n, H * K, c0, K, BT, BK)
    d_k = _load_rows(dk + i_h * K, start, n, H * K, c0, K, BT, BK)
    ck = c0 + tl.arange(0, BK)
    last = tl.load(dlast + (c * H + i_h) * K + ck, mask=ck < K, other=0.0)
    r = tl.arange(0, BT)
    d_G = qc * d_q - kc * d_k + tl.where(r[:, None] == BT - 1, last[None, :], 0.0)
    _store_rows(dg + i_h * K, tl.cumsum(d_G, 0, reverse=True), start, n, H * K, c0, K, BT, BK)
    _store_rows(dq + i_h * K, d_q * scale, start, n, H * K, c0, K, BT, BK)
