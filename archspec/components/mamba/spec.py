"""Mamba (Gu & Dao, 2023): the selective state-space mixer (Mamba1).

    x: [B, T, d];  E = expand d (inner width);  N = d_state;  R = dt_rank (auto: ceil(d / 16));
    k = d_conv
    [u0, z] = x W_in^T                                   W_in: [2E, d]     -> [B, T, E] each
    u = silu(causal depthwise conv_k(u0) + b_conv)       conv1d.weight: [E, 1, k]
    [dt0, Bm, Cm] = u W_x^T                              W_x: [R + 2N, E]  -> [B, T, R], [B, T, N] x 2
    (inner_norms: dt0, Bm, Cm = rmsnorm(dt0), rmsnorm(Bm), rmsnorm(Cm), each with its own
     weight [R], [N], [N], as Jamba's Mamba layers; with inner_norm_weights: false without
     weights, x / sqrt(mean(x^2) + eps), as Falcon-Mamba's)
    dt = softplus(dt0 W_dt^T + b_dt)                     W_dt: [E, R]      -> [B, T, E]
    A = -exp(A_log)                                      A_log: [E, N]
    h_t = exp(dt_t A) * h_{t-1} + (dt_t u_t) Bm_t        h: [B, E, N] (float32)
    y_t = h_t Cm_t + D u_t                               D: [E]
    out = (y * silu(z)) W_out^T                          W_out: [d, E]     -> [B, T, d]

Parameters: 3 d E + E (k + 2R + 3N + 3) with the conv bias and no linear biases (d = 768:
3,770,880), + R + 2N with inner_norms (weights init 1; none when weightless).
Initialisation as the reference: A_log = log(1..N) in every row; D = 1; b_dt the
inverse softplus of dt ~ log-uniform in [dt_min, dt_max], floored at dt_init_floor; W_dt
uniform in +-dt_scale R^-1/2 (or that constant); the conv torch's default for Conv1d;
W_in, W_x ~ N(0, init_std); W_out ~ N(0, init_std / sqrt(2 n_sublayers)).

The training path is the chunked parallel scan of archspec/ops/ssm/selective_scan.py (a custom
autograd function whose backward is the reverse scan); `step` is the decoding form.

FLOPs for one sequence (1 FLOP = one multiply or one add; exp, log = 1 each):
  matmul: T (4 d E + 2 E (R + 2N) + 2 R E + 2 E d) for the projections, plus 2 T E N for the
          scan's contraction with Cm (a batched matmul);
  other:  the conv, conv_flops(T, E, k, bias, silu) (archspec/ops/conv);
          dt: 1 (bias) + 3 (softplus: exp, add, log) per channel and token; A: 2 E N once;
          the scan, selective_scan_flops (~8 per token, channel and state: see that module,
          and how it compares with the authors' 9 B L E N); the gate y silu(z): 5 per channel
          and token; linear biases when enabled; inner_norms, 4 (R + 2N) + 6 per token (three
          RMSNorms, as archspec/components/rmsnorm.py counts them), 3 (R + 2N) + 6 weightless.
Inference state per sequence: the conv's last k - 1 inputs, (k - 1) E in the model dtype, and
h, E N in float32.
"""
from __future__ import annotations

import math

from ...costs import ACTIVATION_FLOPS, RMSNORM_FLOPS_PER_ELEMENT, RMSNORM_FLOPS_PER_GROUP, SOFTPLUS_FLOPS_PER_ELEMENT
from ...ops.conv import conv_flops
from ...ops.ssm import SCAN_CHUNK, selective_scan_flops
from ... import limits as L
from ..base import CheckIssue, Component, Flops, ModelConfig, register

GATE_FLOPS = ACTIVATION_FLOPS["silu"] + 1  # silu and the product

DT_INIT_SCHEMA = {
    "dt_min": {"type": "number", "exclusiveMinimum": 0, **L.DT.schema(), "default": 0.001,
               "description": "smallest initial step size dt (log-uniform in [dt_min, dt_max])"},
    "dt_max": {"type": "number", "exclusiveMinimum": 0, **L.DT.schema(), "default": 0.1,
               "description": "largest initial step size dt"},
    "dt_init_floor": {"type": "number", "minimum": 0, **L.DT.schema(), "default": 1e-4,
                      "description": "initial dt values are floored here before the inverse softplus"},
}
CONV_SCHEMA = {
    "d_conv": {"type": "integer", "minimum": 1, **L.CONV.schema(), "default": 4,
               "description": "kernel size of the causal depthwise convolution"},
    "expand": {"type": "number", "exclusiveMinimum": 0, **L.EXPAND.schema(), "default": 2,
               "description": "inner width E = expand * d_model"},
    "conv_bias": {"type": "boolean", "default": True, "description": "bias on the convolution"},
    "bias": {"type": "boolean", "default": False, "description": "biases on in_proj and out_proj"},
}


