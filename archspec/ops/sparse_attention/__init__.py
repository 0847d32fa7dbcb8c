"""Sparse causal attention: a sliding window with global tokens, and block-sparse top-k.

    q: [B, H, T, D];  k, v: [B, H_kv, T, D] (GQA: head h reads key/value head h // (H / H_kv));
    o: [B, H, T, D];  scale 1 / sqrt(D) by default; softmax in float32.

    window.py  plan_window(T, window, block_size, global_first, global_every, global_reads)
               window_attention(q, k, v, plan)        banded, memory O(T (b + w + n_global))
               window_mask(...), attended_pairs(...), global_positions(...), is_global(...)
    topk.py    select_blocks(q, k, block_size, topk)  per-query top-k of earlier blocks
               block_topk_attention(q, k, v, block_size, topk) -> (o, padded rows R)
               block_topk_mask(selection, T, block_size, (B, H)), selections_per_head(...)
    naive.py   dense_masked_attention(q, k, v, mask)  the ground truth over an explicit mask
               attend_one(q_t, k, v, keep)            one decoding position against a cache

The fast forms and the FLOPs they perform are described in window.py and topk.py; the tests
(tests/test_sparse_attention.py) compare each with the dense form over the mask built from the
definition, forward and gradients.
"""
from .naive import attend_one, dense_masked_attention
from .topk import (TilePlan, tile_rows, block_topk_attention, block_topk_mask, plan_tiles,
                   select_blocks, selections_per_head)
from .window import (CHUNK_ELEMENTS, WindowPlan, attended_pairs, chunk_blocks, global_positions, is_global, plan_window,
                     window_attention, window_mask)

__all__ = ["attend_one", "dense_masked_attention", "TilePlan", "tile_rows", "block_topk_attention",
           "block_topk_mask", "plan_tiles", "select_blocks", "selections_per_head", "CHUNK_ELEMENTS", "WindowPlan",
           "attended_pairs", "chunk_blocks", "global_positions", "is_global", "plan_window", "window_attention",
           "window_mask"]
