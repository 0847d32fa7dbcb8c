"""Sparse causal attention: a sliding window with global tokens, and block-sparse top-k.

    q: [B, H, T, D];  k, v: [B, H_kv, T, D] (GQA: head h reads key/value head h // (H / H_kv));
    o: [B, H, T, D];  scale 1 / sqrt(D) by default; softmax in float32.

    window.py  window_attention(q, k, v, plan)        banded, memory O(T (b + w + n_global))
    topk.py    select_blocks(q, k, block_size, topk)  per-query top-k of earlier blocks
               block_topk_attention(q, k, v, block_size, topk) -> (o, padded rows R)
    naive.py   dense_masked_attention(q, k, v, mask)  the ground truth over an explicit mask
               window_mask(...), block_topk_mask(selection, T, block_size, (B, H)), is_global(...)
                                                      the masks of the definition
               attend_one(q_t, k, v, keep)            one decoding position against a cache
    costs.py   plan_window(T, window, block_size, global_first, global_every, global_reads),
               attended_pairs(...), global_positions(...), selections_per_head(...),
               tile_rows(block_size): what the fast forms compute and the masks keep, from
               shapes alone (torch-free; the accounting reads them); GlobalSet and
               window_counts(...): the same counts in O(1), for accounting at long contexts

The fast forms and the FLOPs they perform are described in window.py and topk.py; the tests
(tests/test_sparse_attention.py) compare each with the dense form over the mask built from the
definition, forward and gradients. Importing this package imports no torch: the costs are
loaded with it, every other name on first use.
"""
from __future__ import annotations

from ...lazy import lazy_exports
from .costs import (CHUNK_ELEMENTS, MIN_TILE_ROWS, GlobalSet, WindowCounts, WindowPlan, attended_pairs,
                    global_positions, plan_window, selections_per_head, tile_rows, window_counts)

_LAZY = {
    ".naive": ["attend_one", "block_topk_mask", "dense_masked_attention", "is_global", "window_mask"],
    ".window": ["chunk_blocks", "window_attention"],
    ".topk": ["TilePlan", "block_topk_attention", "plan_tiles", "select_blocks"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = ["CHUNK_ELEMENTS", "MIN_TILE_ROWS", "GlobalSet", "WindowCounts", "WindowPlan", "attended_pairs",
           "global_positions", "plan_window", "selections_per_head", "tile_rows", "window_counts"]
__all__ += [name for names in _LAZY.values() for name in names]
