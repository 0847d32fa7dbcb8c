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
def _sequence(cu_seqlens, chunk_offsets, i_n):
    """(first row, end row, first chunk, chunk count) of sequence i_n."""
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    return bos, eos, c0, tl.load(chunk_offsets + i_n + 1).to(tl.int64) - c0


@triton.jit
def _initial_state(ptr, i_n, i_h, H, K, V, col, GIVEN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Sequence i_n's [BK, BV] state block from ptr [N, H, K, V], or zeros."""
    if GIVEN:
        return _load_state(ptr + (i_n * H + i_h) * K * V, K, V, col, BK, BV)
    else:
        return tl.zeros([BK, BV], dtype=tl.float32)


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
def _gla_decays(Gc, start, n_rows, i_h, H, K, BT: tl.constexpr, BK: tl.constexpr):
    """gla: (G [BT, BK], chunk-local cumsums stored by gla_cumsum_kernel; G_C [BK], the last
    real row's)."""
    G = _load_rows(Gc + i_h * K, start, n_rows, H * K, 0, K, BT, BK)
    ck = tl.arange(0, BK)
    G_last = tl.load(Gc + (start + n_rows - 1) * H * K + i_h * K + ck, mask=ck < K, other=0.0)
    return G, G_last


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
                     H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, GLA: tl.constexpr, HAS_H0: tl.constexpr,
                     STORE_HT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     PREC: tl.constexpr):
    """One program per (sequence, head, value block): the sequential pass over the chunks.
    Stores the state entering every chunk (h_out) and, for the delta rules, X = U - W S."""
    i_n, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, c0, n_chunks = _sequence(cu_seqlens, chunk_offsets, i_n)
    col = i_v * BV
    s = _initial_state(h0, i_n, i_h, H, K, V, col, HAS_H0, BK, BV)
    for j in range(0, n_chunks):
        _store_state(h_out + ((c0 + j) * H + i_h) * K * V, s, K, V, col, BK, BV)
        start = bos + j * BT
        n = tl.minimum(eos - start, BT)
        kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
        if DELTA:
            w = _load_rows(W + i_h * K, start, n, H * K, 0, K, BT, BK)
            x = _load_rows(U + i_h * V, start, n, H * V, col, V, BT, BV) - _dot(w, s, PREC)
            _store_rows(X_out + i_h * V, x, start, n, H * V, col, V, BT, BV)
        else:
            x = _load_rows(v + i_h * V, start, n, H * V, col, V, BT, BV)
        if GLA:
            G, G_last = _gla_decays(g, start, n, i_h, H, K, BT, BK)
            k_end = kc * tl.exp(G_last[None, :] - G)
            s = s * tl.exp(G_last)[:, None] + _dot(tl.trans(k_end), x, PREC)
        else:
            G, G_last = _decays(g, start, n, i_h, H, HAS_G, BT)
            k_end = kc * tl.exp(G_last - G)[:, None]
            s = s * tl.exp(G_last) + _dot(tl.trans(k_end), x, PREC)
    if STORE_HT:
        _store_state(ht + (i_n * H + i_h) * K * V, s, K, V, col, BK, BV)


