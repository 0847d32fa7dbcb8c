"""The residual add of a pre-norm sublayer, with the learned gates of a parallel group.

    one member:        x' = x + f(h),                 h = norm(x): [B, T, d]
    parallel group:    x' = x + sum_j g_j f_j(h),     g: [n] (init 1)

The gates are the sublayer's own parameters (`sublayers.i.gates` in the built model: the block
owns them, codegen/model.py), so this type has no module of its own. Config: `gated` (a parallel
group) and `members` (n).

FLOPs per token: d for the add; a group adds n d products and n - 1 sums of d (2 n d - d).
Activation memory of a group: the members' outputs, n d per token, kept for the gates' gradient,
less the n - 1 extra copies of the shared input h that the members' own estimates count.
"""
from __future__ import annotations

from ..base import Component, Flops, register

GATE_FLOPS_PER_ELEMENT = 2  # g_i * f_i(x), then the sum over members
RESIDUAL_FLOPS_PER_ELEMENT = 1


@register
class Residual(Component):
    type = "residual"
    role = "residual"
    summary = "residual add (with learned scalar gates for a parallel group)"
    schema = {"properties": {}}
    has_module = False

    def own_param_shapes(self, cfg, model):
        return {"gates": (cfg["members"],)} if cfg["gated"] else {}

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        elements = seq_len * model.d_model
        other = elements * RESIDUAL_FLOPS_PER_ELEMENT
        if cfg["gated"]:
            other += elements * cfg["members"] * GATE_FLOPS_PER_ELEMENT - elements  # n products, n-1 sums
        return Flops(other=other)

    def own_activation_bytes(self, cfg, model, seq_len):
        if not cfg["gated"]:
            return 0
        n, elements = cfg["members"], seq_len * model.d_model
        member_outputs = n * elements * model.dtype_bytes  # kept for each gate's gradient
        # the members share their input h = norm(x): autograd saves it once, but each member's
        # own estimate counts it, so n - 1 copies come off here
        shared_input_recounted = (n - 1) * elements * model.dtype_bytes
        return member_outputs - shared_input_recounted
