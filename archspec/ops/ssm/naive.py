"""The SSMs' plain recurrent forms: a Python loop over time, one step per token. The ground
truth the fast forms (selective_scan.py, ssd.py) are tested against and, one step at a time,
the decoding form. Computed in float32 (float64 stays float64).

Mamba1's selective scan, a diagonal recurrence per (channel, state):
    u, dt: [B, T, E];  A: [E, N];  Bm, Cm: [B, T, N];  D: [E] or None;  h: [B, E, N]
    h_t = exp(dt_t A) * h_{t-1} + (dt_t u_t) Bm_t;   y_t = h_t Cm_t + D u_t
Mamba2's SSD, one scalar decay per head:
    x: [B, T, H, P];  dt: [B, T, H];  A: [H];  Bm, Cm: [B, T, G, N] (head h reads group
    h // (H / G));  D: [H] or None;  h: [B, H, P, N]
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t Bm_t^T;     y_t = h_t Cm_t + D x_t

The decoding steps' FLOPs are in costs.py.
"""
from __future__ import annotations

import torch

from .common import compute_dtype


# --- Mamba1: the selective scan ----------------------------------------------------------------

def selective_scan_step(state, u_t, dt_t, A, B_t, C_t, D=None):
    """One token. state [B, E, N]; u_t, dt_t [B, E]; A [E, N]; B_t, C_t [B, N]; D [E] or None.
    Returns (y_t [B, E], new state), both in the state's dtype (float32 in decoding)."""
    dtype = state.dtype
    u_t, dt_t, A, B_t, C_t = (t.to(dtype) for t in (u_t, dt_t, A, B_t, C_t))
    decay = torch.exp(dt_t[:, :, None] * A)
    state = decay * state + (dt_t * u_t)[:, :, None] * B_t[:, None, :]
    y = (state * C_t[:, None, :]).sum(-1)
    if D is not None:
        y = y + D.to(dtype) * u_t
    return y, state


def selective_scan_recurrent(u, dt, A, B, C, D=None, initial_state=None):
    """The plain loop over time (the ground truth). Shapes as in the module docstring.
    Returns (y [B, T, E], final state [B, E, N]) in float32 (float64 for float64 inputs)."""
    dtype = compute_dtype(u, dt, A, B, C)
    b, t, e = u.shape
    state = (torch.zeros(b, e, A.shape[-1], dtype=dtype, device=u.device) if initial_state is None
             else initial_state.to(dtype))
    ys = []
    for i in range(t):
        y, state = selective_scan_step(state, u[:, i], dt[:, i], A, B[:, i], C[:, i], D)
        ys.append(y)
    return torch.stack(ys, dim=1), state


# --- Mamba2: the SSD ---------------------------------------------------------------------------

def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, G, N] -> [B, H, N]: head h reads group h // (H / G)."""
    return t.repeat_interleave(heads // t.shape[1], dim=1)


def ssd_step(state, x_t, dt_t, A, B_t, C_t, D=None):
    """One token. state [B, H, P, N]; x_t [B, H, P]; dt_t [B, H]; A [H]; B_t, C_t [B, G, N];
    D [H] or None. Returns (y_t [B, H, P], new state) in the state's dtype."""
    dtype = state.dtype
    heads = state.shape[1]
    x_t, dt_t, A = x_t.to(dtype), dt_t.to(dtype), A.to(dtype)
    b_h, c_h = _per_head(B_t.to(dtype), heads), _per_head(C_t.to(dtype), heads)
    decay = torch.exp(dt_t * A)[:, :, None, None]
    state = decay * state + (dt_t[:, :, None] * x_t)[..., None] * b_h[:, :, None, :]
    y = (state * c_h[:, :, None, :]).sum(-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * x_t
    return y, state


def ssd_recurrent(x, dt, A, B, C, D=None, initial_state=None):
    """The plain loop over time (the ground truth). Returns (y [B, T, H, P], final state
    [B, H, P, N]) in float32 (float64 for float64 inputs)."""
    dtype = compute_dtype(x, dt, A, B, C)
    b, t, h, p = x.shape
    state = (torch.zeros(b, h, p, B.shape[-1], dtype=dtype, device=x.device)
             if initial_state is None else initial_state.to(dtype))
    ys = []
    for i in range(t):
        y, state = ssd_step(state, x[:, i], dt[:, i], A, B[:, i], C[:, i], D)
        ys.append(y)
    return torch.stack(ys, dim=1), state