@triton.jit
def output_fwd_kernel(q, k, v, g, X, P, h, o, cu_seqlens, chunk_indices, chunk_offsets, scale,
                      H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, GLA: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """One program per (chunk, head, value block): O = (q gam) S + P X."""
    i_c, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, n, i_n, i_j = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    c = tl.load(chunk_offsets + i_n).to(tl.int64) + i_j
    col = i_v * BV
    qc = _load_rows(q + i_h * K, start, n, H * K, 0, K, BT, BK) * scale
    kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
    if DELTA:
        x = _load_rows(X + i_h * V, start, n, H * V, col, V, BT, BV)
    else:
        x = _load_rows(v + i_h * V, start, n, H * V, col, V, BT, BV)
    s = _load_state(h + (c * H + i_h) * K * V, K, V, col, BK, BV)
    if GLA:
        G, _ = _gla_decays(g, start, n, i_h, H, K, BT, BK)
        p = _load_rows(P + i_h * BT, start, n, H * BT, 0, BT, BT, BT)
        q_in = qc * tl.exp(G)
    else:
        G, _ = _decays(g, start, n, i_h, H, HAS_G, BT)
        p = _dot(qc, tl.trans(kc), PREC) * _pair_decay(G, False, BT)
        q_in = qc * tl.exp(G)[:, None]
    out = _dot(q_in, s, PREC) + _dot(p, x, PREC)
    _store_rows(o + i_h * V, out, start, n, H * V, col, V, BT, BV)


# --- backward ---------------------------------------------------------------------------------

@triton.jit
def state_bwd_kernel(q, k, g, W, P, do, dX_out, dh_out, dht, dh0, cu_seqlens, chunk_offsets, scale,
                     H, K, V, DELTA: tl.constexpr, HAS_G: tl.constexpr, GLA: tl.constexpr,
                     HAS_DHT: tl.constexpr,
                     STORE_DH0: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     BV: tl.constexpr, PREC: tl.constexpr):
    """One program per (sequence, head, value block), chunks in reverse: dX and the gradient
    of the state leaving every chunk (dh_out), and of the initial state."""
    i_n, i_h, i_v = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos, c0, n_chunks = _sequence(cu_seqlens, chunk_offsets, i_n)
    col = i_v * BV
    ds = _initial_state(dht, i_n, i_h, H, K, V, col, HAS_DHT, BK, BV)
    for i in range(0, n_chunks):
        j = n_chunks - 1 - i
        _store_state(dh_out + ((c0 + j) * H + i_h) * K * V, ds, K, V, col, BK, BV)
        start = bos + j * BT
        n = tl.minimum(eos - start, BT)
        qc = _load_rows(q + i_h * K, start, n, H * K, 0, K, BT, BK) * scale
        kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
        dout = _load_rows(do + i_h * V, start, n, H * V, col, V, BT, BV)
        if GLA:
            G, G_last = _gla_decays(g, start, n, i_h, H, K, BT, BK)
            p = _load_rows(P + i_h * BT, start, n, H * BT, 0, BT, BT, BT)
            k_end = kc * tl.exp(G_last[None, :] - G)
            dx = _dot(tl.trans(p), dout, PREC) + _dot(k_end, ds, PREC)
            ds = ds * tl.exp(G_last)[:, None] + _dot(tl.trans(qc * tl.exp(G)), dout, PREC)
        else:
            G, G_last = _decays(g, start, n, i_h, H, HAS_G, BT)
            p = _dot(qc, tl.trans(kc), PREC) * _pair_decay(G, False, BT)
            k_end = kc * tl.exp(G_last - G)[:, None]
            dx = _dot(tl.trans(p), dout, PREC) + _dot(k_end, ds, PREC)
            ds = ds * tl.exp(G_last) + _dot(tl.trans(qc * tl.exp(G)[:, None]), dout, PREC)
        _store_rows(dX_out + i_h * V, dx, start, n, H * V, col, V, BT, BV)
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


# --- gla: a decay per key channel -------------------------------------------------------------
# P[t, s] = sum_k q_tk k_sk exp(G_tk - G_sk) cannot be one matmul (exp(-G) overflows). As in
# chunk.py it is built from sub-chunks of BC rows: a block below the diagonal (sub-chunk i of
# the queries, j < i of the keys) factors the decay through b = G at the row before sub-chunk i,
# exp(G_t - b) exp(b - G_s), both <= 1, and is a matmul; a diagonal block is summed per key
# channel, one key row at a time. The backward's dq, dk contractions with dP use the same split.

@triton.jit
def gla_cumsum_kernel(g, Gc, cu_seqlens, chunk_indices, H, K, BT: tl.constexpr, BK: tl.constexpr):
    """G = chunk-local inclusive cumsum of g per key channel, one program per (chunk, head)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    gc = _load_rows(g + i_h * K, start, n, H * K, 0, K, BT, BK)
    _store_rows(Gc + i_h * K, tl.cumsum(gc, 0), start, n, H * K, 0, K, BT, BK)


@triton.jit
def _sub_rows(ptr, start, n, i_h, H, D, i_sub, BC: tl.constexpr, BD: tl.constexpr):
    """[BC, BD] tile of sub-chunk i_sub's rows (zero past the chunk's n real rows)."""
    return _load_rows(ptr + i_h * D, start + i_sub * BC, n - i_sub * BC, H * D, 0, D, BC, BD)


@triton.jit
def _boundary(Gc, start, n, i_h, H, K, i_sub, BC: tl.constexpr, BK: tl.constexpr):
    """b = G at the row before sub-chunk i_sub (i_sub >= 1), [BK]."""
    ck = tl.arange(0, BK)
    row = i_sub * BC - 1
    return tl.load(Gc + (start + row) * H * K + i_h * K + ck, mask=ck < tl.where(row < n, K, 0), other=0.0)


@triton.jit
def gla_scores_kernel(q, k, Gc, P, cu_seqlens, chunk_indices, scale, H, K, BT: tl.constexpr,
                      BC: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """P (scaled, s <= t) of one chunk and head into P [rows, H, BT] (zeros above the diagonal
    must be there already)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, _, _ = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    NC: tl.constexpr = BT // BC
    rc = tl.arange(0, BC)
    ck = tl.arange(0, BK)
    for i in tl.static_range(NC):
        q_i = _sub_rows(q, start, n, i_h, H, K, i, BC, BK) * scale
        G_i = _sub_rows(Gc, start, n, i_h, H, K, i, BC, BK)
        if i > 0:
            b = _boundary(Gc, start, n, i_h, H, K, i, BC, BK)
            q_off = q_i * tl.exp(G_i - b[None, :])
            for j in tl.static_range(i):
                k_j = _sub_rows(k, start, n, i_h, H, K, j, BC, BK)
                G_j = _sub_rows(Gc, start, n, i_h, H, K, j, BC, BK)
                blk = _dot(q_off, tl.trans(k_j * tl.exp(b[None, :] - G_j)), PREC)
                _store_rows(P + i_h * BT, blk, start + i * BC, n - i * BC, H * BT, j * BC, BT, BC, BC)
        diag = tl.zeros([BC, BC], dtype=tl.float32)
        for s in range(0, BC):
            row = start + i * BC + s
            ok = (i * BC + s) < n
            k_s = tl.load(k + row * H * K + i_h * K + ck, mask=ck < tl.where(ok, K, 0), other=0.0).to(tl.float32)
            G_s = tl.load(Gc + row * H * K + i_h * K + ck, mask=ck < tl.where(ok, K, 0), other=0.0)
            expo = tl.where(rc[:, None] >= s, G_i - G_s[None, :], float("-inf"))
            col = tl.sum(q_i * k_s[None, :] * tl.exp(expo), 1)
            diag += tl.where(rc[None, :] == s, col[:, None], 0.0)
        _store_rows(P + i_h * BT, diag, start + i * BC, n - i * BC, H * BT, i * BC, BT, BC, BC)


