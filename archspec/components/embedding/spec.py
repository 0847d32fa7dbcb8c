"""Token embedding, with the published models' options (`model:` settings).

    tokens: [B, T] int64  ->  x: [B, T, d],  x[b, t] = W[tokens[b, t]],  W: [vocab_size, d]
    learned_positions (GPT-2's wpe):  x[b, t] += P[start + t],  P: [max_seq_len, d]
    scale_embeddings (Gemma):         x <- x * sqrt(d)  (the factor rounded to the model dtype)

A lookup, so 0 FLOPs, plus T d adds for the positions and T d multiplies for the scale.
Initialised N(0, init_std) (both tables). A tied LM head reads W itself, unscaled.
"""
from __future__ import annotations

from ..base import Component, Flops, register


@register
class Embedding(Component):
    type = "embedding"
    module = "archspec.components.embedding.module:EmbeddingModule"
    role = "embedding"
    summary = "token embedding table [vocab_size, d_model]"
    schema = {"properties": {}}

    def own_param_shapes(self, cfg, model):
        shapes = {"weight": (model.vocab_size, model.d_model)}
        if model.learned_positions:
            shapes["position_weight"] = (model.max_seq_len, model.d_model)
        return shapes

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        return Flops(other=seq_len * model.d_model * (int(model.learned_positions) + int(model.scale_embeddings)))

    def own_activation_bytes(self, cfg, model, seq_len):
        return 8 * seq_len  # the int64 token ids, kept for the embedding's backward
