"""Language-model head: final hidden states to vocabulary logits.

    x: [B, T, d]  ->  logits: [B, T, vocab_size],  logits = x W^T,  W: [vocab_size, d]

With `tie_embeddings` the head reuses the embedding table and owns no parameters.
FLOPs: 2 * d * vocab_size per token (one MAC per weight).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Component, ComponentModule, Flops, ModelConfig, register


@register
class LMHead(Component):
    type = "lm_head"
    role = "head"
    summary = "output projection to vocabulary logits (shares the embedding when tied)"
    schema = {"properties": {}}

    def param_shapes(self, cfg, model):
        return {} if model.tie_embeddings else {"weight": (model.vocab_size, model.d_model)}

    def flops(self, cfg, model, seq_len, conv):
        return Flops(matmul=2 * seq_len * model.d_model * model.vocab_size)

    def activation_bytes(self, cfg, model, seq_len):
        # its input, and the logits the cross-entropy keeps (in float32)
        return seq_len * (model.d_model * model.dtype_bytes + model.vocab_size * 4)

    class Module(ComponentModule):
        def __init__(self, cfg: dict, model: ModelConfig):
            super().__init__()
            self.init_std = model.init_std
            self.tied = model.tie_embeddings
            if not self.tied:
                self.weight = nn.Parameter(torch.empty(model.vocab_size, model.d_model))

        def reset_parameters(self):
            if not self.tied:
                nn.init.normal_(self.weight, mean=0.0, std=self.init_std)

        def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
            return nn.functional.linear(x, self.weight if weight is None else weight)
