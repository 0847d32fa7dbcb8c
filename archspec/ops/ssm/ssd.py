"""Mamba2's SSD (state space duality): a linear recurrence whose decay is one scalar per head.

    x: [B, T, H, P];  dt: [B, T, H] (> 0, after softplus);  A: [H] (negative);
    Bm, Cm: [B, T, G, N] (head h reads group h // (H / G));  D: [H] or None
    h: [B, H, P, N], h_{-1} = initial state (default 0)

    h_t = exp(dt_t A) h_t-1 + dt_t x_t Bm_t^T        (outer product over P and N)
    y_t = h_t Cm_t + D x_t                           [B, T, H, P]

Returns y and the final state. Computed in float32 (float64 stays float64).

Forms:
  * `ssd_recurrent` (naive.py): a Python loop of `ssd_step` over time: the ground truth in
    tests and, one step at a time, the decoding form.
  * `ssd_chunked`: the training path, the chunked form of the SSD paper. T is padded with zeros
    to c chunks of Q tokens (Q = min(chunk_size, T)); padded steps have dt = 0, so they neither
    decay the state nor add to it. With log-decays l_t = dt_t A and their running sum s within
    each chunk:
      1. diagonal blocks:  Y_diag = (Cm Bm^T  o  Lmat) (dt x),  Lmat[i, j] = exp(s_i - s_j), j <= i
      2. chunk states:     S_k = sum_j exp(s_last - s_j) dt_j x_j Bm_j^T
      3. state passing:    the state entering chunk z is sum_{w <= z} exp(Sc_z - Sc_w) S'_w over
                           S' = (initial state, S_0, ..., S_c-1), Sc the running sum of chunk
                           totals: one [c+1, c+1] matmul per head, whose last row is the final state
      4. state -> output:  Y_off_i = exp(s_i) Cm_i (state entering the chunk)
    Every exponent is a segment sum s_i - s_j with i >= j, formed as a difference of running
    sums and masked to -inf above the diagonal *before* exp: all exponents are <= 0 for any
    decay, so nothing overflows and masked entries have zero gradient (no inf * 0). The running
    sums and their differences are formed in float64 and cast back before exp: in float32 the
    difference of two running sums keeps only |s| 2^-24 of absolute accuracy, and |s| reaches
    hundreds within a 256-token chunk of a strongly decaying head (measured: 7.6e-6 relative
    error against 2e-7 for the recurrent form; with float64 sums, 2e-7 as well).

FLOPs: `ssd_flops` (costs.py).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import compute_dtype

# --- the recurrent form ----------------------------------------------------------------------

# --- the chunked form ------------------------------------------------------------------------

def _segment_decays(running: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[..., Q] running sums s (float64) -> [..., Q, Q] in `dtype` holding exp(s_i - s_j) for
    j <= i and 0 above the diagonal. The difference is masked to -inf before exp, so no exponent
    is ever positive; it is formed in float64 because s_i - s_j of two float32 running sums
    keeps only |s| * 2^-24 of absolute accuracy (|s| reaches hundreds in a 256-token chunk
    with strong decay), and that error becomes the relative error of the decay."""
    q = running.shape[-1]
    lower = torch.ones(q, q, dtype=torch.bool, device=running.device).tril()
    diff = (running[..., :, None] - running[..., None, :]).to(dtype)
    return torch.exp(diff.masked_fill(~lower, -math.inf))


def ssd_chunked(x, dt, A, B, C, chunk_size: int, D=None, initial_state=None):
    """The training path (see the module docstring). Returns (y [B, T, H, P], final state
    [B, H, P, N]) in float32 (float64 for float64 inputs); differentiable in every tensor."""
    dtype = compute_dtype(x, dt, A, B, C)
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
    b, t, h, p = x.shape
    g, n = B.shape[-2:]
    hg = h // g
    q = min(chunk_size, t)
    c = -(-t // q)
    pad = c * q - t
    x_in = x
    if pad:  # zero steps: dt = 0 means no decay and no input
        x, dt, B, C = (nn.functional.pad(v, (0, 0) * (v.dim() - 2) + (0, pad)) for v in (x, dt, B, C))
    h0 = (torch.zeros(b, h, p, n, dtype=dtype, device=x.device) if initial_state is None
          else initial_state.to(dtype))

    # chunk-major layouts, made contiguous once so that no matmul copies its operands again
    xdt = (x * dt[..., None]).view(b, c, q, h, p).transpose(2, 3).contiguous()  # [b, c, H, Q, P]
    log_decay = (dt * A).view(b, c, q, h).transpose(2, 3)                   # [b, c, H, Q]
    s = torch.cumsum(log_decay.double(), dim=-1)                            # running sums, float64
    c_chunks = C.view(b, c, q, g, n).transpose(2, 3).contiguous()           # [b, c, G, Q, N]
    b_chunks = B.view(b, c, q, g, n).transpose(2, 3).contiguous()

    # 1. within each chunk: (Cm Bm^T o Lmat) (dt x)
    scores = torch.matmul(c_chunks, b_chunks.transpose(-1, -2))              # [b, c, G, Q, Q]
    mixing = (_segment_decays(s, dtype).view(b, c, g, hg, q, q) * scores[:, :, :, None]).view(b, c, h, q, q)
    y = torch.matmul(mixing, xdt)                                           # [b, c, H, Q, P]

    # 2. each chunk's own final state, from zero: sum_j exp(s_last - s_j) dt_j x_j Bm_j^T
    to_end = torch.exp((s[..., -1:] - s).to(dtype))                         # [b, c, H, Q]
    weighted = (xdt * to_end[..., None]).view(b, c, g, hg, q, p)
    weighted = weighted.transpose(-1, -2).reshape(b, c, g, hg * p, q)
    local = torch.matmul(weighted, b_chunks).view(b, c, h, p, n)             # [b, c, H, P, N]

    # 3. states entering each chunk (and the final one): one [c+1, c+1] mix per head
    totals = torch.cumsum(s[..., -1], dim=1)                                # [b, c, H]
    chunk_sums = torch.cat([torch.zeros_like(totals[:, :1]), totals], dim=1).transpose(1, 2)
    states = torch.cat([h0[:, None], local], dim=1)                         # [b, c+1, H, P, N]
    states = states.permute(0, 2, 1, 3, 4).reshape(b, h, c + 1, p * n)
    entering = torch.matmul(_segment_decays(chunk_sums, dtype), states).view(b, h, c + 1, p, n)
    final = entering[:, :, c]

    # 4. the entering state's contribution exp(s_i) Cm_i state, kept in the matmul's layout
    prev = entering[:, :, :c].permute(0, 2, 1, 4, 3).reshape(b, c, g, hg, n, p)
    prev = prev.permute(0, 1, 2, 4, 3, 5).reshape(b, c, g, n, hg * p)
    from_state = torch.matmul(c_chunks, prev).view(b, c, g, q, hg, p)         # [b, c, G, Q, Hg, P]
    from_start = torch.exp(s.to(dtype)).view(b, c, g, hg, q).transpose(3, 4)[..., None]
    y = y.view(b, c, g, hg, q, p) + (from_state * from_start).permute(0, 1, 2, 4, 3, 5)

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * q, h, p)[:, :t]
    if D is not None:
        y = y + x_in * D.to(dtype)[:, None]
    return y, final
