"""RMSNorm (Zhang & Sennrich, 2019).

    x: [..., d]  ->  y = x / sqrt(mean(x^2) + eps) * w,   w: [d] (init 1)

`unit_offset: true` (Gemma): y = x / sqrt(mean(x^2) + eps) * (1 + w), w init 0, the sum in
float32 (d more FLOPs per forward; the kernels are not used for it).

Computed in float32 and cast back. FLOPs per token: 4d + 2 (square, sum, scale, weight; the
mean's division and the eps add). Activation memory per token: 8d + 4 bytes (float32 input,
float32 x / rms, float32 1/rms).

Backends: `reference` (archspec.ops.norm.naive) and `triton` (the fused kernel of
archspec/ops/norm; CUDA, or the CPU under TRITON_INTERPRET=1; d_model up to its MAX_WIDTH, else `auto`
keeps the reference). The module also offers `forward_add(x, delta) -> (norm(x + delta),
x + delta)`, one kernel with `triton`, which the pre-norm block uses to fuse each residual add
into the next norm (archspec/codegen/model.py). Same weights, same names.
"""
from __future__ import annotations

from ...ops.norm import dtype_unsupported, width_unsupported
from ... import limits as L
from ..base import Component, Flops, register

NORM_SCHEMA = {"eps": {"type": "number", "exclusiveMinimum": 0, **L.EPS.schema(), "default": 1e-5,
                       "description": "added to the variance before the square root"}}


@register
class RMSNorm(Component):
    type = "rmsnorm"
    role = "norm"
    summary = "root-mean-square norm with a learned scale"
    module = "archspec.components.rmsnorm.module:RMSNormModule"
    has_kernels = True
    schema = {"properties": {**NORM_SCHEMA, "unit_offset": {
        "type": "boolean", "default": False,
        "description": "scale by (1 + w), w init 0 (Gemma's RMSNorm), rather than by w (init 1)"}}}

    def own_param_shapes(self, cfg, model):
        return {"weight": (model.d_model,)}

    def own_flops(self, cfg, model, seq_len, conv, realized=None):
        offset = model.d_model if cfg.get("unit_offset") else 0  # 1 + w, once per forward
        return Flops(other=seq_len * (4 * model.d_model + 2) + offset)

    def own_activation_bytes(self, cfg, model, seq_len):
        # Computed in float32 whatever the model dtype, and rms_norm decomposes in autograd: it
        # saves the float32 input, 1/rms (float32, one per token) and the normalised x / rms
        # (float32, for the weight's gradient). Measured with saved_tensors_hooks.
        return seq_len * (2 * 4 * model.d_model + 4)

    def kernels_unsupported(self, cfg, model):
        """The kernels normalise rows of d_model columns: up to ops.norm's MAX_WIDTH."""
        if cfg.get("unit_offset"):
            return "unit_offset: the kernels scale by the weight as stored, not by 1 + w"
        reason = width_unsupported(model.d_model)
        if reason is not None:
            return f"d_model {model.d_model}: {reason}"
        return dtype_unsupported(model.dtype)

    def kernel_launches(self, cfg, model, dtype):
        """The model norm's kernels: the plain norm (the first sublayer's, or as a component)
        and the fused residual add + norm of the others (backward with and without the
        stream's gradient), over a training batch's rows; and forward only over a single decoded
        token (a smaller tile: another block size and warp count)."""
        from ...ops.norm import kernel_launches
        return [launch for rows, backward in ((None, True), (1, False)) for residual in (False, True)
                for launch in kernel_launches(model.d_model, dtype, residual=residual, backward=backward,
                                              **({"rows": rows} if rows else {}))]
