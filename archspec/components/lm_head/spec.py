"""Language-model head: final hidden states to vocabulary logits.

    x: [B, T, d]  ->  logits: [B, T, vocab_size],  logits = x W^T,  W: [vocab_size, d]

With `tie_embeddings` the head reuses the embedding table and owns no parameters.
FLOPs: 2 * d * vocab_size per token (one MAC per weight).
"""
from __future__ import annotations

from ..base import Component, Flops, register


@register
class LMHead(Component):
    type = "lm_head"
    module = "archspec.components.lm_head.module:LMHeadModule"
    role = "head"
    summary = "output projection to vocabulary logits (shares the embedding when tied)"
    schema = {"properties": {}}

    def own_param_shapes(self, cfg, model):
        return {} if model.tie_embeddings else {"weight": (model.vocab_size, model.d_model)}

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        return Flops(matmul=2 * seq_len * model.d_model * model.vocab_size)

    def own_activation_bytes(self, cfg, model, seq_len):
        # its input, and the logits the cross-entropy keeps (in float32)
        return seq_len * (model.d_model * model.dtype_bytes + model.vocab_size * 4)
