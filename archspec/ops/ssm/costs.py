"""What the SSM forms cost, without torch (the mamba and mamba2 components' accounting).

Mamba1's parallel scan (selective_scan.py), per sequence (1 FLOP = one multiply or one add;
exp = 1), `selective_scan_flops`:
  matmul: the contraction y_t = h_t Cm_t is a batched matmul, 2 T E N;
  other:  per (token, channel, state): 2 for a_t (dt*A, exp) + 1 for b_t (dt u times Bm), plus
          `linear_scan_flops(L)` per chunk of L tokens (~5 per token) and 2 per chunk to feed
          the entering state in; per (token, channel): 1 for dt*u, 2 for D u + y.
  That is ~8 elementwise + 2 matmul = ~10 per (token, channel, state), against the authors'
  estimate of 9 B L E N for their fused sequential CUDA scan (which does the recurrence in 2
  per element where the parallel scan here does ~5). The decoding step (naive.py) costs
  2 (a_t) + 1 (b_t) + 2 (update) + 2 (contraction) = 7 per (channel, state), plus 3 per
  channel (dt u, D u + y).

Mamba2's chunked SSD (ssd.py), per sequence, `ssd_flops`, with Q = min(chunk_size, T),
c = ceil(T / Q) chunks and the padded length Tp = c Q:
  matmul: 2 c G Q^2 N (Cm Bm^T) + 2 c H Q^2 P (diagonal blocks) + 2 c H Q P N (chunk states)
          + 2 H (c+1)^2 P N (state passing) + 2 c H Q N P (state -> output);
  other:  dt x: Tp H P;  l = dt A: Tp H;  running sums: c H (Q-1) + H (c-1);
          segment decays: 2 c H Q^2 (subtract, exp) and 2 H (c+1)^2;  the mask product: c H Q^2;
          decay to the chunk end: 2 c H Q, applied: c H Q P;  decay from the chunk start:
          c H Q (exp), applied: c H Q P;  Y_diag + Y_off: c H Q P;  D x + y: 2 T H P.
The decoding step (naive.py) costs 5 per (head, P, N) element (decay product, dt x Bm outer,
update, contraction with Cm: multiply and sum), 3 per (head, P) (dt x, D x + y) and 2 per head.
"""
from __future__ import annotations

from ...costs import Flops

SCAN_CHUNK = 128  # tokens per chunk of the parallel scan (memory and speed only; same result)


def scan_chunks(seq_len: int, chunk: int) -> list[tuple[int, int]]:
    """(start, stop) of the parallel scan's chunks of `chunk` tokens (the last one shorter)."""
    return [(s, min(s + chunk, seq_len)) for s in range(0, seq_len, chunk)]


def linear_scan_flops(n: int) -> Flops:
    """FLOPs of `linear_scan` on length n, per trailing element (mirrors the code)."""
    if n <= 1:
        return Flops()
    m = n // 2
    return Flops(other=3 * m + 2 * (m - 1) + 2 * (n % 2)) + linear_scan_flops(m)


def selective_scan_flops(seq_len: int, channels: int, d_state: int, has_d: bool,
                         chunk: int = SCAN_CHUNK) -> Flops:
    """FLOPs of `selective_scan` on one sequence (module docstring)."""
    t, e, n = seq_len, channels, d_state

    def per_chunk(length: int) -> int:
        return e * n * (3 * length + 2 + linear_scan_flops(length).other) + e * length

    # every chunk is `chunk` long but the last: two terms, not one per chunk (T / 128 of them at
    # a long context); scan_chunks lists the same chunks for the forward
    full, tail = divmod(t, chunk)
    other = full * per_chunk(chunk) + (per_chunk(tail) if tail else 0)
    if has_d:
        other += 2 * t * e
    return Flops(matmul=2 * t * e * n, other=other)


def ssd_flops(seq_len: int, heads: int, headdim: int, groups: int, d_state: int,
              chunk_size: int, has_d: bool = True) -> Flops:
    """FLOPs of `ssd_chunked` on one sequence (module docstring)."""
    t, h, p, g, n = seq_len, heads, headdim, groups, d_state
    q = min(chunk_size, t)
    c = -(-t // q)
    tp = c * q
    matmul = (2 * c * g * q * q * n + 2 * c * h * q * q * p + 2 * c * h * q * p * n
              + 2 * h * (c + 1) ** 2 * p * n + 2 * c * h * q * n * p)
    other = (tp * h * p + tp * h                      # dt x, dt A
             + c * h * (q - 1) + h * (c - 1)          # running sums
             + 2 * c * h * q * q + 2 * h * (c + 1) ** 2  # segment decays: subtract, exp
             + c * h * q * q                          # Lmat o Cm Bm^T
             + 2 * c * h * q + c * h * q * p          # decay to the chunk end, applied
             + c * h * q + c * h * q * p              # decay from the chunk start, applied
             + c * h * q * p)                         # Y_diag + Y_off
    if has_d:
        other += 2 * t * h * p
    return Flops(matmul=matmul, other=other)
