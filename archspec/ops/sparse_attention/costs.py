"""What sparse attention computes and keeps, from shapes alone and without torch: the global
positions, the window's plan (what the banded form computes, `WindowPlan.computed_pairs`) and
the pairs its mask keeps (`attended_pairs`), and block top-k's selections and tile rows. The
forward passes (window.py, topk.py) and the component's accounting read the same functions, so
the FLOPs cannot drift from what runs.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

CHUNK_ELEMENTS = 1 << 22  # score elements per chunk of query blocks or tiles (16 MiB in float32)
MIN_TILE_ROWS = 16


def global_positions(seq_len: int, first: int = 0, every: int | None = None) -> list[int]:
    """Sorted global positions < seq_len: the first `first` positions (attention sinks) and, with
    `every` = N, the positions N - 1, 2N - 1, ... (every N-th token, counting from one)."""
    sinks = set(range(min(first, seq_len)))
    if every:
        sinks.update(range(every - 1, seq_len, every))
    return sorted(sinks)


@dataclass(frozen=True)
class WindowPlan:
    """What the banded form computes for one sequence length (shapes only, no data), shared by
    the forward and the FLOP count so that the two cannot drift apart."""

    seq_len: int
    window: int                         # w' = min(window, T)
    block: int                          # b' = min(block_size, T)
    n_blocks: int                       # ceil(T / b')
    global_keys: tuple[int, ...]        # global g with g + w' <= T - 1
    global_queries: tuple[int, ...]     # prefix mode: global g with g >= w'

    @property
    def band(self) -> int:
        return self.block + self.window - 1

    @property
    def query_key_len(self) -> int:
        """Keys the global queries are scored against: [0, last global query]."""
        return self.global_queries[-1] + 1 if self.global_queries else 0

    def computed_pairs(self) -> int:
        """(query, key) pairs scored per query head, masked ones and padding included."""
        rows = self.n_blocks * self.block
        return rows * (self.band + len(self.global_keys)) + len(self.global_queries) * self.query_key_len


def plan_window(seq_len: int, window: int, block_size: int, global_first: int = 0,
                global_every: int | None = None, global_reads: str = "prefix") -> WindowPlan:
    """What window.window_attention computes for sequences of `seq_len` tokens: the window and
    query block clipped to T, and the global keys and queries its band does not cover."""
    if seq_len < 1 or window < 1 or block_size < 1:
        raise ValueError(f"seq_len, window and block_size must be >= 1, got {seq_len}, {window}, {block_size}")
    if global_reads not in ("prefix", "window"):
        raise ValueError(f"global_reads must be 'prefix' or 'window', got {global_reads!r}")
    w, b = min(window, seq_len), min(block_size, seq_len)
    glob = global_positions(seq_len, global_first, global_every)
    keys = tuple(g for g in glob if g + w <= seq_len - 1)
    queries = tuple(g for g in glob if g >= w) if global_reads == "prefix" else ()
    return WindowPlan(seq_len, w, b, math.ceil(seq_len / b), keys, queries)


def attended_pairs(seq_len: int, window: int, global_first: int = 0, global_every: int | None = None,
                   global_reads: str = "prefix") -> int:
    """Pairs (i, j) the mask keeps, exactly (the count of `window_mask(...)`), in O(n_global log):
    the causal window, plus each global key's readers beyond the window, plus (prefix mode) each
    global query's non-global keys beyond the window (global ones are already counted)."""
    w = min(window, seq_len)
    pairs = w * (w + 1) // 2 + (seq_len - w) * w
    glob = global_positions(seq_len, global_first, global_every)
    pairs += sum(max(0, seq_len - g - w) for g in glob)
    if global_reads == "prefix":
        for g in glob:
            if g >= w:
                span = g - w + 1  # keys 0 .. g - w
                pairs += span - bisect.bisect_right(glob, g - w)
    return pairs


def tile_rows(block_size: int) -> int:
    """Query rows per tile of the selected-block part: max(16, b). Each tile gathers its block's
    b keys and values once, so per packed row that is 2 b D / tile elements: 2D at tile = b
    (a smaller tile would gather more keys than queries); padding is < tile rows per head and
    block."""
    return max(MIN_TILE_ROWS, block_size)


def selections_per_head(seq_len: int, block_size: int, topk: int) -> int:
    """S: (query, earlier block) selections one head makes over a sequence (deterministic)."""
    b = min(block_size, seq_len)
    n_b = math.ceil(seq_len / b)
    # queries of block m (m >= 1) select min(k, m) blocks each
    return sum(min(topk, m) * (min(seq_len, (m + 1) * b) - m * b) for m in range(1, n_b))
