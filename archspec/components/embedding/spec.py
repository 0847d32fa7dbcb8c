"""Token embedding.

    tokens: [B, T] int64  ->  x: [B, T, d],  x[b, t] = W[tokens[b, t]],  W: [vocab_size, d]

A lookup, so 0 FLOPs. Initialised N(0, init_std).
"""
from __future__ import annotations

from ..base import Component, register


@register
class Embedding(Component):
    type = "embedding"
    module = "archspec.components.embedding.module:EmbeddingModule"
    role = "embedding"
    summary = "token embedding table [vocab_size, d_model]"
    schema = {"properties": {}}

    def own_param_shapes(self, cfg, model):
        return {"weight": (model.vocab_size, model.d_model)}

    def own_activation_bytes(self, cfg, model, seq_len):
        return 8 * seq_len  # the int64 token ids, kept for the embedding's backward
