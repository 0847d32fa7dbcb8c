"""Linear-attention recurrences (the memories of MoM, GatedDeltaNet, GLA), fla-like API.

    q, k: [B, T, H, K];  v: [B, T, H, V];  o: [B, T, H, V] (v's dtype)
    g: log-space decay <= 0: gated_delta [B, T, H] (one per head), gla [B, T, H, K] (one per key
       channel), delta / linear: None.   beta: [B, T, H] in (0, 1), delta / gated_delta only.
    state S: [N, H, K, V], float32 (float64 for float64 inputs); N = B, or the number of packed
    sequences with cu_seqlens (int64 [N + 1] offsets, B = 1, sequences independent, any length >= 0).

    linear:       S_t = S_{t-1} + k_t v_t^T
    gla:          S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T
    delta:        S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T
    gated_delta:  S'_t = exp(g_t) S_{t-1};  S_t = S'_t + beta_t k_t (v_t - S'_t^T k_t)^T
    o_t = scale * S_t^T q_t  (current token included; scale defaults to K ** -0.5; q and k are
    used as given: callers l2-normalise them for the delta rules)

    recurrent_rule(rule, q, k, v, *, g, beta, scale, initial_state, output_final_state, cu_seqlens)
    chunk_rule(..., chunk_size=64)          -> (o, final state or None)
    recurrent_step(rule, q_t, k_t, v_t, state, *, g_t, beta_t, scale) -> (o_t, new state)

recurrent_rule is a token loop (naive.py: reference, decoding); chunk_rule is the training form
(chunk.py: matmuls over all chunks at once, one state step per chunk index).

FLOPs (1 FLOP = one multiply or one add; per head). `matmul` is exactly what torch's
FlopCounterMode counts (with archspec.flopcount.flopcounter_mapping(), which adds the triangular
solve), including the padding of each sequence to a multiple of C; n_c = sum_i ceil(L_i / C):
    chunk, linear / gla:       n_c * (2C^2 (K + V) + 4CKV)
        q k^T and P V per chunk; k^T v (the chunk's write) and q S (the state's read).
    chunk, delta / gated_delta: n_c * (4C^2 K + 2C^2 V + C(C-1)(K + V) + 6CKV)
        k k^T, q k^T, P U; the unit-triangular solve with K + V right-hand sides; W S, k^T U, q S.
    recurrent: T * 2KV (linear / gla: S^T q) or T * 4KV (delta rules: S^T k as well).
`other` is an estimate of the elementwise work, counting what the code does (an exp, multiply,
add or subtract is 1 per element, a cumsum or sum 1 per input element; masks, copies, padding 0),
per chunk and head, C = chunk_size, c = gcd(C, 8), n = C / c:
    linear:       CK + CV + KV          (scale q; add the two output terms; state add)
    gla:          13CK + 6CcK + 3nCK + 2n^2 K + K + CV + 2KV   (cumsums and exps of the decays
                  and the factored q / k; 6 per element of the pairwise diagonal blocks; 3 per
                  element of the per-block key factors; decay and add of the state)
    delta:        C^2 + 2CK + 3CV + KV  (scale q, beta A, beta [V | K], U - W S, output add, state)
    gated_delta:  delta + 5C^2 + 3CK + 4C + KV + 1  (pairwise decays and their use on k k^T and
                  q k^T, decays from the start / to the end and their use, the state's decay)
and per token and head for the recurrent form: linear K + 2KV; gla 2K + 3KV; delta K + 2V + 2KV;
gated_delta 1 + K + 2V + 3KV (scale q, decay, error and beta, outer product, add).
"""
from __future__ import annotations

import math

from ...costs import Flops

from .chunk import SUB_CHUNK, chunk_rule
from .common import RULES, WITH_BETA
from .naive import recurrent_rule, recurrent_step

__all__ = ["RULES", "chunk_rule", "recurrent_rule", "recurrent_step", "chunk_flops",
           "recurrent_flops", "state_elements"]


def _known(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown linear-attention rule {rule!r}; expected one of {RULES}")


def state_elements(rule: str, n_heads: int, k_dim: int, v_dim: int) -> int:
    """Elements of one sequence's recurrent state (the decoding cache): H K V for every rule."""
    _known(rule)
    return n_heads * k_dim * v_dim


def chunk_flops(rule: str, seq_lens: list[int], n_heads: int, k_dim: int, v_dim: int,
                chunk_size: int) -> Flops:
    """Forward FLOPs of chunk_rule over sequences of these lengths (module docstring)."""
    _known(rule)
    c, k, v = chunk_size, k_dim, v_dim
    n_chunks = sum(-(-length // c) for length in seq_lens)
    if rule in WITH_BETA:
        matmul = 4 * c * c * k + 2 * c * c * v + c * (c - 1) * (k + v) + 6 * c * k * v
        other = c * c + 2 * c * k + 3 * c * v + k * v
        if rule == "gated_delta":
            other += 5 * c * c + 3 * c * k + 4 * c + k * v + 1
    elif rule == "gla":
        matmul = 2 * c * c * (k + v) + 4 * c * k * v
        sub = math.gcd(c, SUB_CHUNK)
        n = c // sub
        other = 13 * c * k + 6 * c * sub * k + 3 * n * c * k + 2 * n * n * k + k + c * v + 2 * k * v
    else:
        matmul = 2 * c * c * (k + v) + 4 * c * k * v
        other = c * k + c * v + k * v
    return Flops(matmul=n_heads * n_chunks * matmul, attention=0, other=n_heads * n_chunks * other)


def recurrent_flops(rule: str, seq_lens: list[int], n_heads: int, k_dim: int, v_dim: int) -> Flops:
    """Forward FLOPs of recurrent_rule (or as many recurrent_step calls) over these lengths."""
    _known(rule)
    k, v = k_dim, v_dim
    tokens = sum(seq_lens)
    matmul = (4 if rule in WITH_BETA else 2) * k * v
    other = {"linear": k + 2 * k * v, "gla": 2 * k + 3 * k * v, "delta": k + 2 * v + 2 * k * v,
             "gated_delta": 1 + k + 2 * v + 3 * k * v}[rule]
    return Flops(matmul=n_heads * tokens * matmul, attention=0, other=n_heads * tokens * other)

