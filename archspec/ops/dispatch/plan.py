"""MoM's dispatch plan: which token each packed row copies, and the inverse map.

    plan_dispatch(idx [N, k], weights [N, k], B, T, M, shared, capacity) -> Dispatch
        the (token, memory) assignments of top-k routing (N = B T tokens, row n = b T + t),
        sorted into packed groups, one per (memory, sequence): memory-major, then sequence, then
        time. A shared memory (every token, weight 1) comes last. With a capacity c a memory keeps
        at most L = ceil(c k T / M) tokens of each sequence, the earliest (first come, first
        served), so whether a token is kept depends only on the tokens before it.
    row_map(token [P], n_tokens) -> RowMap
        the inverse, token -> its packed rows, in CSR form, which the Triton gather's backward
        and combine read (backends.py, triton_dispatch.py).

No padding anywhere: a memory with no token has an empty group, a token may have 0, 1 or
several rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..moe.costs import capacity_limit


@dataclass
class Dispatch:
    """Where each packed row comes from. Rows are grouped by memory (shared last), then by
    sequence, then in time order: `cu_seqlens` [n_b B + 1] marks the (memory, sequence) groups."""

    token: Tensor        # int64 [P]: flat token index b T + t of each packed row
    weight: Tensor       # [P]: routing weight of the row (1 for the shared memory)
    cu_seqlens: Tensor   # int64 [n_b B + 1]
    memory_rows: list[int]  # rows per memory (host ints), length n_b

    def segment_lengths(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()


def plan_dispatch(idx: Tensor, weights: Tensor, batch: int, seq_len: int, n_memories: int,
                  shared: bool, capacity: float | None, capacity_len: int | None = None) -> Dispatch:
    """Sort the (token, memory) assignments into packed groups, dropping over-capacity ones.
    The capacity counts `capacity_len` tokens (default seq_len; a prompt's prefill counts the
    whole length it will be decoded to)."""
    n, k = idx.shape
    device = idx.device
    token = torch.arange(n, device=device).repeat_interleave(k)
    memory, weight = idx.reshape(-1), weights.reshape(-1)
    if capacity is not None:
        limit = capacity_limit(capacity, k, capacity_len or seq_len, n_memories)
        one_hot = torch.zeros(batch, seq_len, n_memories, dtype=torch.int64, device=device)
        one_hot.scatter_add_(-1, idx.view(batch, seq_len, k), torch.ones_like(idx.view(batch, seq_len, k)))
        # rank of each assignment among its memory's assignments so far in its sequence
        before = (one_hot.cumsum(1) - one_hot).view(n, n_memories).gather(1, idx).reshape(-1)
        keep = before < limit
        token, memory, weight = token[keep], memory[keep], weight[keep]
    order = torch.argsort(memory * n + token)  # memory-major, then b, then t
    token, memory, weight = token[order], memory[order], weight[order]
    group = memory * batch + token // seq_len
    counts = torch.bincount(group, minlength=n_memories * batch)
    if shared:
        all_tokens = torch.arange(n, device=device)
        token = torch.cat([token, all_tokens])
        weight = torch.cat([weight, torch.ones(n, dtype=weight.dtype, device=device)])
        counts = torch.cat([counts, torch.full((batch,), seq_len, dtype=counts.dtype, device=device)])
    cu = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=device)
    cu[1:] = counts.cumsum(0)
    per_memory = counts.view(-1, batch).sum(1).tolist()
    return Dispatch(token, weight, cu, per_memory)


@dataclass(frozen=True)
class RowMap:
    """Packed rows <-> tokens: `token` [P] (int64, the token of each packed row) and its inverse
    in CSR form: the rows of token t are order[offsets[t]:offsets[t+1]], ascending. Build it once
    per dispatch with `row_map` and pass it to both `gather_rows` and `combine_rows`."""

    token: Tensor    # int64 [P]
    order: Tensor    # int64 [P]: packed rows sorted by token (stable argsort)
    offsets: Tensor  # int64 [n_tokens + 1]
    n_tokens: int

    @property
    def n_rows(self) -> int:
        return self.token.shape[0]


def check_token(token: Tensor, what: str = "token") -> None:
    if not isinstance(token, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of int64 token indices, got {type(token).__name__}")
    if token.dim() != 1:
        raise ValueError(f"{what} must be 1-D [P] (one token index per packed row), got shape "
                         f"{tuple(token.shape)}; flatten it with {what}.reshape(-1)")
    if token.dtype != torch.int64:
        raise ValueError(f"{what} must be int64, got {token.dtype}; convert it with {what}.long()")


def check_token_range(token: Tensor, n_tokens: int, what: str) -> None:
    """Every index in [0, n_tokens). A value check (a device sync): eager mode only, skipped
    under torch.compile and on the meta device, where values are unknown."""
    if token.numel() == 0 or token.device.type == "meta" or torch.compiler.is_compiling():
        return
    lo, hi = int(token.min()), int(token.max())
    if lo < 0 or hi >= n_tokens:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token index {bad} is out of range for {what} with {n_tokens} tokens; "
                         f"every index must lie in [0, {n_tokens})")


def row_map(token: Tensor, n_tokens: int) -> RowMap:
    """The CSR inverse of `token` (int64 [P], values in [0, n_tokens)): computed in torch on
    token's device, with static shapes (torch.compile, the meta device): a stable sort, then
    offsets[t] = number of rows whose token is below t (searchsorted, which unlike bincount has
    an output shape independent of the values)."""
    check_token(token)
    n_tokens = int(n_tokens)
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    check_token_range(token, n_tokens, "row_map")
    sorted_token, order = torch.sort(token, stable=True)
    bounds = torch.arange(n_tokens + 1, dtype=torch.int64, device=token.device)
    offsets = torch.searchsorted(sorted_token, bounds)
    return RowMap(token, order, offsets, n_tokens)