def inner_width(cfg: dict, model: ModelConfig) -> int:
    return int(round(cfg["expand"] * model.d_model))


def check_inner_width(cfg: dict, model: ModelConfig) -> list[CheckIssue]:
    width = cfg["expand"] * model.d_model
    if abs(width - round(width)) > 1e-9:
        return [CheckIssue("expand", f"expand * d_model = {cfg['expand']} * {model.d_model} = {width:g} "
                           "is not a whole number of channels",
                           "pick expand so that expand * d_model is an integer (Mamba uses 2)")]
    return []


def check_dt_range(cfg: dict, written: frozenset) -> list[CheckIssue]:
    if cfg["dt_min"] > cfg["dt_max"]:
        key = "dt_max" if "dt_max" in written else "dt_min"
        return [CheckIssue(key, f"dt_min={cfg['dt_min']} is above dt_max={cfg['dt_max']}",
                           "initial step sizes are drawn log-uniformly from [dt_min, dt_max]; "
                           "set dt_min <= dt_max")]
    return []


@register
class Mamba(Component):
    type = "mamba"
    module = "archspec.components.mamba.module:MambaModule"
    summary = "Mamba1 selective state-space mixer (selective scan)"
    schema = {
        "properties": {
            "d_state": {"type": "integer", "minimum": 1, **L.STATE.schema(), "default": 16,
                        "description": "state size N per channel"},
            **CONV_SCHEMA,
            "dt_rank": {"anyOf": [{"type": "integer", "minimum": 1, **L.WIDTH.schema(), "description": "rank R"},
                                  {"type": "string", "enum": ["auto"],
                                   "description": "ceil(d_model / 16)"}],
                        "default": "auto",
                        "description": "rank R of the dt projection (auto = ceil(d_model / 16))"},
            **DT_INIT_SCHEMA,
            "dt_init": {"enum": ["random", "constant"], "default": "random",
                        "description": "dt_proj.weight uniform in +-dt_scale R^-1/2, or that constant"},
            "dt_scale": {"type": "number", "exclusiveMinimum": 0, **L.INIT_SCALE.schema(), "default": 1.0,
                         "description": "scale of dt_proj's initial weights"},
            "inner_norms": {"type": "boolean", "default": False,
                            "description": "RMSNorms (learned scale, init 1) on dt0, B and C after "
                                           "x_proj, as Jamba's Mamba layers"},
            "inner_norm_weights": {"type": "boolean", "default": True,
                                   "description": "the inner RMSNorms learn a scale (Jamba); false: "
                                                  "weightless (Falcon-Mamba)"},
            "inner_norm_eps": {"type": "number", "exclusiveMinimum": 0, **L.EPS.schema(), "default": 1e-6,
                               "description": "eps of the inner RMSNorms (Jamba: 1e-6)"},
        },
    }
    example = {"d_state": 8, "expand": 2}

    def derive(self, cfg, model):
        if cfg.get("dt_rank") in (None, "auto"):
            cfg["dt_rank"] = math.ceil(model.d_model / 16)
        return cfg

    def check(self, cfg, model, written=frozenset()):
        issues = check_inner_width(cfg, model) + check_dt_range(cfg, written)
        if not cfg["inner_norms"] and "inner_norm_weights" in written:
            issues.append(CheckIssue("inner_norm_weights", "inner_norm_weights is set but inner_norms "
                                     "is false", "set inner_norms: true, or drop inner_norm_weights"))
        return issues

    @staticmethod
    def _dims(cfg, model):
        return model.d_model, inner_width(cfg, model), cfg["d_state"], cfg["dt_rank"], cfg["d_conv"]

    def own_param_shapes(self, cfg, model):
        d, e, n, r, k = self._dims(cfg, model)
        shapes = {"in_proj.weight": (2 * e, d)}
        if cfg["bias"]:
            shapes["in_proj.bias"] = (2 * e,)
        shapes["conv1d.weight"] = (e, 1, k)
        if cfg["conv_bias"]:
            shapes["conv1d.bias"] = (e,)
        shapes.update({"x_proj.weight": (r + 2 * n, e), "dt_proj.weight": (e, r), "dt_proj.bias": (e,),
                       "A_log": (e, n), "D": (e,), "out_proj.weight": (d, e)})
        if cfg["bias"]:
            shapes["out_proj.bias"] = (d,)
        if cfg["inner_norms"] and cfg["inner_norm_weights"]:
            shapes.update({"dt_layernorm.weight": (r,), "b_layernorm.weight": (n,), "c_layernorm.weight": (n,)})
        return shapes

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        d, e, n, r, k = self._dims(cfg, model)
        t = seq_len
        scan = selective_scan_flops(t, e, n, has_d=True, chunk=SCAN_CHUNK)
        matmul = t * (2 * d * 2 * e + 2 * e * (r + 2 * n) + 2 * r * e + 2 * e * d) + scan.matmul
        other = (conv_flops(t, e, k, cfg["conv_bias"], "silu").other
                 + t * e * (1 + SOFTPLUS_FLOPS_PER_ELEMENT) + 2 * e * n + scan.other + t * e * GATE_FLOPS)
        if cfg["bias"]:
            other += t * (2 * e + d)
        if cfg["inner_norms"]:
            per_element = RMSNORM_FLOPS_PER_ELEMENT - (0 if cfg["inner_norm_weights"] else 1)  # no weight
            other += t * (per_element * (r + 2 * n) + 3 * RMSNORM_FLOPS_PER_GROUP)
        return Flops(matmul=matmul, other=other)

    def own_notes(self, cfg, model):
        return ["selective-scan FLOPs are those of the chunked parallel scan that runs (about 8 "
                "elementwise + 2 matmul per token, channel and state); the authors' estimate for "
                "their sequential CUDA scan is 9"]

    def own_state_bytes(self, cfg, model, seq_len):
        _, e, n, _, k = self._dims(cfg, model)
        return (k - 1) * e * model.dtype_bytes + e * n * 4

    def own_activation_bytes(self, cfg, model, seq_len):
        d, e, n, r, k = self._dims(cfg, model)
        t, nb = seq_len, model.dtype_bytes
        # What autograd saves in one training forward, per token (measured with
        # saved_tensors_hooks in tests/test_contract.py: exact in float32 and bfloat16):
        #   model dtype: in_proj's input (d); its output [u0, z] (2E: the conv reads u0, the
        #   gate's silu reads z, both views of it); the conv's min(k - 1, T) shifted copies of
        #   u0 and its pre-activation (E); u = silu(conv) (E); x_proj's output [dt0, Bm, Cm]
        #   (R + 2N: dt_proj reads dt0, the scan Bm and Cm); the gate's operands y and silu(z)
        #   (2E) and out_proj's input (E);
        #   float32: dt before and after softplus (2E); in a low-precision model also the
        #   float32 copies of u, Bm, Cm the scan reads (E + 2N); one float32 state [E, N] per
        #   chunk of SCAN_CHUNK tokens (the scan's backward recomputes the rest).
        # Not per sequence, so not counted: A = -exp(A_log) [E, N] (and in low precision a
        # float32 copy of D), saved once per forward.
        shifted = min(k - 1, t)  # the conv saves one shifted copy of u0 per tap that reaches back
        elems = d + (shifted + 7) * e + r + 2 * n
        f32 = 2 * e + (0 if nb == 4 else e + 2 * n)
        chunks = -(-t // SCAN_CHUNK)
        return t * (elems * nb + 4 * f32 + self._inner_norm_activation_bytes(cfg, model)) + chunks * e * n * 4

    def _inner_norm_activation_bytes(self, cfg, model) -> int:
        # Per token, measured as above: each float32 RMSNorm saves x / rms (R or N) and 1 / rms
        # (one per norm); dt_proj now saves the normalised dt0 (R, model dtype). In float32 the
        # norms read x_proj's output in place (still saved) and the scan saves the normalised
        # Bm, Cm (2N) themselves. In low precision the norms save float32 copies of their inputs
        # (R + 2N), the scan's float32 copies of Bm, Cm are counted above, and x_proj's output
        # is no longer saved. Per forward, not counted: the weights' float32 copies.
        # Weightless (Falcon-Mamba): no weight to differentiate, so x / rms is not saved; the
        # float32 input (read in place in float32) and 1 / rms are.
        if not cfg["inner_norms"]:
            return 0
        _, _, n, r, _ = self._dims(cfg, model)
        nb = model.dtype_bytes
        per_element = 8 if cfg["inner_norm_weights"] else 4
        if nb == 4:
            return per_element * (r + 2 * n) + 3 * 4
        return per_element * (r + 2 * n) + 3 * 4 + nb * r - nb * (r + 2 * n)
