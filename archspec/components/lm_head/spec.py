"""Language-model head: final hidden states to vocabulary logits.

    x: [B, T, d]  ->  logits: [B, T, vocab_size],  logits = x W^T,  W: [vocab_size, d]
    logit_softcap c (`model:`, Gemma-2):  logits <- c tanh(logits / c)

With `tie_embeddings` the head reuses the embedding table and owns no parameters.
FLOPs: 2 * d * vocab_size per token (one MAC per weight); soft-capping 3 per logit.
"""
from __future__ import annotations

from ...costs import SOFTCAP_FLOPS_PER_ELEMENT
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
        cap = SOFTCAP_FLOPS_PER_ELEMENT * seq_len * model.vocab_size if model.logit_softcap is not None else 0
        return Flops(matmul=2 * seq_len * model.d_model * model.vocab_size, other=cap)

    def own_activation_bytes(self, cfg, model, seq_len):
        # its input, and the logits the cross-entropy keeps (in float32); soft-capped, also
        # tanh's output (its backward reads it), in the model dtype
        capped = model.vocab_size * model.dtype_bytes if model.logit_softcap is not None else 0
        return seq_len * (model.d_model * model.dtype_bytes + model.vocab_size * 4 + capped)
