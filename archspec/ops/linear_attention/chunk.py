"""Chunked form of the linear-attention rules: matmuls inside chunks of C tokens, a short
sequential pass over chunk boundaries. Same results as naive.py (up to rounding).

    q, k: [B, T, H, K];  v: [B, T, H, V];  S: [N, H, K, V];  C = chunk_size
    Per chunk (rows t, s = 0..C-1 inside it; S_0 = the state entering it; G_t = sum_{r<=t} g_r,
    the decay accumulated inside the chunk; "G_t - G_s" stands for sum_{s<r<=t} g_r <= 0):

    linear / gla (additive writes):
        P[t, s]  = sum_k q_tk k_sk exp(G_tk - G_sk)  (s <= t, else 0)
        O        = (q * exp(G)) S_0 + P V
        S_C      = exp(G_C) * S_0 + (k * exp(G_C - G))^T V
    delta / gated_delta (WY form; one scalar G per head, 0 for delta):
        A[t, s]  = beta_t (k_t . k_s) exp(G_t - G_s)  (s < t, else 0)
        (I + A) [U | W] = [beta V | beta exp(G) k]        (unit lower-triangular solve)
        U~       = U - W S_0          (beta times the prediction errors v_t - S'_t^T k_t)
        O        = (q * exp(G)) S_0 + P U~,  P[t, s] = (q_t . k_s) exp(G_t - G_s) (s <= t)
        S_C      = exp(G_C) S_0 + (k * exp(G_C - G))^T U~

Every exponent above is <= 0, so no exp overflows however negative g is: pairwise decays get
-inf above the diagonal before the exp. Each exponent is summed from exactly the g's it spans
(masked or reversed cumsums), never taken as a difference of two cumulative sums, which would
cost ulp(|G_C|) absolute error in every decay (1e-4 with g = -20 per token): fp32 results then
agree with the fp32 recurrence to its own rounding level at any decay. gla's decay is per key
channel, so P cannot be one plain (Q e^G)(K e^-G)^T matmul (e^-G overflows); P is built from
sub-chunks of c = gcd(C, 8) tokens: blocks below the diagonal factor the decay through the start
b of the query's sub-chunk, exp(G_t - b) * exp(b - G_s), both factors <= 1, and are matmuls; the
c x c diagonal blocks are pairwise [c, c, K] elementwise products.

Layout: chunks of all sequences are computed at once. Sequences are padded only up to a multiple
of C (padding has q = k = v = beta = g = 0: it writes nothing, decays nothing, and being at the end
it is read by no real token). Chunks sit chunk-index-major, sequences sorted by decreasing chunk
count, so the sequences that have a j-th chunk are a prefix: the state pass runs ceil(T_max / C)
steps, step j updating states[:count_j] from one contiguous slice of chunks. It never loops over
tokens. The fixed-length path needs no host values (torch.compile fullgraph); the packed path
reads the offsets on the host.

FLOPs: `chunk_flops` in costs.py (per chunk and head: 2C^2(K+V) + 4CKV additive;
4C^2 K + 2C^2 V + C(C-1)(K+V) + 6CKV delta).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import check_chunk_size, check_inputs, check_offsets, compute_dtype, resolve_scale
from .costs import SUB_CHUNK, WITH_BETA


class _Layout:
    """Where every chunk of every sequence sits. `blocks[j] = (offset, count)`: chunk j of the
    first `count` sequences (in `order`) is chunks[offset: offset + count]."""

    def __init__(self, chunk_size: int, blocks: list[tuple[int, int]], order=None, gather=None,
                 scatter=None, batch: int = 1, length: int = 0):
        self.chunk_size, self.blocks = chunk_size, blocks
        self.order, self.gather, self.scatter = order, gather, scatter
        self.batch, self.length = batch, length

    @classmethod
    def fixed(cls, batch: int, length: int, chunk_size: int) -> "_Layout":
        n_chunks = -(-length // chunk_size)
        return cls(chunk_size, [(j * batch, batch) for j in range(n_chunks)], batch=batch, length=length)

    @classmethod
    def packed(cls, cu_seqlens: torch.Tensor, total: int, chunk_size: int) -> "_Layout":
        offsets = cu_seqlens.tolist()
        check_offsets(offsets, total)
        counts = [-(-(e - b) // chunk_size) for b, e in zip(offsets, offsets[1:])]
        # most chunks first: the sequences that have a j-th chunk are then a prefix of `order`
        order = sorted(range(len(counts)), key=lambda i: -counts[i])
        blocks, starts, ends = [], [], []
        for j in range(counts[order[0]] if order else 0):
            active = sum(1 for i in order if counts[i] > j)
            blocks.append((len(starts), active))
            starts += [offsets[i] + j * chunk_size for i in order[:active]]
            ends += [offsets[i + 1] for i in order[:active]]
        device = cu_seqlens.device
        pos = torch.tensor(starts, dtype=torch.long, device=device)[:, None] \
            + torch.arange(chunk_size, device=device)
        real = pos < torch.tensor(ends, dtype=torch.long, device=device)[:, None]
        gather = torch.where(real, pos, total).reshape(-1)  # row `total` is the zero padding row
        scatter = torch.empty(total, dtype=torch.long, device=device)
        scatter[pos[real]] = torch.arange(pos.numel(), device=device).reshape(pos.shape)[real]
        return cls(chunk_size, blocks, torch.tensor(order, dtype=torch.long, device=device),
                   gather, scatter, length=total)

    def to_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H, D] (or [B, T, H]) -> [chunks, H, C, D] (or [chunks, H, C]), contiguous: as a
        view (rows of a [C, D] block H D apart) the chunk matmuls ran ~4x slower (q k^T, C 64, K 256)."""
        if x.dim() == 3:
            return self.to_chunks(x[..., None])[..., 0]
        c, (b, t, h, d) = self.chunk_size, x.shape
        if self.gather is None:
            n = -(-t // c)
            x = nn.functional.pad(x, (0, 0, 0, 0, 0, n * c - t))
            return x.reshape(b, n, c, h, d).permute(1, 0, 3, 2, 4).reshape(n * b, h, c, d).contiguous()
        rows = torch.cat([x[0], x.new_zeros(1, h, d)])
        return rows.index_select(0, self.gather).reshape(-1, c, h, d).transpose(1, 2).contiguous()

    def from_chunks(self, y: torch.Tensor) -> torch.Tensor:
        """[chunks, H, C, V] -> [B, T, H, V], padding dropped."""
        _, h, c, v = y.shape
        if self.gather is None:
            n, b = len(self.blocks), self.batch
            y = y.reshape(n, b, h, c, v).permute(1, 0, 3, 2, 4).reshape(b, n * c, h, v)
            return y[:, : self.length]
        return y.transpose(1, 2).reshape(-1, h, v).index_select(0, self.scatter)[None]

    def sort_states(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.order is None else s.index_select(0, self.order)

    def unsort_states(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.order is None else s.index_select(0, torch.argsort(self.order))


def _state_pass(s: torch.Tensor, blocks, step, *per_chunk):
    """Carry the state across chunk boundaries: one step per chunk index, all sequences that have
    that chunk at once. `per_chunk` are [chunks, ...] tensors (or None); step j gets their rows of
    that chunk index: `step(states, *rows)` -> (next states, those chunks' outputs).
    Returns (outputs concatenated [chunks, H, C, V], or None when there are no chunks; final states).

    The rows come from one split per tensor, not an index per step: in the backward each indexed
    slice would materialise a zero gradient of the whole tensor and add it up, n_chunks times.
    Each chunk's output is formed inside its step, while the entering state is at hand: stacking
    the entering states for one batched q S matmul costs a copy as big as all the states together,
    in the forward and again among the tensors saved for the backward."""
    sizes = [count for _, count in blocks]
    rows = [[None] * len(sizes) if x is None else x.split(sizes) for x in per_chunk]
    outputs = []
    for j, count in enumerate(sizes):
        new, out = step(s if count == s.shape[0] else s[:count], *(r[j] for r in rows))
        outputs.append(out)
        s = new if count == s.shape[0] else torch.cat([new, s[count:]])
    return (torch.cat(outputs) if outputs else None), s


def _causal(c: int, device, diagonal: int = 0) -> torch.Tensor:
    return torch.ones(c, c, dtype=torch.bool, device=device).tril(diagonal)


# Log decays. Each is formed as the sum of exactly the g's it spans (all <= 0), never as the
# difference of two cumulative sums: G_t - G_s loses the small decays next to large ones (with
# |G| ~ 1000 inside a chunk, ulp(G) ~ 1e-4 would be the error of every exponent).

def _decay_from_start(g: torch.Tensor, dim: int) -> torch.Tensor:
    """sum_{r <= t} g_r along `dim` (inclusive cumsum)."""
    return g.cumsum(dim)


def _decay_to_end(g: torch.Tensor, dim: int) -> torch.Tensor:
    """sum_{r > s} g_r along `dim` (exclusive reverse cumsum)."""
    incl = g.flip(dim).cumsum(dim).flip(dim)
    return torch.cat([incl.narrow(dim, 1, g.shape[dim] - 1), torch.zeros_like(incl.narrow(dim, 0, 1))], dim)


def _pairwise_decay(g: torch.Tensor, dim: int) -> torch.Tensor:
    """D[t, s] = sum_{s < r <= t} g_r for s <= t, -inf above the diagonal (so exp gives 0 there,
    never an overflow). `dim` (negative) indexes r in g; the axes (t, s) replace it."""
    c = g.shape[dim]
    shape = (c, c) + (1,) * (-dim - 1)
    later = _causal(c, g.device, -1).reshape(shape)  # [r, s]: r > s
    spans = (g.unsqueeze(dim) * later).cumsum(dim - 1)
    return torch.where(_causal(c, g.device).reshape(shape), spans, float("-inf"))


def _gla_scores(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, sub: int) -> torch.Tensor:
    """P[t, s] = sum_k q_tk k_sk exp(sum_{s < r <= t} g_rk) for s <= t; q, k, g [chunks, H, C, K]."""
    nc, h, c, k_dim = q.shape
    n = c // sub
    qs, ks, gs = (x.reshape(nc, h, n, sub, k_dim) for x in (q, k, g))
    # below the diagonal (sub-chunk j < i): through b_i, the start of sub-chunk i
    q_off = qs * _decay_from_start(gs, -2).exp()  # b_i -> t
    totals = gs.sum(-2)  # [.., n, K]
    between = _pairwise_decay(totals, -2)  # [.., i, j, K]: sum over sub-chunks j < m <= i
    between = torch.cat([torch.zeros_like(between[:, :, :1]), between[:, :, :-1]], dim=2)  # j < m < i
    below = _causal(n, q.device, -1)[:, :, None, None]
    to_boundary = torch.where(below, _decay_to_end(gs, -2)[:, :, None] + between[..., None, :], float("-inf"))
    k_off = ks[:, :, None] * to_boundary.exp()  # [.., i, j, c, K]: s -> b_i; 0 where j >= i
    # (expanded explicitly, a view: fvcore's matmul handle would count a broadcast operand once)
    off = q_off[:, :, :, None].expand(k_off.shape) @ k_off.transpose(-1, -2)  # [.., i, j, c, c]
    # the diagonal sub-chunks: pairwise over the key channels
    diag = (qs[..., :, None, :] * ks[..., None, :, :] * _pairwise_decay(gs, -2).exp()).sum(-1)
    eye = torch.eye(n, dtype=torch.bool, device=q.device)[:, :, None, None]
    blocks = torch.where(eye, diag[:, :, :, None], off)
    return blocks.permute(0, 1, 2, 4, 3, 5).reshape(nc, h, c, c)


def _additive_chunks(q, k, v, g, s0, blocks, sub):
    """linear (g None) and gla. Returns (o chunks, final states)."""
    if g is None:
        p = (q @ k.transpose(-1, -2)).masked_fill(~_causal(q.shape[-2], q.device), 0.0)
        q_in, k_out, decay = q, k, None
    else:
        p = _gla_scores(q, k, g, sub)
        q_in = q * _decay_from_start(g, -2).exp()
        k_out = k * _decay_to_end(g, -2).exp()
        decay = g.sum(-2).exp()[..., None]  # [chunks, H, K, 1]
    writes = k_out.transpose(-1, -2) @ v  # each chunk's own contribution to its end state
    local = p @ v  # each chunk's output from its own tokens

    def step(s, q_in, local, writes, decay):
        out = q_in @ s + local
        return writes + (s if decay is None else decay * s), out

    o, final = _state_pass(s0, blocks, step, q_in, local, writes, decay)
    return (local if o is None else o), final


def _wy(a, v, k_in, beta):
    """(U, W) with (I + A) [U | W] = [beta V | beta k_in], by forward substitution; the unit
    diagonal is implied, never stored. Solved transposed, X^T (I + A)^T = rhs^T: there rhs^T is
    column-major as LAPACK wants it, where rhs itself is copied in and out (same FLOPs, ~1.5x
    faster at C 64, K + V 512). A function of its own so that rhs, [.., C, V + K], is freed on
    return: the backward needs only A and the solution."""
    rhs = torch.cat([v * beta[..., None], k_in * beta[..., None]], dim=-1)
    x = torch.linalg.solve_triangular(a.mT, rhs.mT, upper=True, left=False, unitriangular=True).mT
    return x.split([v.shape[-1], k_in.shape[-1]], dim=-1)


def _delta_chunks(q, k, v, g, beta, s0, blocks):
    """delta (g None) and gated_delta, in the WY form. Returns (o chunks, final states)."""
    c = q.shape[-2]
    kk = k @ k.transpose(-1, -2)
    p = q @ k.transpose(-1, -2)
    if g is None:
        into, q_in, k_out, decay = None, q, k, None
    else:
        spans = _pairwise_decay(g, -1)  # [chunks, H, C, C]
        gamma = spans.exp()
        kk, p = kk * gamma, p * gamma
        into = _decay_from_start(g, -1).exp()[..., None]
        q_in = q * into
        k_out = k * spans[..., -1, :].exp()[..., None]  # s -> chunk end
        decay = g.sum(-1).exp()[..., None, None]  # [chunks, H, 1, 1]
    a = (kk * beta[..., None]).tril(-1)
    u, w = _wy(a, v, k if into is None else k * into, beta)
    p = p.masked_fill(~_causal(c, q.device), 0.0)

    def step(s, u, w, q_in, p, k_out, decay):
        written = u - w @ s  # beta * (v - what the decayed state already predicts)
        out = q_in @ s + p @ written
        carried = s if decay is None else decay * s
        return carried + k_out.transpose(-1, -2) @ written, out

    o, final = _state_pass(s0, blocks, step, u, w, q_in, p, k_out, decay)
    return (u if o is None else o), final  # u: the empty output when there are no chunks


def chunk_rule(rule: str, q, k, v, *, g=None, beta=None, scale=None, initial_state=None,
               output_final_state=False, cu_seqlens=None, chunk_size=64):
    """Chunked linear attention; see archspec/ops/linear_attention/__init__.py for the API.
    Returns (o [B, T, H, V] in v's dtype, final state [N, H, K, V] or None)."""
    n = check_inputs(rule, q, k, v, g, beta, initial_state, cu_seqlens)
    check_chunk_size(chunk_size)
    b, t, h, k_dim = q.shape
    dtype = compute_dtype(q, k, v, g, beta, initial_state)
    layout = (_Layout.fixed(b, t, chunk_size) if cu_seqlens is None
              else _Layout.packed(cu_seqlens, t, chunk_size))

    def chunks(x):
        return None if x is None else layout.to_chunks(x.to(dtype))

    qc, kc, vc, gc, bc = chunks(q) * resolve_scale(scale, k_dim), chunks(k), chunks(v), chunks(g), chunks(beta)
    s0 = (q.new_zeros(n, h, k_dim, v.shape[-1], dtype=dtype) if initial_state is None
          else initial_state.to(dtype))
    s0 = layout.sort_states(s0)
    if rule in WITH_BETA:
        o, final = _delta_chunks(qc, kc, vc, gc, bc, s0, layout.blocks)
    else:
        o, final = _additive_chunks(qc, kc, vc, gc, s0, layout.blocks, math.gcd(chunk_size, SUB_CHUNK))
    o = layout.from_chunks(o).to(v.dtype)
    return o, (layout.unsort_states(final) if output_final_state else None)
