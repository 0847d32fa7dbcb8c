"""The mixda module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import ModelConfig, get
from ..modules import ComponentModule, build_child
from .spec import MixDA


class MixDAModule(ComponentModule):
    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        kids = get(MixDA.type).children(cfg, model)
        self.std, self.gate_kind = model.init_std, cfg["gate"]
        self.gate = nn.Linear(model.d_model, cfg["n_adapters"])
        self.ffn = build_child(kids["ffn"], model)
        self.adapters = nn.ModuleList([build_child(kids[f"adapters.{i}"], model) for i in range(cfg["n_adapters"])])

    def reset_parameters(self):
        nn.init.normal_(self.gate.weight, std=self.std)
        nn.init.zeros_(self.gate.bias)  # equal gates to start with
        self.ffn.reset_parameters()
        for adapter in self.adapters:
            adapter.reset_parameters()
            nn.init.zeros_(adapter.down_proj.weight)  # the block starts as its FFN (spec.py)

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        logits = self.gate(x)
        g = torch.softmax(logits, dim=-1) if self.gate_kind == "softmax" else torch.sigmoid(logits)
        y = self.ffn(x)
        for i, adapter in enumerate(self.adapters):
            y = y + g[..., i:i + 1] * adapter(x)
        return y
