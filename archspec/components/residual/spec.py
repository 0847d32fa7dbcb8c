"""The residual add of a pre-norm sublayer, with the learned gates of a parallel group.

    one member:        x' = x + f(h),                 h = norm(x): [B, T, d]
    parallel group:    x' = x + sum_j g_j f_j(h),     g: [n] (init 1)
    token gates:       x' = x + sum_j g_{t,j} f_j(h)  g_t = softmax(W_g h_t + b_g) or
                                                      sigmoid(W_g h_t + b_g); W_g: [n, d], b_g: [n]

The gates are the sublayer's own parameters (`sublayers.i.gates` in the built model, or the
Linear `sublayers.i.gates.weight` / `.bias` for token gates: the block owns them,
codegen/model.py), so this type has no module of its own. Config: `gated` (a parallel group),
`members` (n) and, for token gates (model.group_gates, Hydra's blueprint, MixDA's gate), `gate`:
softmax or sigmoid. Token gates start at W_g ~ N(0, init_std), b_g = 0: near 1/n (softmax) or
1/2 (sigmoid) for every member.

FLOPs per token: d for the add; a group adds n d products and n - 1 sums of d (2 n d - d);
token gates add their projection 2 d n (matmul), its bias n and the activation on n logits
(SOFTMAX_FLOPS_PER_ELEMENT or SIGMOID_FLOPS each). Activation memory of a group: the members'
outputs, n d per token, kept for the gates' gradient, less the n - 1 extra copies of the shared
input h that the members' own estimates count; token gates add g, n per token (their
projection's input is h, counted already).
"""
from __future__ import annotations

from ...costs import SOFTMAX_FLOPS_PER_ELEMENT
from ..base import Component, Flops, register
from ..gated_adapter.spec import SIGMOID_FLOPS

GATE_FLOPS_PER_ELEMENT = 2  # g_i * f_i(x), then the sum over members
RESIDUAL_FLOPS_PER_ELEMENT = 1
TOKEN_GATE_FLOPS = {"softmax": SOFTMAX_FLOPS_PER_ELEMENT, "sigmoid": SIGMOID_FLOPS}  # per logit


@register
class Residual(Component):
    type = "residual"
    role = "residual"
    summary = "residual add (with learned scalar or per-token gates for a parallel group)"
    schema = {"properties": {}}
    has_module = False

    def own_param_shapes(self, cfg, model):
        if not cfg["gated"]:
            return {}
        n = cfg["members"]
        return {"gates.weight": (n, model.d_model), "gates.bias": (n,)} if "gate" in cfg else {"gates": (n,)}

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        elements = seq_len * model.d_model
        other = elements * RESIDUAL_FLOPS_PER_ELEMENT
        matmul = 0
        if cfg["gated"]:
            other += elements * cfg["members"] * GATE_FLOPS_PER_ELEMENT - elements  # n products, n-1 sums
            if "gate" in cfg:
                n = cfg["members"]
                matmul = 2 * model.d_model * n * seq_len
                other += seq_len * n * (1 + TOKEN_GATE_FLOPS[cfg["gate"]])
        return Flops(matmul=matmul, other=other)

    def own_activation_bytes(self, cfg, model, seq_len):
        if not cfg["gated"]:
            return 0
        n, elements = cfg["members"], seq_len * model.d_model
        member_outputs = n * elements * model.dtype_bytes  # kept for each gate's gradient
        # the members share their input h = norm(x): autograd saves it once, but each member's
        # own estimate counts it, so n - 1 copies come off here
        shared_input_recounted = (n - 1) * elements * model.dtype_bytes
        token_gates = seq_len * n * model.dtype_bytes if "gate" in cfg else 0  # g, kept by the products
        return member_outputs - shared_input_recounted + token_gates