@triton.jit
def gla_chunk_bwd_kernel(q, k, v, Gc, h, do, dh, dP, dq, dk, dlast, cu_seqlens, chunk_indices,
                         chunk_offsets, scale, H, K, V, BT: tl.constexpr, BK: tl.constexpr,
                         BV: tl.constexpr, PREC: tl.constexpr):
    """gla, one program per (chunk, head): the state terms of dq, dk; dP = dO v^T (s <= t);
    dlast = the gradient reaching G_C per key channel. gla_intra_bwd_kernel finishes."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, i_n, i_j = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    c = tl.load(chunk_offsets + i_n).to(tl.int64) + i_j
    kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
    G, G_last = _gla_decays(Gc, start, n, i_h, H, K, BT, BK)
    d_qgam = tl.zeros([BT, BK], dtype=tl.float32)
    d_p = tl.zeros([BT, BT], dtype=tl.float32)
    d_kend = tl.zeros([BT, BK], dtype=tl.float32)
    s_ds = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        col = i_v * BV
        dout = _load_rows(do + i_h * V, start, n, H * V, col, V, BT, BV)
        s = _load_state(h + (c * H + i_h) * K * V, K, V, col, BK, BV)
        ds = _load_state(dh + (c * H + i_h) * K * V, K, V, col, BK, BV)
        x = _load_rows(v + i_h * V, start, n, H * V, col, V, BT, BV)
        d_qgam += _dot(dout, tl.trans(s), PREC)
        d_p += _dot(dout, tl.trans(x), PREC)
        d_kend += _dot(x, tl.trans(ds), PREC)
        s_ds += tl.sum(s * ds, 1)
    r = tl.arange(0, BT)
    d_p = tl.where(r[:, None] >= r[None, :], d_p, 0.0)
    _store_rows(dP + i_h * BT, d_p, start, n, H * BT, 0, BT, BT, BT)
    gam_end = tl.exp(G_last[None, :] - G)
    d_k = d_kend * gam_end
    _store_rows(dq + i_h * K, d_qgam * tl.exp(G), start, n, H * K, 0, K, BT, BK)
    _store_rows(dk + i_h * K, d_k, start, n, H * K, 0, K, BT, BK)
    ck = tl.arange(0, BK)
    last = tl.sum(kc * d_k, 0) + tl.exp(G_last) * s_ds
    tl.store(dlast + (c * H + i_h) * K + ck, last, mask=ck < K)


@triton.jit
def gla_intra_bwd_kernel(q, k, Gc, dP, dq, dk, dlast, dg, cu_seqlens, chunk_indices,
                         chunk_offsets, scale, H, K, BT: tl.constexpr, BC: tl.constexpr,
                         BK: tl.constexpr, PREC: tl.constexpr):
    """gla, one program per (chunk, head): adds dq_t += sum_s dP_ts k_s exp(G_t - G_s) and
    dk_s += sum_t dP_ts q_t exp(G_t - G_s) to the state terms in dq, dk (in place), then
    dG = q dq - k dk (+ dlast at the chunk's end) and dg = its reverse cumsum."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, n, i_n, i_j = _chunk_rows(cu_seqlens, chunk_indices, i_c, BT)
    c = tl.load(chunk_offsets + i_n).to(tl.int64) + i_j
    NC: tl.constexpr = BT // BC
    rc = tl.arange(0, BC)
    ck = tl.arange(0, BK)
    # dq, by query sub-chunk i
    for i in tl.static_range(NC):
        G_i = _sub_rows(Gc, start, n, i_h, H, K, i, BC, BK)
        acc = tl.zeros([BC, BK], dtype=tl.float32)
        if i > 0:
            b = _boundary(Gc, start, n, i_h, H, K, i, BC, BK)
            off = tl.zeros([BC, BK], dtype=tl.float32)
            for j in tl.static_range(i):
                k_j = _sub_rows(k, start, n, i_h, H, K, j, BC, BK)
                G_j = _sub_rows(Gc, start, n, i_h, H, K, j, BC, BK)
                dp = _load_rows(dP + i_h * BT, start + i * BC, n - i * BC, H * BT, j * BC, BT, BC, BC)
                off += _dot(dp, k_j * tl.exp(b[None, :] - G_j), PREC)
            acc += off * tl.exp(G_i - b[None, :])
        for s in range(0, BC):
            row = start + i * BC + s
            ok = (i * BC + s) < n
            k_s = tl.load(k + row * H * K + i_h * K + ck, mask=ck < tl.where(ok, K, 0), other=0.0).to(tl.float32)
            G_s = tl.load(Gc + row * H * K + i_h * K + ck, mask=ck < tl.where(ok, K, 0), other=0.0)
            dp_s = tl.load(dP + (start + i * BC + rc) * H * BT + i_h * BT + i * BC + s,
                           mask=(i * BC + rc) < n, other=0.0)
            expo = tl.where(rc[:, None] >= s, G_i - G_s[None, :], float("-inf"))
            acc += dp_s[:, None] * k_s[None, :] * tl.exp(expo)
        prev = _sub_rows(dq, start, n, i_h, H, K, i, BC, BK)
        _store_rows(dq + i_h * K, prev + acc, start + i * BC, n - i * BC, H * K, 0, K, BC, BK)
    # dk, by key sub-chunk j
    for j in tl.static_range(NC):
        G_j = _sub_rows(Gc, start, n, i_h, H, K, j, BC, BK)
        acc = tl.zeros([BC, BK], dtype=tl.float32)
        for i in tl.static_range(j + 1, NC):
            b = _boundary(Gc, start, n, i_h, H, K, i, BC, BK)
            q_i = _sub_rows(q, start, n, i_h, H, K, i, BC, BK) * scale
            G_i = _sub_rows(Gc, start, n, i_h, H, K, i, BC, BK)
            dp = _load_rows(dP + i_h * BT, start + i * BC, n - i * BC, H * BT, j * BC, BT, BC, BC)
            acc += _dot(tl.trans(dp), q_i * tl.exp(G_i - b[None, :]), PREC) * tl.exp(b[None, :] - G_j)
        for t in range(0, BC):
            row = start + j * BC + t
            ok = (j * BC + t) < n
            q_t = tl.load(q + row * H * K + i_h * K + ck, mask=ck < tl.where(ok, K, 0), other=0.0).to(tl.float32) * scale
            G_t = tl.load(Gc + row * H * K + i_h * K + ck, mask=ck < tl.where(ok, K, 0), other=0.0)
            dp_t = tl.load(dP + row * H * BT + i_h * BT + j * BC + rc, mask=rc < tl.where(ok, BC, 0), other=0.0)
            expo = tl.where(rc[:, None] <= t, G_t[None, :] - G_j, float("-inf"))
            acc += dp_t[:, None] * q_t[None, :] * tl.exp(expo)
        prev = _sub_rows(dk, start, n, i_h, H, K, j, BC, BK)
        _store_rows(dk + i_h * K, prev + acc, start + j * BC, n - j * BC, H * K, 0, K, BC, BK)
    # dG = q dq - k dk per key channel, dlast at the end; dg = reverse cumsum within the chunk
    tl.debug_barrier()  # the rows of dq, dk stored above are read back by other threads
    qc = _load_rows(q + i_h * K, start, n, H * K, 0, K, BT, BK) * scale
    kc = _load_rows(k + i_h * K, start, n, H * K, 0, K, BT, BK)
    d_q = _load_rows(dq + i_h * K, start, n, H * K, 0, K, BT, BK)
    d_k = _load_rows(dk + i_h * K, start, n, H * K, 0, K, BT, BK)
    last = tl.load(dlast + (c * H + i_h) * K + ck, mask=ck < K, other=0.0)
    r = tl.arange(0, BT)
    d_G = qc * d_q - kc * d_k + tl.where(r[:, None] == BT - 1, last[None, :], 0.0)
    _store_rows(dg + i_h * K, tl.cumsum(d_G, 0, reverse=True), start, n, H * K, 0, K, BT, BK)
    _store_rows(dq + i_h * K, d_q * scale, start, n, H * K, 0, K, BT, BK)
