"""The embedding module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import ModelConfig
from ..modules import ComponentModule


class EmbeddingModule(ComponentModule):
    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        self.init_std = model.init_std
        self.weight = nn.Parameter(torch.empty(model.vocab_size, model.d_model))

    def reset_parameters(self):
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(tokens, self.weight)
