"""Mixture of domain adapters (MixDA, Diao et al. 2023): a feed-forward layer with n bottleneck
adapters beside it, mixed per token by a learned gate and added to the FFN's output. The FFN
keeps the old domain's knowledge (freeze it: `freeze: [D.ffn]`, docs/spec.md), the adapters
learn the new domains, and the gate picks among them per token.

    x: [B, T, d] -> y: [B, T, d]
    y_t = ffn(x_t) + sum_i g_{t,i} adapter_i(x_t)
    g_t = softmax(W_g x_t + b_g)     (gate: softmax; or sigmoid, each adapter on its own)
          W_g: [n, d], b_g: [n]      n = n_adapters
    ffn:        an mlp of width d_ff (a child, `ffn`)
    adapter_i:  an mlp of width `bottleneck` (children `adapters.0` ... `adapters.{n-1}`)

The adapters' output projections start at zero (as MixDA's reference does), so a freshly built
block computes exactly its FFN: adding adapters to a trained backbone changes nothing until
they train. The reference gates FFN and adapters together through a small MLP; here the gate is
one linear map over the adapters and the FFN keeps weight 1, the form the issue asks for
(adapters added to the frozen FFN's output).

FLOPs for one sequence (1 FLOP = one multiply or one add): the gate 2 d n T (matmul); per
token its bias n, the gate's activation n SOFTMAX_FLOPS_PER_ELEMENT (softmax) or n SIGMOID_FLOPS
(sigmoid), the scaling g_i a_i (n d) and the sums into the FFN's output (n d); the FFN's and the
adapters' as mlp counts them. Inference state: none. Activation memory per token: g (n values)
and the adapters' outputs (n d, kept for the gate's gradient), less the n copies of the shared
input x that the adapters' own estimates count beyond the FFN's.
"""
from __future__ import annotations

from ... import limits as L
from ...costs import SOFTMAX_FLOPS_PER_ELEMENT
from ..base import CheckIssue, Component, Flops, child, register
from ..gated_adapter.spec import SIGMOID_FLOPS
from ..mlp.spec import ACTIVATIONS

GATE_FLOPS = {"softmax": SOFTMAX_FLOPS_PER_ELEMENT, "sigmoid": SIGMOID_FLOPS}


@register
class MixDA(Component):
    type = "mixda"
    module = "archspec.components.mixda.module:MixDAModule"
    summary = "feed-forward layer plus bottleneck domain adapters mixed by a per-token gate (MixDA)"
    schema = {
        "properties": {
            "d_ff": {"type": "integer", "minimum": 1, **L.WIDTH.schema(),
                     "description": "the FFN's hidden width; default as mlp's (gated: 8d/3 rounded up to 256)"},
            "activation": {"enum": sorted(ACTIVATIONS), "default": "swiglu",
                           "description": "the FFN's activation (as mlp's)"},
            "n_adapters": {"type": "integer", "minimum": 1, **L.ADAPTERS.schema(), "default": 2,
                           "description": "domain adapters beside the FFN"},
            "bottleneck": {"type": "integer", "minimum": 1, **L.WIDTH.schema(), "default": 64,
                           "description": "hidden width of each adapter mlp"},
            "adapter_activation": {"enum": sorted(ACTIVATIONS), "default": "gelu",
                                   "description": "the adapters' activation (as mlp's)"},
            "gate": {"enum": sorted(GATE_FLOPS), "default": "softmax",
                     "description": "per-token weights of the adapters: softmax (they sum to 1) or "
                                    "sigmoid (each in (0, 1) on its own)"},
        },
    }
    example = {"d_ff": 96, "n_adapters": 2, "bottleneck": 16}

    def derive(self, cfg, model):
        cfg["d_ff"] = self._ffn(cfg, model).config["d_ff"]
        return cfg

    def check(self, cfg, model, written=frozenset()):
        if cfg["gate"] == "softmax" and cfg["n_adapters"] == 1:
            key = "gate" if "gate" in written else "n_adapters"
            return [CheckIssue(key, "n_adapters is 1 with gate softmax: a softmax over one adapter is "
                               "always 1, so the gate would learn nothing",
                               "use `gate: sigmoid` for one adapter, or give n_adapters >= 2")]
        return []

    @staticmethod
    def _ffn(cfg, model):
        return child("mlp", model, d_ff=cfg.get("d_ff"), activation=cfg["activation"])

    def children(self, cfg, model):
        adapter = child("mlp", model, d_ff=cfg["bottleneck"], activation=cfg["adapter_activation"])
        return {"ffn": self._ffn(cfg, model), **{f"adapters.{i}": adapter for i in range(cfg["n_adapters"])}}

    def own_param_shapes(self, cfg, model):
        n = cfg["n_adapters"]
        return {"gate.weight": (n, model.d_model), "gate.bias": (n,)}

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        d, n = model.d_model, cfg["n_adapters"]
        return Flops(matmul=2 * d * n * seq_len, other=seq_len * n * (1 + GATE_FLOPS[cfg["gate"]] + 2 * d))

    def own_activation_bytes(self, cfg, model, seq_len):
        # g (softmax's or sigmoid's output, which the products keep too) and each adapter's
        # output; the input x, saved once, is counted by each of the n + 1 children: n copies off
        n, d = cfg["n_adapters"], model.d_model
        return seq_len * model.dtype_bytes * (n + n * d - n * d)
