"""What sparse attention computes and keeps, from shapes alone and without torch: the global
positions, the window's plan (what the banded form computes, `WindowPlan.computed_pairs`) and
the pairs its mask keeps (`attended_pairs`), and block top-k's selections and tile rows. The
forward passes (window.py, topk.py) and the component's accounting read the same functions, so
the FLOPs cannot drift from what runs.
"""
from __future__ import annotations

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
class GlobalSet:
    """The global positions below `seq_len` as arithmetic, for accounting: the sinks [0, f') and
    the periodic positions N - 1, 2N - 1, ... at or after f (disjoint from the sinks). Counts and
    sums over a range take O(1), where global_positions lists them (up to seq_len of them:
    accounting at a long context must not walk them). Equal to the list by construction
    (tests/test_sparse_attention.py checks every small case)."""

    seq_len: int
    first: int = 0
    every: int | None = None

    @property
    def _f(self) -> int:
        return min(self.first, self.seq_len)

    def _periodic(self, lo: int, hi: int) -> tuple[int, int]:
        """(first j, last j) with j N - 1 in [max(lo, f), min(hi, T)); empty when first > last."""
        if not self.every:
            return 1, 0
        a, b = max(lo, self._f), min(hi, self.seq_len)
        if a >= b:
            return 1, 0
        return a // self.every + 1, b // self.every

    def count(self, lo: int, hi: int) -> int:
        """Global positions in [lo, hi)."""
        j1, j2 = self._periodic(lo, hi)
        return max(0, min(hi, self._f) - max(lo, 0)) + max(0, j2 - j1 + 1)

    def total(self, lo: int, hi: int) -> int:
        """Sum of the global positions in [lo, hi)."""
        a, b = max(lo, 0), min(hi, self._f)
        sinks = (a + b - 1) * (b - a) // 2 if b > a else 0
        j1, j2 = self._periodic(lo, hi)
        n = max(0, j2 - j1 + 1)
        return sinks + (self.every * (j1 + j2) * n // 2 - n if n else 0)

    def last_below(self, hi: int) -> int | None:
        """The largest global position below hi, or None."""
        j1, j2 = self._periodic(0, hi)
        sink = min(hi, self._f) - 1
        best = max(sink, j2 * self.every - 1 if j2 >= j1 else -1)
        return best if best >= 0 else None

    def reads_beyond(self, lag: int) -> int:
        """Pairs (g, g') of global positions with g >= lag and g' <= g - lag (lag >= 1): the
        earlier global keys that global queries meet beyond their windows, all queries summed."""
        f, t, n = self._f, self.seq_len, self.every
        pairs = (f - lag) * (f - lag + 1) // 2 if f > lag else 0  # a sink reading sinks
        if not n:
            return pairs
        # a periodic g reads min(f, g - lag + 1) sinks: all f from g = f + lag - 1 on
        split = f + lag - 1
        pairs += f * self._periodic_count(split, t)
        pairs += self._periodic_total(lag, split) - (lag - 1) * self._periodic_count(lag, split)
        # and the periodic i N - 1 >= f with (j - i) N >= lag: i from i0 to j - s
        s, i0 = -(-lag // n), max(1, -(-(f + 1) // n))
        count = t // n - (i0 + s) + 1
        return pairs + (count * (count + 1) // 2 if count > 0 else 0)

    def _periodic_count(self, lo: int, hi: int) -> int:
        j1, j2 = self._periodic(lo, hi)
        return max(0, j2 - j1 + 1)

    def _periodic_total(self, lo: int, hi: int) -> int:
        j1, j2 = self._periodic(lo, hi)
        n = max(0, j2 - j1 + 1)
        return self.every * (j1 + j2) * n // 2 - n if n else 0


@dataclass(frozen=True)
class WindowCounts:
    """The sizes of plan_window's plan, in O(1) (accounting's view: the forward needs the
    positions themselves): what computed_pairs and the activation estimate read."""

    rows: int            # n_blocks * block: query rows, padding included
    window: int          # w' = min(window, T)
    band: int            # block + window - 1
    n_global_keys: int
    n_global_queries: int
    query_key_len: int   # keys the global queries are scored against

    def computed_pairs(self) -> int:
        return self.rows * (self.band + self.n_global_keys) + self.n_global_queries * self.query_key_len


def window_counts(seq_len: int, window: int, block_size: int, global_first: int = 0,
                  global_every: int | None = None, global_reads: str = "prefix") -> WindowCounts:
    """plan_window's sizes without listing its positions (equal: the tests compare them)."""
    w, b = min(window, seq_len), min(block_size, seq_len)
    glob = GlobalSet(seq_len, global_first, global_every)
    queries = glob.count(w, seq_len) if global_reads == "prefix" else 0
    last = glob.last_below(seq_len) if queries else None
    return WindowCounts(math.ceil(seq_len / b) * b, w, b + w - 1, glob.count(0, seq_len - w), queries,
                        last + 1 if last is not None else 0)


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
    """Pairs (i, j) the mask keeps, exactly (the count of `window_mask(...)`), in O(1): the
    causal window, plus each global key's readers beyond the window (sum over globals g < T - w
    of T - w - g), plus (prefix mode) each global query's non-global keys beyond the window
    (g - w + 1 keys, less the global ones, already counted: GlobalSet.reads_beyond)."""
    w = min(window, seq_len)
    pairs = w * (w + 1) // 2 + (seq_len - w) * w
    glob = GlobalSet(seq_len, global_first, global_every)
    beyond = seq_len - w
    pairs += beyond * glob.count(0, beyond) - glob.total(0, beyond)
    if global_reads == "prefix":
        pairs += glob.total(w, seq_len) - (w - 1) * glob.count(w, seq_len) - glob.reads_beyond(w)
    return pairs


def tile_rows(block_size: int) -> int:
    """Query rows per tile of the selected-block part: max(16, b). Each tile gathers its block's
    b keys and values once, so per packed row that is 2 b D / tile elements: 2D at tile = b
    (a smaller tile would gather more keys than queries); padding is < tile rows per head and
    block."""
    return max(MIN_TILE_ROWS, block_size)


def selections_per_head(seq_len: int, block_size: int, topk: int) -> int:
    """S: (query, earlier block) selections one head makes over a sequence (deterministic): the
    queries of block m >= 1 select min(k, m) blocks each; every block holds b queries but the
    last, which holds T - (n_b - 1) b. O(1)."""
    b = min(block_size, seq_len)
    last_block = math.ceil(seq_len / b) - 1  # M: the blocks that select
    if last_block < 1:
        return 0
    k = topk
    per_query_sum = (last_block * (last_block + 1) // 2 if last_block <= k
                     else k * (k + 1) // 2 + (last_block - k) * k)
    short = b - (seq_len - last_block * b)  # queries the last block lacks
    return b * per_query_sum - short * min(k, last_block)
