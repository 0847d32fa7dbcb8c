"""The gated_adapter module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import ModelConfig, get
from ..modules import ComponentModule, build_child
from .spec import GatedAdapter


class GatedAdapterModule(ComponentModule):
    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        self.std = model.init_std
        self.gate = nn.Linear(model.d_model, 1)
        self.adapter = build_child(get(GatedAdapter.type).children(cfg, model)["adapter"], model)

    def reset_parameters(self):
        nn.init.normal_(self.gate.weight, std=self.std)
        nn.init.zeros_(self.gate.bias)  # gates start at 1/2
        self.adapter.reset_parameters()

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        return torch.sigmoid(self.gate(x)) * self.adapter(x)
