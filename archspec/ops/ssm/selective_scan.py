"""Mamba1's selective scan: a diagonal linear recurrence per (channel, state) pair.

    u, dt: [B, T, E] (dt > 0, already through softplus);  A: [E, N] (negative);
    Bm, Cm: [B, T, N];  D: [E] or None;  h: [B, E, N], h_{-1} = initial state (default 0)

    a_t = exp(dt_t A)                       [B, E, N]  decay, in (0, 1]
    h_t = a_t * h_{t-1} + (dt_t u_t) Bm_t    [B, E, N]  (outer product over E and N)
    y_t = h_t Cm_t + D u_t                  [B, E]     (contraction over N)

Returns y [B, T, E] and the final state h_{T-1}. Computed in float32 (float64 stays float64).

Forms:
  * `selective_scan_recurrent` (naive.py): a Python loop of `selective_scan_step` over time.
    The ground truth in tests, and (one step at a time) the decoding form.
  * `selective_scan`: the training path. The per-(channel, state) decays do not factor into
    matmuls, so h_t = a_t h_{t-1} + b_t is solved by a parallel linear scan: the sequence is cut
    into chunks of `chunk` tokens (the state crosses chunk boundaries, so working memory is
    O(chunk E N) whatever T), and inside a chunk a recursive odd/even scan (`linear_scan`):
    combine neighbouring pairs (a2, b2) = (a_odd a_even, a_odd b_even + b_odd), scan the
    half-length sequence, then fill the even positions from the odd ones; depth log2(chunk),
    about 5 FLOPs per element (work-efficient). Only products of decays in (0, 1] and sums of
    inputs appear: no exponential of a positive number, no division, whatever dt and A are.
    It runs inside a torch.autograd.Function whose backward is the reverse scan
    g_t = Cm_t dy_t + a_{t+1} g_{t+1}, chunk by chunk from the last, recomputing each chunk's
    states from the saved chunk-entry states: the saved tensors are the inputs plus one
    [B, E, N] state per chunk, never the [B, T, E, N] states.

FLOPs: `selective_scan_flops` (costs.py).
"""
from __future__ import annotations

import torch

from .common import compute_dtype
from .costs import SCAN_CHUNK, scan_chunks


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t along dim 1 with h_{-1} = 0 (fold a nonzero start into b_0).
    a, b: [B, L, ...]. Recursive odd/even scan: depth log2(L), `linear_scan_flops(L)` FLOPs per
    trailing element; a[:, 0] is never needed and only multiplies the zero start."""
    n = a.shape[1]
    if n == 1:
        return b
    m = n // 2
    a_even, a_odd = a[:, 0:2 * m:2], a[:, 1:2 * m:2]
    b_even, b_odd = b[:, 0:2 * m:2], b[:, 1:2 * m:2]
    # (a_odd, b_odd) o (a_even, b_even): one step of the half-length recurrence over pairs
    h_odd = linear_scan(a_odd * a_even, a_odd * b_even + b_odd)  # h at positions 1, 3, ..., 2m-1
    h = torch.empty_like(b)
    h[:, 1:2 * m:2] = h_odd
    h[:, 0] = b[:, 0]
    h[:, 2:2 * m:2] = a_even[:, 1:] * h_odd[:, :-1] + b_even[:, 1:]
    if n % 2:
        h[:, n - 1] = a[:, n - 1] * h_odd[:, m - 1] + b[:, n - 1]
    return h


def _chunk_inputs(u, dt, A, B, start, stop):
    """Decays a [B, L, E, N] and inputs b = (dt u) Bm [B, L, E, N] of tokens start..stop-1."""
    dt_c = dt[:, start:stop]
    decay = torch.exp(dt_c[..., None] * A)
    drive = (dt_c * u[:, start:stop])[..., None] * B[:, start:stop, None, :]
    return decay, drive


class _SelectiveScan(torch.autograd.Function):
    """(u, dt, A, B, C, h0) -> (y without the D term, final state); one dtype throughout."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, chunk: int):
        t = u.shape[1]
        h = h0
        entering, ys = [], []
        for start, stop in scan_chunks(t, chunk):
            entering.append(h)
            decay, drive = _chunk_inputs(u, dt, A, B, start, stop)
            drive[:, 0] += decay[:, 0] * h
            hs = linear_scan(decay, drive)
            ys.append(torch.matmul(hs, C[:, start:stop, :, None]).squeeze(-1))
            h = hs[:, -1].clone()
        ctx.chunk = chunk
        ctx.save_for_backward(u, dt, A, B, C, torch.stack(entering, dim=1))
        return torch.cat(ys, dim=1), h

    @staticmethod
    def backward(ctx, grad_y, grad_h):
        u, dt, A, B, C, entering = ctx.saved_tensors
        t = u.shape[1]
        spans = scan_chunks(t, ctx.chunk)
        du, ddt, dB, dC = [], [], [], []
        dA = torch.zeros_like(A)
        carry = grad_h  # dL/d(state leaving the chunk), through everything after it
        for k in range(len(spans) - 1, -1, -1):
            start, stop = spans[k]
            h_in = entering[:, k]
            decay, drive = _chunk_inputs(u, dt, A, B, start, stop)
            dtu = dt[:, start:stop] * u[:, start:stop]
            drive[:, 0] += decay[:, 0] * h_in
            hs = linear_scan(decay, drive)
            gy = grad_y[:, start:stop]
            # reverse scan g_t = Cm_t gy_t + a_{t+1} g_{t+1}, run forward on the flipped chunk
            direct = gy[..., None] * C[:, start:stop, None, :]
            direct[:, -1] += carry
            rev_decay = torch.cat([torch.zeros_like(decay[:, :1]), decay[:, 1:].flip(1)], dim=1)
            g = linear_scan(rev_decay, direct.flip(1)).flip(1)  # dL/dh_t
            carry = decay[:, 0] * g[:, 0]
            h_prev = torch.cat([h_in[:, None], hs[:, :-1]], dim=1)
            d_log_decay = g * h_prev * decay  # dL/d(dt A)
            g_b = torch.matmul(g, B[:, start:stop, :, None]).squeeze(-1)  # sum_n g Bm: [B, L, E]
            dA = dA + (d_log_decay * dt[:, start:stop, :, None]).sum((0, 1))
            ddt.append((d_log_decay * A).sum(-1) + g_b * u[:, start:stop])
            du.append(g_b * dt[:, start:stop])
            dB.append(torch.matmul(dtu[:, :, None, :], g).squeeze(2))
            dC.append(torch.matmul(gy[:, :, None, :], hs).squeeze(2))
        cat = lambda parts: torch.cat(parts[::-1], dim=1)  # noqa: E731
        return cat(du), cat(ddt), dA, cat(dB), cat(dC), carry, None


def selective_scan(u, dt, A, B, C, D=None, initial_state=None, chunk: int = SCAN_CHUNK):
    """The training path (see the module docstring): y [B, T, E], final state [B, E, N], in
    float32 (float64 for float64 inputs). Differentiable in every tensor argument."""
    dtype = compute_dtype(u, dt, A, B, C)
    b, _, e = u.shape
    h0 = (torch.zeros(b, e, A.shape[-1], dtype=dtype, device=u.device) if initial_state is None
          else initial_state.to(dtype))
    u32 = u.to(dtype)
    y, h = _SelectiveScan.apply(u32, dt.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype), h0, chunk)
    if D is not None:
        y = y + D.to(dtype) * u32
    return y, h
