"""The layernorm module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import ModelConfig
from ..modules import ComponentModule


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
        bias = None if self.bias is None else self.bias.float()
        y = nn.functional.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), bias, self.eps)
        return y.to(x.dtype)
