"""Feed-forward MLP, gated (SwiGLU, GeGLU) or plain (GeLU, ReLU, SiLU).

`gelu_tanh` (GPT-2's gelu_new) and `geglu_tanh` (Gemma's gated form) use the tanh approximation
gelu(x) ~ 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), 9 FLOPs per element.

Gated (Shazeer, 2020):   y = W_down( act(W_gate x) * (W_up x) )
Plain:                   y = W_down( act(W_up x) )
    x: [B, T, d];  W_gate, W_up: [d_ff, d];  W_down: [d, d_ff]

Default d_ff: gated, 8d/3 rounded up to `multiple_of` (Llama: d=4096 gives 11008); plain, 4d.
FLOPs per token: 2 d d_ff per projection (3 gated, 2 plain), plus the activation on d_ff
elements at the costs in ACTIVATION_FLOPS (one transcendental = 1 FLOP) and 1 for the gate's
multiply. Initialisation N(0, init_std); W_down N(0, init_std / sqrt(2 n_sublayers)).
"""
from __future__ import annotations

import math

from ...costs import ACTIVATION_FLOPS
from ... import limits as L
from ..base import CheckIssue, Component, Flops, register

ACTIVATIONS = {"swiglu": ("silu", True), "geglu": ("gelu", True), "geglu_tanh": ("gelu_tanh", True),
               "silu": ("silu", False), "gelu": ("gelu", False), "gelu_tanh": ("gelu_tanh", False),
               "relu": ("relu", False)}


@register
class MLP(Component):
    type = "mlp"
    module = "archspec.components.mlp.module:MLPModule"
    summary = "feed-forward network (SwiGLU / GeGLU / GeLU / ReLU / SiLU; tanh-approximate GeLU)"
    schema = {
        "properties": {
            "activation": {"enum": sorted(ACTIVATIONS), "default": "swiglu",
                           "description": "gated (swiglu, geglu, geglu_tanh) or plain (gelu, gelu_tanh, relu, "
                                          "silu); _tanh: the tanh approximation of GeLU"},
            "d_ff": {"type": "integer", "minimum": 1, **L.WIDTH.schema(),
                     "description": "hidden width; default 8d/3 rounded up to multiple_of when "
                                    "gated, else 4d"},
            "multiple_of": {"type": "integer", "minimum": 1, **L.WIDTH.schema(), "default": 256,
                            "description": "rounding of the default gated d_ff"},
            "bias": {"type": "boolean", "default": False, "description": "biases on projections"},
        },
    }
    example = {"activation": "swiglu", "d_ff": 96}

    def derive(self, cfg, model):
        if cfg.get("d_ff") is None:
            if ACTIVATIONS[cfg["activation"]][1]:
                m = cfg["multiple_of"]
                cfg["d_ff"] = m * math.ceil(int(8 * model.d_model / 3) / m)
            else:
                cfg["d_ff"] = 4 * model.d_model
        return cfg

    def check(self, cfg, model, written=frozenset()):
        if cfg["d_ff"] > 64 * model.d_model:
            return [CheckIssue("d_ff", f"d_ff={cfg['d_ff']} is over 64 x d_model={model.d_model}",
                               "did you mean a multiplier, e.g. `${d_model} * 4`?")]
        return []

    def own_param_shapes(self, cfg, model):
        d, f = model.d_model, cfg["d_ff"]
        names = ["gate_proj", "up_proj"] if ACTIVATIONS[cfg["activation"]][1] else ["up_proj"]
        shapes = {f"{n}.weight": (f, d) for n in names}
        shapes["down_proj.weight"] = (d, f)
        if cfg["bias"]:
            shapes.update({f"{n}.bias": (f,) for n in names})
            shapes["down_proj.bias"] = (d,)
        return shapes

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        d, f = model.d_model, cfg["d_ff"]
        act, gated = ACTIVATIONS[cfg["activation"]]
        n_proj = 3 if gated else 2
        other = f * (ACTIVATION_FLOPS[act] + (1 if gated else 0))
        if cfg["bias"]:
            other += (n_proj - 1) * f + d
        return Flops(matmul=seq_len * 2 * d * f * n_proj, other=seq_len * other)

    def own_activation_bytes(self, cfg, model, seq_len):
        d, f = model.d_model, cfg["d_ff"]
        gated = ACTIVATIONS[cfg["activation"]][1]
        # input x; gated: gate pre-activation, act(gate), up, product; plain: pre- and post-activation
        return seq_len * model.dtype_bytes * (d + (4 if gated else 2) * f)
