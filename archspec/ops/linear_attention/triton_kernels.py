"""Triton kernels of the chunked linear-attention rules (linear, delta, gated_delta); the only
module here that imports triton. The math is chunk.py's (the reference); fused_chunk.py wraps
these kernels in custom ops. Notation per chunk of C = BT rows (t, s), sequences packed:

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
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    return tl.dot(a, b, input_precision=PREC)


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
def _load_rows(ptr, start, n_rows, stride, col0, n_cols, BT: tl.constexpr, BD: tl.constexpr):
    """[BT, BD] tile of rows start.. (stride apart), columns col0.., zero outside."""
    r = tl.arange(0, BT)
    c = col0 + tl.arange(0, BD)
    mask = (r[:, None] < n_rows) & (c[None, :] < n_cols)
    return tl.load(ptr + (start + r[:, None]) * stride + c[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, x, start, n_rows, stride, col0, n_cols, BT: tl.constexpr, BD: tl.constexpr):
    r = tl.arange(0, BT)
    c = col0 + tl.arange(0, BD)
    mask = (r[:, None] < n_rows) & (c[None, :] < n_cols)
    tl.store(ptr + (start + r[:, None]) * stride + c[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_vec(ptr, start, n_rows, stride, BT: tl.constexpr):
    r = tl.arange(0, BT)
    return tl.load(ptr + (start + r) * stride, mask=r < n_rows, other=0.0).to(tl.float32)


@triton.jit
def _load_state(ptr, K, V, col0, BK: tl.constexpr, BV: tl.constexpr):
    rk = tl.arange(0, BK)
    cv = col0 + tl.arange(0, BV)
    mask = (rk[:, None] < K) & (cv[None, :] < V)
    return tl.load(ptr + rk[:, None] * V + cv[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_state(ptr, x, K, V, col0, BK: tl.constexpr, BV: tl.constexpr):
    rk = tl.arange(0, BK)
    cv = col0 + tl.arange(0, BV)
    mask = (rk[:, None] < K) & (cv[None, :] < V)
    tl.store(ptr + rk[:, None] * V + cv[None, :], x.to(ptr.dtype.element_ty), mask=mask)


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


# --- forward ----------------------------------------------------------------------------------

@triton.jit
def wy_fwd_kernel(k, v, beta, g, T_out, U_out, W_out, cu_seqlens, chunk_indices,
                  H, K, V, HAS_G: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, LOG2_BT: tl.constexpr, PREC: tl.constexpr):
    """Delta rules, one program per (chunk, head): T = (I + A)^-1, U = T beta v, W = T beta gam k."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
    b = _load_vec(beta + i_h, start, n, H, BT)
    G, _ = _decays(g, start, n, i_h, H, HAS_G, BT)
    a = _dot(kc, tl.trans(kc), "ieee") * b[:, None] * _pair_decay(G, True, BT)
    # (I + A)^-1 = (I - A)(I + A^2)(I + A^4)...: A is strictly lower, so A^BT = 0
    r = tl.arange(0, BT)
    eye = (r[:, None] == r[None, :]).to(tl.float32)
    power = -a
    t = eye + power
    for _ in tl.static_range(LOG2_BT - 1):
        power = _dot(power, power, "ieee")
        t = t + _dot(t, power, "ieee")
    _store_rows(T_out + i_h * BT, t, start, n, H * BT, 0, BT, BT, BT)
    vc = _load_rows(v + i_h * V, start, n, H * V, 0, V, BT, BV)
    _store_rows(U_out + i_h * V, _dot(t, vc * b[:, None], "ieee"), start, n, H * V, 0, V, BT, BV)
    kg = kc * (b * tl.exp(G))[:, None]
    _store_rows(W_out + i_h * K, _dot(t, kg, "ieee"), start, n, H * K, 0, K, BT, BK)


@triton.jit
def state_fwd_kernel(k, v, g, U, W, X_out, h_out, h0, ht, cu_seqlens, chunk_offsets,
                     H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, HAS_H0: tl.constexpr,
                     STORE_HT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     PREC: tl.constexpr):
    """One program per (sequence, head, value block): the sequential pass over the chunks.
    Stores the state entering every chunk (h_out) and, for the delta rules, X = U - W S."""
    i_n, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    n_chunks = tl.load(chunk_offsets + i_n + 1).to(tl.int64) - c0
    col = i_v * BV
    if HAS_H0:
        s = _load_state(h0 + (i_n * H + i_h) * K * V, K, V, col, BK, BV)
    else:
        s = tl.zeros([BK, BV], dtype=tl.float32)
    for j in range(0, n_chunks):
        _store_state(h_out + ((c0 + j) * H + i_h) * K * V, s, K, V, col, BK, BV)
        start = bos + j * BT
        n = tl.minimum(eos - start, BT)
        kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
        G, G_last = _decays(g, start, n, i_h, H, HAS_G, BT)
        if DELTA:
            w = _load_rows(W + i_h * K, start, n, H * K, 0, K, BT, BK)
            x = _load_rows(U + i_h * V, start, n, H * V, col, V, BT, BV) - _dot(w, s, PREC)
            _store_rows(X_out + i_h * V, x, start, n, H * V, col, V, BT, BV)
        else:
            x = _load_rows(v + i_h * V, start, n, H * V, col, V, BT, BV)
        k_end = kc * tl.exp(G_last - G)[:, None]
        s = s * tl.exp(G_last) + _dot(tl.trans(k_end), x, PREC)
    if STORE_HT:
        _store_state(ht + (i_n * H + i_h) * K * V, s, K, V, col, BK, BV)


