"""What the product-key lookup costs, without torch.

FLOPs per token (1 FLOP = one multiply or one add; a comparison counted as 1): sub-key scores
2 H n K (matmul: what FlopCounterMode counts); top-knn of each half 2 H n comparisons; candidate
sums H knn^2; top-knn of the candidates H knn^2 comparisons; the value read H knn v multiplies
and (H knn - 1) v adds (an embedding bag: FlopCounterMode has no formula for it and counts 0).
Scoring every slot instead costs H n^2 adds and H n^2 comparisons on top of the same sub-key
matmul (full_topk; at n 512, knn 32: 524,288 per head against 3,072 for the product lookup), and
a flat memory's matmul (flat_scores) is 2 H n^2 K, n times the sub-key matmul.
"""
from __future__ import annotations

from ...costs import Flops


def lookup_flops(heads: int, n_keys: int, k_dim: int, knn: int, v_dim: int) -> Flops:
    """FLOPs of one token's product_topk + read_values (module docstring): the sub-key scores
    (matmul); the top-knn of the halves, the candidate sums, their top-knn and the weighted sum
    of H knn value rows (other)."""
    other = heads * (2 * n_keys + 2 * knn * knn) + heads * knn * v_dim + (heads * knn - 1) * v_dim
    return Flops(matmul=2 * heads * n_keys * k_dim, other=other)
