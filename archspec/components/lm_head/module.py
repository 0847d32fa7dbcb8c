"""The lm_head module (the math, shapes and accounting: spec.py)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import ModelConfig
from ..modules import ComponentModule


class LMHeadModule(ComponentModule):
    def __init__(self, cfg: dict, model: ModelConfig):
        super().__init__()
        self.init_std = model.init_std
        self.tied = model.tie_embeddings
        self.softcap = model.logit_softcap
        if not self.tied:
            self.weight = nn.Parameter(torch.empty(model.vocab_size, model.d_model))

    def reset_parameters(self):
        if not self.tied:
            nn.init.normal_(self.weight, mean=0.0, std=self.init_std)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        logits = nn.functional.linear(x, self.weight if weight is None else weight)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
