"""Product-key lookup (Lample et al., 2019, "Large Memory Layers with Product Keys").

    q: [N, H, K] queries (N tokens, H heads, K = k_dim even, c = K / 2)
    keys: [H, 2, n, c] sub-keys: per head, n for the first half of the query, n for the second
    slot (i, j), i, j in [0, n), has the product key [k1_i ; k2_j] and index i n + j; n^2 slots
    score(i, j) = q . [k1_i ; k2_j] = q1 . k1_i + q2 . k2_j = s1_i + s2_j

    product_topk(q, keys, knn) -> (scores [N, H, knn], slots [N, H, knn])   the fast form (lookup.py)
        s = [q1 k1^T, q2 k2^T]          [H, 2, N, n]   (one batched matmul, 2 N H n c MACs)
        (s1', i'), (s2', j') = top-knn of each half                      [H, N, knn] each
        candidates s1'_a + s2'_b, slot i'_a n + j'_b                      [H, N, knn^2]
        the knn best candidates, best first
    full_topk(q, keys, knn)    -> the same pair, by scoring all n^2 slots (s1_i + s2_j for
        every i, j: [H, N, n^2]) and taking the top knn: the ground truth (naive.py).
    flat_scores(q, keys)       -> [H, N, n^2]: the scores of a flat memory, q against each of
        the n^2 materialised product keys [k1_i ; k2_j] (a matmul of 2 N H n^2 K FLOPs); the
        same numbers as s1_i + s2_j up to rounding (tests, benchmark).
    read_values(slots, weights, table) -> [N, v]: sum over the H knn (slot, weight) pairs of
        weight * table[slot], by F.embedding_bag(mode='sum', per_sample_weights) (the fast form);
    read_values_plain(...)     -> the same, by indexing and summing (the ground truth).
    lookup_flops(H, n, K, knn, v) -> the FLOPs of one token's lookup and read (costs.py, torch-free)

Why the fast form finds the exact top knn of all n^2 slots: let (i, j) be among the knn best
slots and suppose i is not among the knn best first-half sub-keys. Then knn indices i' have
s1_i' > s1_i, and the knn slots (i', j) score s1_i' + s2_j > s1_i + s2_j: (i, j) would not be
among the knn best. So i is in top-knn(s1), likewise j in top-knn(s2): every slot of the exact
top knn is a candidate. (With ties among scores the top knn is not unique; both forms return a
valid one and the same scores.) The candidate sums are the same floating-point additions as in
the full scoring, so both forms select slots with bit-identical scores.

Importing this package imports no torch: lookup_flops is loaded with it, every other name on
first use.
"""
from __future__ import annotations

from ...lazy import lazy_exports
from .costs import lookup_flops

_LAZY = {
    ".lookup": ["product_topk", "read_values", "subkey_scores"],
    ".naive": ["flat_scores", "full_topk", "read_values_plain"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = ["lookup_flops"]
__all__ += [name for names in _LAZY.values() for name in names]