@triton.jit
def output_fwd_kernel(q, k, v, g, X, h, o, cu_seqlens, chunk_indices, chunk_offsets, scale,
                      H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """One program per (chunk, head, value block): O = (q gam) S + P X."""
    i_c, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, n, i_n, i_j = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    c = tl.load(chunk_offsets + i_n).to(tl.int64) + i_j
    col = i_v * BV
    qc = _load_rows(q + i_h * K, start, n, H * K, 0, K, BT, BK) * scale
    kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
    G, _ = _decays(g, start, n, i_h, H, HAS_G, BT)
    if DELTA:
        x = _load_rows(X + i_h * V, start, n, H * V, col, V, BT, BV)
    else:
        x = _load_rows(v + i_h * V, start, n, H * V, col, V, BT, BV)
    s = _load_state(h + (c * H + i_h) * K * V, K, V, col, BK, BV)
    p = _dot(qc, tl.trans(kc), PREC) * _pair_decay(G, False, BT)
    out = _dot(qc * tl.exp(G)[:, None], s, PREC) + _dot(p, x, PREC)
    _store_rows(o + i_h * V, out, start, n, H * V, col, V, BT, BV)


# --- backward ---------------------------------------------------------------------------------

@triton.jit
def state_bwd_kernel(q, k, g, W, do, dX_out, dh_out, dht, dh0, cu_seqlens, chunk_offsets, scale,
                     H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, HAS_DHT: tl.constexpr,
                     STORE_DH0: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, PREC: tl.constexpr):
    """One program per (sequence, head, value block), chunks in reverse: dX and the gradient
    of the state leaving every chunk (dh_out), and of the initial state."""
    i_n, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    n_chunks = tl.load(chunk_offsets + i_n + 1).to(tl.int64) - c0
    col = i_v * BV
    if HAS_DHT:
        ds = _load_state(dht + (i_n * H + i_h) * K * V, K, V, col, BK, BV)
    else:
        ds = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(0, n_chunks):
        j = n_chunks - 1 - i
        _store_state(dh_out + ((c0 + j) * H + i_h) * K * V, ds, K, V, col, BK, BV)
        start = bos + j * BT
        n = tl.minimum(eos - start, BT)
        qc = _load_rows(q + i_h * K, start, n, H * K, 0, K, BT, BK) * scale
        kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
        dout = _load_rows(do + i_h * V, start, n, H * V, col, V, BT, BV)
        G, G_last = _decays(g, start, n, i_h, H, HAS_G, BT)
        p = _dot(qc, tl.trans(kc), PREC) * _pair_decay(G, False, BT)
        k_end = kc * tl.exp(G_last - G)[:, None]
        dx = _dot(tl.trans(p), dout, PREC) + _dot(k_end, ds, PREC)
        _store_rows(dX_out + i_h * V, dx, start, n, H * V, col, V, BT, BV)
        ds = ds * tl.exp(G_last) + _dot(tl.trans(qc * tl.exp(G)[:, None]), dout, PREC)
        if DELTA:
            w = _load_rows(W + i_h * K, start, n, H * K, 0, K, BT, BK)
            ds = ds - _dot(tl.trans(w), dx, PREC)
    if STORE_DH0:
        _store_state(dh0 + (i_n * H + i_h) * K * V, ds, K, V, col, BK, BV)


@triton.jit
def chunk_bwd_kernel(q, k, v, g, beta, T, X, h, do, dX, dh, dq, dk, dv, dbeta, dg,
                     cu_seqlens, chunk_indices, chunk_offsets, scale, H, K, V,
                     DELTA: tl.constexpr, HAS_G: tl.constexpr, BT: tl.constexpr,
                     BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """One program per (chunk, head): dq, dk (and dv, dbeta for the delta rules; linear's dv is
    dX itself) and dg, looping over value blocks of BV."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, i_n, i_j = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    c = tl.load(chunk_offsets + i_n).to(tl.int64) + i_j
    qc = _load_rows(q + i_h * K, start, n, H * K, 0, K, BT, BK) * scale
    kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
    G, G_last = _decays(g, start, n, i_h, H, HAS_G, BT)
    gam = tl.exp(G)
    gam_end = tl.exp(G_last - G)
    d_qgam = tl.zeros([BT, BK], dtype=tl.float32)    # dO S^T
    d_p = tl.zeros([BT, BT], dtype=tl.float32)       # dO X^T
    d_kend = tl.zeros([BT, BK], dtype=tl.float32)    # X dS_next^T
    d_w = tl.zeros([BT, BK], dtype=tl.float32)       # -dX S^T
    d_t = tl.zeros([BT, BT], dtype=tl.float32)       # dU (beta v)^T
    d_beta = tl.zeros([BT], dtype=tl.float32)
    s_ds = 0.0                                       # sum(S * dS_next)
    if DELTA:
        b = _load_vec(beta + i_h, start, n, H, BT)
        tm = _load_rows(T + i_h * BT, start, n, H * BT, 0, BT, BT, BT)
    for i_v in range(0, tl.cdiv(V, BV)):
        col = i_v * BV
        dout = _load_rows(do + i_h * V, start, n, H * V, col, V, BT, BV)
        s = _load_state(h + (c * H + i_h) * K * V, K, V, col, BK, BV)
        ds = _load_state(dh + (c * H + i_h) * K * V, K, V, col, BK, BV)
        if DELTA:
            x = _load_rows(X + i_h * V, start, n, H * V, col, V, BT, BV)
        else:
            x = _load_rows(v + i_h * V, start, n, H * V, col, V, BT, BV)
        d_qgam += _dot(dout, tl.trans(s), PREC)
        d_p += _dot(dout, tl.trans(x), PREC)
        d_kend += _dot(x, tl.trans(ds), PREC)
        s_ds += tl.sum(tl.sum(s * ds, 1), 0)
        if DELTA:
            dx = _load_rows(dX + i_h * V, start, n, H * V, col, V, BT, BV)
            vc = _load_rows(v + i_h * V, start, n, H * V, col, V, BT, BV)
            d_w -= _dot(dx, tl.trans(s), PREC)
            d_t += _dot(dx, tl.trans(vc * b[:, None]), "ieee")
            d_bv = _dot(tl.trans(tm), dx, "ieee")
            _store_rows(dv + i_h * V, d_bv * b[:, None], start, n, H * V, col, V, BT, BV)
            d_beta += tl.sum(d_bv * vc, 1)
    e = _pair_decay(G, False, BT)
    r = tl.arange(0, BT)
    causal = r[:, None] >= r[None, :]
    p = _dot(qc, tl.trans(kc), PREC) * e
    d_p = tl.where(causal, d_p, 0.0)
    d_pe = d_p * e
    d_q = d_qgam * gam[:, None] + _dot(d_pe, kc, PREC)
    d_k = _dot(tl.trans(d_pe), qc, PREC) + d_kend * gam_end[:, None]
    # dG_t: +G_t in q gam and in P's rows, -G_s in P's columns and in exp(G_C - G_s)
    dp_p = d_p * p
    z = tl.sum(kc * gam_end[:, None] * d_kend, 1)
    d_G = tl.sum(qc * gam[:, None] * d_qgam, 1) + tl.sum(dp_p, 1) - tl.sum(dp_p, 0) - z
    d_last = tl.sum(z, 0) + tl.exp(G_last) * s_ds  # through G_C
    if DELTA:
        kg = kc * (b * gam)[:, None]
        d_kg = _dot(tl.trans(tm), d_w, "ieee")
        d_t += _dot(d_w, tl.trans(kg), "ieee")
        d_a = -_dot(_dot(tl.trans(tm), d_t, "ieee"), tl.trans(tm), "ieee")
        e_strict = _pair_decay(G, True, BT)
        kk = _dot(kc, tl.trans(kc), "ieee")
        d_ae = tl.where(r[:, None] > r[None, :], d_a, 0.0) * e_strict
        d_beta += tl.sum(d_ae * kk, 1) + tl.sum(d_kg * kc * gam[:, None], 1)
        bd = d_ae * b[:, None]
        d_k += _dot(bd, kc, "ieee") + _dot(tl.trans(bd), kc, "ieee") + d_kg * (b * gam)[:, None]
        da_a = d_ae * kk * b[:, None]  # dA * A
        d_G += tl.sum(kg * d_kg, 1) + tl.sum(da_a, 1) - tl.sum(da_a, 0)
        r_b = tl.arange(0, BT)
        tl.store(dbeta + (start + r_b) * H + i_h, d_beta, mask=r_b < n)
    _store_rows(dq + i_h * K, d_q * scale, start, n, H * K, 0, K, BT, BK)
    _store_rows(dk + i_h * K, d_k, start, n, H * K, 0, K, BT, BK)
    if HAS_G:
        d_G = d_G + tl.where(r == BT - 1, d_last, 0.0)
        d_g = tl.cumsum(d_G, 0, reverse=True)
        tl.store(dg + (start + r) * H + i_h, d_g, mask=r < n)
