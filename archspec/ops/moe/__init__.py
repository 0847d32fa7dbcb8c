"""Mixture-of-experts routing and expert execution (archspec/components/moe.py uses them).

    x: [N, d] tokens (N = B T, row n = b T + t);  E experts, each a gated MLP
        expert_e(x) = (act(x W_gate,e^T) * (x W_up,e^T)) W_down,e^T,  W_gate/up: [E, f, d], W_down: [E, d, f]

Routing (routing.py, shared with MoM's memories) produces assignments (token n, expert e,
weight w):
    token_choice:   p = softmax(logits) [N, E];  (w, e) = top-k(p), optionally w <- w / sum(w)
    chunk_summaries / expand_chunks: one routing decision per chunk of C tokens, made from the
                    mean of the previous chunk (causal; see the component's docstring)
    expert_choice:  each expert takes its top-C tokens of a sequence by p[:, e] (not causal)
    sort_assignments: expert-major order, token order within an expert, and optional capacity
                    (per expert and sequence, first come first served in time order; the limits
                    capacity_limit, expert_choice_capacity are in costs.py, torch-free)
    load_balancing_loss, z_loss: the auxiliary losses

Execution:
    grouped_experts (experts.py, the fast form): gather the sorted rows, one matmul chain per
                     expert on its contiguous slice, weight, scatter-add (index_add_) back:
                     6 d f FLOPs per kept assignment
    dense_experts (naive.py, the ground truth): every expert on every token, multiplied by the
                     dense combine matrix (dense_combine: the same routing as a dense [B, T, E]
                     weight matrix, written independently of sort_assignments); E/k times the
                     work, and the benchmark baseline

Importing this package imports no torch: the capacities are loaded with it, every other name on
first use.
"""
from __future__ import annotations

from ...lazy import lazy_exports
from .costs import capacity_limit, expert_choice_capacity

_LAZY = {
    ".routing": ["Assignments", "chunk_summaries", "expand_chunks", "expert_choice",
                 "expert_choice_assignments", "load_balancing_loss", "sort_assignments",
                 "token_choice", "z_loss"],
    ".experts": ["gated_expert", "grouped_experts"],
    ".naive": ["dense_combine", "dense_combine_expert_choice", "dense_experts"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = ["capacity_limit", "expert_choice_capacity"]
__all__ += [name for names in _LAZY.values() for name in names]
