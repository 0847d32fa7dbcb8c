"""The layernorm module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import ModelConfig
from ..modules import ComponentModule, at_least_float32


class LayerNormModule(ComponentModule):
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
        # float32 for float32 / 16-bit models, float64 for float64 ones
        bias = None if self.bias is None else at_least_float32(self.bias)
        y = nn.functional.layer_norm(at_least_float32(x), (x.shape[-1],), at_least_float32(self.weight),
                                     bias, self.eps)
        return y.to(x.dtype)
