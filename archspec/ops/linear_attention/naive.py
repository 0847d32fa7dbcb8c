"""Plain recurrent form of the linear-attention rules: the ground truth, and the decoding step.

    q_t, k_t: [N, H, K];  v_t: [N, H, V];  state S: [N, H, K, V]
    linear:       S_t = S_{t-1} + k_t v_t^T
    gla:          S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T              g_t: [N, H, K]
    delta:        S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T    beta_t: [N, H]
    gated_delta:  S'_t = exp(g_t) S_{t-1};  S_t = S'_t + beta_t k_t (v_t - S'_t^T k_t)^T   g_t: [N, H]
    o_t = scale * S_t^T q_t   (the current token included)

One Python step per token: O(T) small ops, fine for decoding and as a reference, far too slow
for training lengths (use chunk.py). The contractions S^T q and S^T k are matmuls (FlopCounterMode
counts them, 2KV FLOPs each per token and head); the outer product k u^T and the decays are
elementwise broadcasts, so that FlopCounterMode counts only true contractions.
"""
from __future__ import annotations

import torch

from .common import check_inputs, check_offsets, check_rule_arguments, compute_dtype, resolve_scale


def _step(rule: str, q, k, v, s, g, beta):
    """One step in the compute dtype; q already scaled. Returns (o [N, H, V], new state)."""
    if rule == "gla":
        s = s * g.exp()[..., None]
    elif rule == "gated_delta":
        s = s * g.exp()[..., None, None]
    if rule in ("delta", "gated_delta"):
        # the value the state already predicts for this key; only the error is written
        predicted = (k[..., None, :] @ s).squeeze(-2)
        v = beta[..., None] * (v - predicted)
    s = s + k[..., :, None] * v[..., None, :]
    return (q[..., None, :] @ s).squeeze(-2), s


def recurrent_step(rule: str, q_t, k_t, v_t, state, *, g_t=None, beta_t=None, scale=None):
    """One decoding step for N sequences: q_t, k_t [N, H, K], v_t [N, H, V], state [N, H, K, V]
    (None = zeros), g_t [N, H] (gated_delta) or [N, H, K] (gla), beta_t [N, H].
    Returns (o_t [N, H, V] in v_t's dtype, new state in float32, float64 for float64 inputs)."""
    check_rule_arguments(rule, g_t, beta_t)
    if q_t.dim() != 3 or k_t.shape != q_t.shape or v_t.dim() != 3 or v_t.shape[:2] != q_t.shape[:2]:
        raise ValueError("recurrent_step needs q_t, k_t [N, H, K] and v_t [N, H, V], got "
                         f"{tuple(q_t.shape)}, {tuple(k_t.shape)}, {tuple(v_t.shape)}")
    n, h, k_dim = q_t.shape
    expected_g = (n, h, k_dim) if rule == "gla" else (n, h)
    if g_t is not None and tuple(g_t.shape) != expected_g:
        raise ValueError(f"g_t must have shape {expected_g} for rule {rule!r}, got {tuple(g_t.shape)}")
    if beta_t is not None and tuple(beta_t.shape) != (n, h):
        raise ValueError(f"beta_t must have shape {(n, h)}, got {tuple(beta_t.shape)}")
    if state is not None and tuple(state.shape) != (n, h, k_dim, v_t.shape[-1]):
        raise ValueError(f"state must have shape {(n, h, k_dim, v_t.shape[-1])}, got {tuple(state.shape)}")
    dtype = compute_dtype(q_t, k_t, v_t, g_t, beta_t, state)
    if state is None:
        state = q_t.new_zeros(n, h, k_dim, v_t.shape[-1], dtype=dtype)
    cast = (lambda x: None if x is None else x.to(dtype))
    o, s = _step(rule, q_t.to(dtype) * resolve_scale(scale, k_dim), k_t.to(dtype), v_t.to(dtype),
                 state.to(dtype), cast(g_t), cast(beta_t))
    return o.to(v_t.dtype), s


def _scan(rule, q, k, v, g, beta, s):
    """Run the recurrence over dim 1 of [N, T, H, *] tensors (compute dtype, q scaled)."""
    outs = []
    for t in range(q.shape[1]):
        o, s = _step(rule, q[:, t], k[:, t], v[:, t], s,
                     None if g is None else g[:, t], None if beta is None else beta[:, t])
        outs.append(o)
    o = torch.stack(outs, 1) if outs else v.new_zeros(v.shape)
    return o, s


def recurrent_rule(rule: str, q, k, v, *, g=None, beta=None, scale=None, initial_state=None,
                   output_final_state=False, cu_seqlens=None):
    """The reference: a token-by-token loop. Shapes and semantics as `chunk_rule`
    (archspec/ops/linear_attention/__init__.py). Returns (o [B, T, H, V], final state or None)."""
    n = check_inputs(rule, q, k, v, g, beta, initial_state, cu_seqlens)
    _, t, h, k_dim = q.shape
    dtype = compute_dtype(q, k, v, g, beta, initial_state)
    cast = (lambda x: None if x is None else x.to(dtype))
    out_dtype = v.dtype
    q, k, v, g, beta = cast(q) * resolve_scale(scale, k_dim), cast(k), cast(v), cast(g), cast(beta)
    s0 = (q.new_zeros(n, h, k_dim, v.shape[-1]) if initial_state is None else cast(initial_state))
    if cu_seqlens is None:
        o, s = _scan(rule, q, k, v, g, beta, s0)
        finals = s
    else:
        offsets = cu_seqlens.tolist()
        check_offsets(offsets, t)
        outs, states = [], []
        for i, (bos, eos) in enumerate(zip(offsets, offsets[1:])):
            piece = (lambda x: None if x is None else x[:, bos:eos])
            o_i, s_i = _scan(rule, piece(q), piece(k), piece(v), piece(g), piece(beta), s0[i:i + 1])
            outs.append(o_i)
            states.append(s_i)
        o = torch.cat(outs, 1) if outs else v.new_zeros(v.shape)
        finals = torch.cat(states) if states else s0
    return o.to(out_dtype), (finals if output_final_state else None)
