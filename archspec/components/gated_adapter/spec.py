"""Gated adapter: a small bottleneck MLP whose output a learned per-token gate scales (the
building block of mixtures of domain adapters, MixDA).

    x: [B, T, d] -> y: [B, T, d]
    g_t = sigmoid(x_t w_g^T + b_g)        w_g: [1, d], b_g: [1]   (one gate per token)
    y_t = g_t * adapter(x_t)              adapter: an mlp of width `bottleneck` (a child)

FLOPs for one sequence (1 FLOP = one multiply or one add): the gate 2 d T (matmul) and
T (SIGMOID_FLOPS + 1 + d) (its bias add, the sigmoid, the scaling of y); the adapter's as mlp
counts them. Inference state: none. Activation memory per token: g and the adapter's output
(1 + d values in the model dtype), besides the adapter's own (which counts the shared input x).
"""
from __future__ import annotations

from ... import limits as L
from ..base import Component, Flops, child, register
from ..mlp.spec import ACTIVATIONS

SIGMOID_FLOPS = 4  # negate and exp, add, divide


@register
class GatedAdapter(Component):
    type = "gated_adapter"
    module = "archspec.components.gated_adapter.module:GatedAdapterModule"
    summary = "bottleneck MLP adapter scaled by a learned per-token sigmoid gate"
    schema = {
        "properties": {
            "bottleneck": {"type": "integer", "minimum": 1, **L.WIDTH.schema(), "default": 64,
                           "description": "hidden width of the adapter mlp"},
            "activation": {"enum": sorted(ACTIVATIONS), "default": "gelu",
                           "description": "the adapter's activation (as mlp's)"},
        },
    }
    example = {"bottleneck": 16}

    def children(self, cfg, model):
        return {"adapter": child("mlp", model, d_ff=cfg["bottleneck"], activation=cfg["activation"])}

    def own_param_shapes(self, cfg, model):
        return {"gate.weight": (1, model.d_model), "gate.bias": (1,)}

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        d = model.d_model
        return Flops(matmul=2 * d * seq_len, other=seq_len * (SIGMOID_FLOPS + 1 + d))

    def own_activation_bytes(self, cfg, model, seq_len):
        # the gate g (sigmoid's output, which the product also keeps) and the adapter's output;
        # the input x, which the gate's projection saves, is the adapter's: counted there
        return seq_len * (1 + model.d_model) * model.dtype_bytes
