"""Mamba2 (Dao & Gu, 2024): the SSD mixer, a state-space model with one scalar decay per head.

    x: [B, T, d];  E = expand d;  P = head_dim, H = E / P heads;  G = n_groups (head h reads group
    h // (H / G));  N = d_state;  k = d_conv
    [z, xBC, dt0] = x W_in^T              W_in: [2E + 2GN + H, d] -> [B, T, E], [B, T, E + 2GN], [B, T, H]
    [u, Bm, Cm] = silu(causal depthwise conv_k(xBC) + b_conv)     conv1d.weight: [E + 2GN, 1, k]
                                          -> u [B, T, H, P], Bm and Cm [B, T, G, N]
    dt = softplus(dt0 + dt_bias)          [B, T, H] (clamped to dt_limit when set)
    A = -exp(A_log)                       [H]
    h_t = exp(dt_t A) h_{t-1} + dt_t u_t Bm_t^T      h: [B, H, P, N] (float32)
    y_t = h_t Cm_t + D u_t                           D: [H]
    out = RMSNorm_G(y * silu(z)) W_out^T             norm.weight: [E], W_out: [d, E]

The norm is gated with norm_before_gate false (Mamba2's default): normalise y * silu(z), in G
groups of E / G channels. Parameters: d (2E + 2GN + H) + (E + 2GN)(k + 1) + 3H + E + E d with
the conv bias and no linear biases (d = 768: 3,764,552). Initialisation as the reference:
A = uniform in A_init_range, A_log = log A; D = 1; dt_bias the inverse softplus of dt
log-uniform in [dt_min, dt_max], floored at dt_init_floor; norm weight 1; the conv torch's
default for Conv1d; W_in ~ N(0, init_std); W_out ~ N(0, init_std / sqrt(2 n_sublayers)).

The training path is the chunked SSD of archspec/ops/ssm/ssd.py (four steps: diagonal blocks,
chunk states, state passing, state to output) on chunks of min(chunk_size, T) tokens, T padded
to a multiple; `step` is the decoding form (conv state + SSM state).

FLOPs for one sequence (1 FLOP = one multiply or one add; exp, log = 1 each):
  matmul: T (2 d (2E + 2GN + H) + 2 E d) for the projections, plus SSD's five contractions
          on the padded length (ssd_flops; Q = min(chunk_size, T), c = ceil(T / Q)):
          2 c G Q^2 N + 2 c H Q^2 P + 4 c H Q P N + 2 H (c+1)^2 P N;
  other:  the conv, conv_flops(T, E + 2GN, k, bias, silu); dt: 1 (bias) +
          3 (softplus) per head and token, 2 more with dt_limit; A: 2H once; SSD's elementwise
          work (ssd_flops: decays, masks, the padding included); the gated norm,
          gated_rmsnorm_flops(T E, T G) (archspec/ops/norm); linear biases when enabled.
Inference state per sequence: the conv's last k - 1 inputs, (k - 1)(E + 2GN) in the model
dtype, and h, H P N in float32.
"""
from __future__ import annotations

import math

from ...costs import SOFTPLUS_FLOPS_PER_ELEMENT
from ...ops.conv import conv_flops
from ...ops.norm import dtype_unsupported, gated_rmsnorm_flops, width_unsupported
from ...ops.ssm import ssd_flops
from ... import limits as L
from ..base import CheckIssue, Component, Flops, register
from ..mamba.spec import CONV_SCHEMA, DT_INIT_SCHEMA, check_dt_range, check_inner_width, inner_width


