"""Mixture-of-experts routing and expert execution (archspec/components/moe.py uses them).

    x: [N, d] tokens (N = B T, row n = b T + t);  E experts, each a gated MLP
        expert_e(x) = (act(x W_gate,e^T) * (x W_up,e^T)) W_down,e^T,  W_gate/up: [E, f, d], W_down: [E, d, f]

Routing (routing.py) produces assignments (token n, expert e, weight w):
    token_choice:   p = softmax(logits) [N, E];  (w, e) = top-k(p), optionally w <- w / sum(w)
    chunk_summaries / expand_chunks: one routing decision per chunk of C tokens, made from the
                    mean of the previous chunk (causal; see the component's docstring)
    expert_choice:  each expert takes its top-C tokens of a sequence by p[:, e] (not causal)
    sort_assignments: expert-major order, token order within an expert, and optional capacity
                    (per expert and sequence, first come first served in time order)
    dense_combine:  the same routing as a dense [B, T, E] weight matrix (zero = not assigned),
                    written independently of sort_assignments: the ground truth's view

Execution (experts.py):
    grouped_experts: gather the sorted rows, one matmul chain per expert on its contiguous slice,
                     weight, scatter-add (index_add_) back: 6 d f FLOPs per kept assignment
    dense_experts:   every expert on every token, multiplied by the dense combine matrix
                     (E/k times the work; the ground truth and the benchmark baseline)
"""
from .experts import dense_experts, gated_expert, grouped_experts  # noqa: F401
from .routing import (  # noqa: F401
    Assignments,
    capacity_limit,
    chunk_summaries,
    dense_combine,
    dense_combine_expert_choice,
    expand_chunks,
    expert_choice,
    expert_choice_assignments,
    expert_choice_capacity,
    load_balancing_loss,
    sort_assignments,
    token_choice,
    z_loss,
)
