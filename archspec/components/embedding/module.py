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
        self.scale = model.d_model ** 0.5 if model.scale_embeddings else None
        self.weight = nn.Parameter(torch.empty(model.vocab_size, model.d_model))
        if model.learned_positions:
            self.position_weight = nn.Parameter(torch.empty(model.max_seq_len, model.d_model))
        else:
            self.position_weight = None

    def reset_parameters(self):
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)
        if self.position_weight is not None:
            nn.init.normal_(self.position_weight, mean=0.0, std=self.init_std)

    def forward(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """tokens [B, T] (or [B], one position) at positions start, start + 1, ... -> [B, (T,) d]."""
        x = nn.functional.embedding(tokens, self.weight)
        if self.position_weight is not None:
            t = tokens.shape[1] if tokens.dim() == 2 else 1
            if start + t > self.position_weight.shape[0]:
                raise ValueError(f"positions {start}..{start + t - 1}: the learned position embedding "
                                 f"covers max_seq_len = {self.position_weight.shape[0]} positions "
                                 "(model: max_seq_len)")
            positions = self.position_weight[start:start + t]
            x = x + (positions if tokens.dim() == 2 else positions[0])
        if self.scale is not None:
            x = x * torch.tensor(self.scale, dtype=x.dtype)  # Gemma rounds the factor to the dtype
        return x
