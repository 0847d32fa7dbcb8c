"""LayerNorm (Ba et al., 2016).

    x: [..., d]  ->  y = (x - mean(x)) / sqrt(var(x) + eps) * w + b,   w: [d] (init 1), b: [d] (init 0)

`bias: false` drops b. Computed in float32 and cast back. FLOPs per token: 7d + 2 (mean,
centre, square, sum, scale, weight, bias; two per-token divisions/adds), 6d + 2 without bias.
Activation memory per token: 4d + 8 bytes (float32 input, mean and 1/std).
"""
from __future__ import annotations

from ..base import Component, Flops, register
from ..rmsnorm.spec import NORM_SCHEMA


@register
class LayerNorm(Component):
    type = "layernorm"
    module = "archspec.components.layernorm.module:LayerNormModule"
    role = "norm"
    summary = "layer norm with a learned scale and (optional) bias"
    schema = {"properties": {**NORM_SCHEMA, "bias": {"type": "boolean", "default": True,
                                                     "description": "learn an additive bias"}}}

    def own_param_shapes(self, cfg, model):
        shapes = {"weight": (model.d_model,)}
        if cfg["bias"]:
            shapes["bias"] = (model.d_model,)
        return shapes

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        return Flops(other=seq_len * ((7 if cfg["bias"] else 6) * model.d_model + 2))

    def own_activation_bytes(self, cfg, model, seq_len):
        # Computed in float32 whatever the model dtype: native_layer_norm saves the float32
        # input and float32 mean and 1/std per token. Measured with saved_tensors_hooks.
        return seq_len * (4 * model.d_model + 8)
