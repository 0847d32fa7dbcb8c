"""LayerNorm (Ba et al., 2016).

    x: [..., d]  ->  y = (x - mean(x)) / sqrt(var(x) + eps) * w + b,   w: [d] (init 1), b: [d] (init 0)

`bias: false` drops b. Computed in float32 and cast back. FLOPs per token: 7d + 2 (mean,
centre, square, sum, scale, weight, bias; two per-token divisions/adds), 6d + 2 without bias.
Activation memory per token: 4d + 8 bytes (float32 input, mean and 1/std).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Component, ComponentModule, Flops, ModelConfig, register
from .rmsnorm import NORM_SCHEMA


@register
class LayerNorm(Component):
    type = "layernorm"
    role = "norm"
    summary = "layer norm with a learned scale and (optional) bias"
    schema = {"properties": {**NORM_SCHEMA, "bias": {"type": "boolean", "default": True,
                                                     "description": "learn an additive bias"}}}

    def param_shapes(self, cfg, model):
        shapes = {"weight": (model.d_model,)}
        if cfg["bias"]:
            shapes["bias"] = (model.d_model,)
        return shapes

    def flops(self, cfg, model, seq_len, conv):
        return Flops(other=seq_len * ((7 if cfg["bias"] else 6) * model.d_model + 2))

    def activation_bytes(self, cfg, model, seq_len):
        # Computed in float32 whatever the model dtype: native_layer_norm saves the float32
        # input and float32 mean and 1/std per token. Measured with saved_tensors_hooks.
        return seq_len * (4 * model.d_model + 8)

    class Module(ComponentModule):
        def __init__(self, cfg: dict, model: ModelConfig):
            super().__init__()
            self.eps = float(cfg["eps"])
            self.weight = nn.Parameter(torch.empty(model.d_model))
            self.bias = nn.Parameter(torch.empty(model.d_model)) if cfg["bias"] else None

        def reset_parameters(self):
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bias = None if self.bias is None else self.bias.float()
            y = nn.functional.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), bias, self.eps)
            return y.to(x.dtype)
