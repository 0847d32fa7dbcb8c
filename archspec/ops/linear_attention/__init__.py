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

recurrent_rule is a token loop (naive.py: the ground truth, and decoding); chunk_rule is the
training form (chunk.py: matmuls over all chunks at once, one state step per chunk index);
triton_chunk_rule is chunk_rule's API as Triton kernels (triton_chunk.py: custom ops running
triton_kernels.py). common.py checks the arguments; costs.py (torch-free) holds the FLOPs of
each form, the state size and the kernels' range (`kernels_unsupported`).

Importing this package imports neither torch nor triton: the costs are loaded with it, every
other name on first use.
"""
from __future__ import annotations

from ...lazy import lazy_exports
from .costs import (CHUNK_SIZES, GATE_DTYPE_NAMES, KERNEL_DTYPE_NAMES, KERNEL_RULES,
                    MAX_HEAD_DIM, RULES, WITH_BETA, chunk_flops, kernels_unsupported, recurrent_flops,
                    state_elements)

_LAZY = {
    ".naive": ["recurrent_rule", "recurrent_step"],
    ".chunk": ["chunk_rule"],
    ".triton_chunk": ["triton_chunk_rule", "kernel_launches", "gate_launches"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = ["CHUNK_SIZES", "GATE_DTYPE_NAMES", "KERNEL_DTYPE_NAMES", "KERNEL_RULES", "MAX_HEAD_DIM",
           "RULES", "WITH_BETA", "chunk_flops", "kernels_unsupported", "recurrent_flops",
           "state_elements"]
__all__ += [name for names in _LAZY.values() for name in names]
