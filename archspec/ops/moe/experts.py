"""Expert execution, the fast form: every kept assignment through its expert, grouped by expert
(the dense ground truth is naive.dense_experts).

    grouped_experts(x [N, d], a: Assignments, w_gate, w_up, w_down, act) -> [N, d]
        rows = x[a.token] (expert-major), for each expert e with n_e > 0 rows:
            y_e = gated_expert(rows_e, W_gate,e, W_up,e, W_down,e)          [n_e, d]
        out = zeros [N, d].index_add_(0, a.token, y * a.weight)

The stacked weights are split with unbind (one view per expert): its backward stacks the
per-expert gradients once, where indexing w[e] in a loop would materialise a full-size zero
gradient per expert (E^2 d f memory traffic in the backward).

FLOPs (1 FLOP = one multiply or one add): grouped 6 d f per kept assignment in matmuls (what
FlopCounterMode counts: one mm per projection and expert slice), dense 6 d f E per token.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

from .routing import Assignments


def gated_expert(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
                 act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(act(x W_gate^T) * (x W_up^T)) W_down^T; x [n, d], W_gate/W_up [f, d], W_down [d, f]."""
    return F.linear(act(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def grouped_experts(x: torch.Tensor, a: Assignments, w_gate: torch.Tensor, w_up: torch.Tensor,
                    w_down: torch.Tensor, act) -> torch.Tensor:
    """Every kept assignment through its expert, one matmul chain per expert on its contiguous
    slice of the sorted rows, weighted and scatter-added back to its token. x [N, d] -> [N, d]."""
    rows = x[a.token]                                   # [P, d], expert-major
    gates, ups, downs = w_gate.unbind(0), w_up.unbind(0), w_down.unbind(0)
    outs = []
    for e, part in enumerate(rows.split(a.counts)):
        if part.shape[0]:                               # an expert without tokens costs nothing
            outs.append(gated_expert(part, gates[e], ups[e], downs[e], act))
    y = torch.cat(outs) if outs else rows.new_zeros(0, x.shape[-1])
    y = y * a.weight.to(y.dtype)[:, None]
    return torch.zeros_like(x).index_add_(0, a.token, y)
