"""Token embedding.

    tokens: [B, T] int64  ->  x: [B, T, d],  x[b, t] = W[tokens[b, t]],  W: [vocab_size, d]

A lookup, so 0 FLOPs. Initialised N(0, init_std).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Component, ComponentModule, ModelConfig, register


@register
class Embedding(Component):
    type = "embedding"
    role = "embedding"
    summary = "token embedding table [vocab_size, d_model]"
    schema = {"properties": {}}

    def param_shapes(self, cfg, model):
        return {"weight": (model.vocab_size, model.d_model)}

    def activation_bytes(self, cfg, model, seq_len):
        return 8 * seq_len  # the int64 token ids, kept for the embedding's backward

    class Module(ComponentModule):
        def __init__(self, cfg: dict, model: ModelConfig):
            super().__init__()
            self.init_std = model.init_std
            self.weight = nn.Parameter(torch.empty(model.vocab_size, model.d_model))

        def reset_parameters(self):
            nn.init.normal_(self.weight, mean=0.0, std=self.init_std)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return nn.functional.embedding(tokens, self.weight)