def _near_divisors(n: int, target: int, count: int = 3) -> str:
    # pairs (k, n / k) up to sqrt(n): a hint for a wide inner width costs a thousand steps, not a million
    divisors = {d for k in range(1, math.isqrt(n) + 1) if n % k == 0 for d in (k, n // k)}
    return ", ".join(map(str, sorted(sorted(divisors, key=lambda k: (abs(k - target), k))[:count])))


@register
class Mamba2(Component):
    type = "mamba2"
    module = "archspec.components.mamba2.module:Mamba2Module"
    renamed = {"headdim": "head_dim", "ngroups": "n_groups"}
    has_kernels = True
    summary = "Mamba2 SSD mixer (chunked state space duality, gated RMSNorm)"
    schema = {
        "properties": {
            "d_state": {"type": "integer", "minimum": 1, **L.STATE.schema(), "default": 128,
                        "description": "state size N per head and channel"},
            **CONV_SCHEMA,
            "head_dim": {"type": "integer", "minimum": 1, **L.HEAD_DIM.schema(), "default": 64,
                        "description": "channels per head P; heads H = expand * d_model / head_dim"},
            "n_groups": {"type": "integer", "minimum": 1, **L.HEADS.schema(), "default": 1,
                        "description": "groups G of B/C shared by H / G heads each (like GQA)"},
            "chunk_size": {"type": "integer", "minimum": 1, **L.CHUNK.schema(), "default": 256,
                           "description": "tokens per chunk of the SSD training path "
                                          "(min(chunk_size, T) is used)"},
            "A_init_range": {"type": "array", "minItems": 2, "maxItems": 2,
                             "items": {"type": "number", "exclusiveMinimum": 0, **L.DECAY.schema()},
                             "default": [1, 16],
                             "description": "[lo, hi]: -A per head starts uniform in this range"},
            **DT_INIT_SCHEMA,
            "dt_limit": {"type": ["array", "null"], "minItems": 2, "maxItems": 2,
                         "items": {"type": "number", "minimum": 0, **L.DECAY.schema()}, "default": None,
                         "description": "[lo, hi] clamp of dt after softplus (null: none, the "
                                        "reference's (0, inf))"},
            "norm_before_gate": {"type": "boolean", "default": False,
                                 "description": "gated RMSNorm order: false normalises y * silu(z) "
                                                "(Mamba2), true norm(y) * silu(z)"},
            "norm_eps": {"type": "number", "exclusiveMinimum": 0, **L.EPS.schema(), "default": 1e-5,
                         "description": "eps of the gated RMSNorm"},
        },
    }
    example = {"d_state": 16, "head_dim": 16, "n_groups": 2, "chunk_size": 16}

    def check(self, cfg, model, written=frozenset()):
        issues = check_inner_width(cfg, model) + check_dt_range(cfg, written)
        if issues and issues[0].key == "expand":
            return issues
        e, p, g = inner_width(cfg, model), cfg["head_dim"], cfg["n_groups"]
        if e % p:
            issues.append(CheckIssue(
                "head_dim", f"head_dim={p} does not divide the inner width expand * d_model = {e}",
                f"use a divisor of {e} such as {_near_divisors(e, p)}, or change expand"))
        elif (e // p) % g:
            h = e // p
            issues.append(CheckIssue(
                "n_groups", f"n_groups={g} does not divide the number of heads {h} "
                           f"(= expand * d_model / head_dim = {e} / {p})",
                f"each group serves H / G heads; use a divisor of {h} such as {_near_divisors(h, g)}"))
        lo, hi = cfg["A_init_range"]
        if lo > hi:
            issues.append(CheckIssue("A_init_range", f"A_init_range=[{lo}, {hi}] is empty (lo > hi)",
                                     "write [lo, hi] with lo <= hi, e.g. [1, 16]"))
        if cfg["dt_limit"] is not None and cfg["dt_limit"][0] >= cfg["dt_limit"][1]:
            issues.append(CheckIssue("dt_limit", f"dt_limit={cfg['dt_limit']} is empty (lo >= hi)",
                                     "write [lo, hi] with lo < hi, or null for no clamp"))
        return issues

    @staticmethod
    def _dims(cfg, model):
        e, p = inner_width(cfg, model), cfg["head_dim"]
        return model.d_model, e, e // p, p, cfg["n_groups"], cfg["d_state"], cfg["d_conv"]

    def own_param_shapes(self, cfg, model):
        d, e, h, _, g, n, k = self._dims(cfg, model)
        conv_dim = e + 2 * g * n
        shapes = {"in_proj.weight": (2 * e + 2 * g * n + h, d)}
        if cfg["bias"]:
            shapes["in_proj.bias"] = (2 * e + 2 * g * n + h,)
        shapes["conv1d.weight"] = (conv_dim, 1, k)
        if cfg["conv_bias"]:
            shapes["conv1d.bias"] = (conv_dim,)
        shapes.update({"dt_bias": (h,), "A_log": (h,), "D": (h,), "norm.weight": (e,),
                       "out_proj.weight": (d, e)})
        if cfg["bias"]:
            shapes["out_proj.bias"] = (d,)
        return shapes

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        d, e, h, p, g, n, k = self._dims(cfg, model)
        t = seq_len
        ssd = ssd_flops(t, h, p, g, n, cfg["chunk_size"], has_d=True)
        matmul = t * (2 * d * (2 * e + 2 * g * n + h) + 2 * e * d) + ssd.matmul
        dt = 1 + SOFTPLUS_FLOPS_PER_ELEMENT + (2 if cfg["dt_limit"] is not None else 0)
        other = (conv_flops(t, e + 2 * g * n, k, cfg["conv_bias"], "silu").other
                 + t * h * dt + 2 * h + ssd.other + gated_rmsnorm_flops(t * e, t * g).other)
        if cfg["bias"]:
            other += t * (2 * e + 2 * g * n + h + d)
        return Flops(matmul=matmul, other=other)

    def own_notes(self, cfg, model):
        return [f"SSD FLOPs count what the chunked form computes: T padded to a multiple of "
                f"min(chunk_size={cfg['chunk_size']}, T), and every entry of each diagonal block"]

    def own_state_bytes(self, cfg, model, seq_len):
        _, e, h, p, g, n, k = self._dims(cfg, model)
        return (k - 1) * (e + 2 * g * n) * model.dtype_bytes + h * p * n * 4

    def own_activation_bytes(self, cfg, model, seq_len):
        d, e, h, p, g, n, k = self._dims(cfg, model)
        t, nb = seq_len, model.dtype_bytes
        q = min(cfg["chunk_size"], t)
        c = -(-t // q)
        tp, conv_dim = c * q, e + 2 * g * n
        # What autograd saves in one training forward (measured with saved_tensors_hooks in
        # tests/test_contract.py: exact in float32).
        # Model dtype, per token: in_proj's input (d) and output (2E + 2GN + H: the conv, the
        # softplus and the gate read views of it); the conv's shifted copies (k - 1), its
        # pre-activation and its output [u, Bm, Cm] (3 (E + 2GN) more).
        per_token = d + (2 * e + 2 * g * n + h) + (min(k - 1, t) + 2) * conv_dim
        # Float32 (SSD runs in float32): dt before softplus (and after, when clamped); the
        # operands of dt x: dt, and with padding the padded dt and x (Tp H + Tp E);
        # Cm and Bm in chunk layout (2 Tp G N); per chunk the decay matrix, Cm Bm^T and their
        # product ((2H + G) Q^2), which is what makes long chunks costly; dt x, its decayed
        # copy and the state term (3 Tp E); decays to the chunk end and from its start
        # (2 Tp H); the state-passing operands (H (c+1)^2 + H (c+1) P N) and the entering
        # states (c H P N); the gated norm (y, silu(z), their product, the normalised value,
        # the output: 5E, and 1/rms per group G).
        f32 = t * h * (2 if cfg["dt_limit"] is not None else 1)
        f32 += tp * h + tp * e if tp > t else t * h
        f32 += (2 * tp * g * n + c * q * q * (2 * h + g) + 3 * tp * e + 2 * tp * h
                + h * (c + 1) ** 2 + h * (c + 1) * p * n + c * h * p * n + t * (5 * e + g))
        # In a low-precision model the float32 copies of u, Bm, Cm and z that SSD and the norm
        # read add about 2E + 2GN per token, and out_proj's input is in the model dtype; this
        # estimate leaves those out (tests: within 10%). Not per sequence, not counted: A, the
        # boolean causal masks [Q, Q] and [c+1, c+1].
        return t * per_token * nb + 4 * f32

    def kernels_unsupported(self, cfg, model):
        """The gated norm's kernel normalises rows of the inner width E = expand * d_model in
        groups of E / n_groups: E up to ops.norm's MAX_WIDTH."""
        e = inner_width(cfg, model)
        reason = width_unsupported(e, e // cfg["n_groups"])
        if reason is not None:
            return f"the gated norm over the inner width {e}: {reason}"
        return dtype_unsupported(model.dtype)

    def kernel_launches(self, cfg, model, dtype):
        """The gated RMSNorm's kernels, as Module.forward calls it: y (SSD's output, float32 or
        float64) gated by z (the model dtype) with the weight in the model dtype, E columns in
        n_groups groups; over a training batch's rows (forward and backward) and one decoded
        token's (`step`: forward only)."""
        import torch

        from ...ops.norm import TRAIN_ROWS, kernel_launches
        e, g = inner_width(cfg, model), cfg["n_groups"]
        y_dtype = torch.promote_types(dtype, torch.float32)
        return [launch for rows in (TRAIN_ROWS, 1)
                for launch in kernel_launches(e, y_dtype, rows=rows, gate=True,
                                              norm_before_gate=cfg["norm_before_gate"],
                                              group_size=e // g, z_dtype=dtype, weight_dtype=dtype,
                                              backward=rows > 1)]

