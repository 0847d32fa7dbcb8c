"""RMSNorm (Zhang & Sennrich, 2019).

    x: [..., d]  ->  y = x / sqrt(mean(x^2) + eps) * w,   w: [d] (init 1)

Computed in float32 and cast back. FLOPs per token: 4d + 2 (square, sum, scale, weight; the
mean's division and the eps add). Activation memory per token: 8d + 4 bytes (float32 input,
float32 x / rms, float32 1/rms).

Backends: `reference` (archspec.ops.norm.naive) and `triton` (the fused kernel of
archspec/ops/norm; CUDA, or the CPU under TRITON_INTERPRET=1; d_model up to its MAX_WIDTH, else `auto`
keeps the reference). The Triton module also offers
`forward_add(x, delta) -> (norm(x + delta), x + delta)`, which the pre-norm block uses to fuse
each residual add into the next norm (archspec/codegen/model.py). Same weights, same names.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.norm import dtype_unsupported, fused_add_rmsnorm, fused_rmsnorm, naive, width_unsupported
from ..ops.triton_support import add_triton_backend
from .base import REGISTRY, Component, ComponentModule, Flops, ModelConfig, register

NORM_SCHEMA = {"eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                       "description": "added to the variance before the square root"}}


@register
class RMSNorm(Component):
    type = "rmsnorm"
    role = "norm"
    summary = "root-mean-square norm with a learned scale"
    schema = {"properties": dict(NORM_SCHEMA)}

    def param_shapes(self, cfg, model):
        return {"weight": (model.d_model,)}

    def flops(self, cfg, model, seq_len, conv):
        return Flops(other=seq_len * (4 * model.d_model + 2))

    def activation_bytes(self, cfg, model, seq_len):
        # Computed in float32 whatever the model dtype, and rms_norm decomposes in autograd: it
        # saves the float32 input, 1/rms (float32, one per token) and the normalised x / rms
        # (float32, for the weight's gradient). Measured with saved_tensors_hooks.
        return seq_len * (2 * 4 * model.d_model + 4)

    def kernel_launches(self, cfg, model, dtype):
        """The model norm's kernels: the plain norm (the first sublayer's, or as a component)
        and the fused residual add + norm of the others (backward with and without the
        stream's gradient), over a training batch's rows; and forward only over a single decoded
        token (a smaller tile: another block size and warp count)."""
        from ..ops.norm import kernel_launches
        return [launch for rows, backward in ((None, True), (1, False)) for residual in (False, True)
                for launch in kernel_launches(model.d_model, dtype, residual=residual, backward=backward,
                                              **({"rows": rows} if rows else {}))]

    class Module(ComponentModule):
        def __init__(self, cfg: dict, model: ModelConfig):
            super().__init__()
            self.eps = float(cfg["eps"])
            self.weight = nn.Parameter(torch.empty(model.d_model))

        def reset_parameters(self):
            nn.init.ones_(self.weight)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return naive.rmsnorm(x, self.weight, self.eps)


class RMSNormTriton(RMSNorm.Module):
    """The reference module's computation by the Triton kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_rmsnorm(x, self.weight, self.eps)

    def forward_add(self, x: torch.Tensor, delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(h), h) with h = x + delta (x when delta is None), in one kernel."""
        return fused_add_rmsnorm(x, delta, self.weight, self.eps)


def _triton_supports(cfg: dict, model: ModelConfig) -> str | None:
    """The kernels normalise rows of d_model columns: up to ops.norm's MAX_WIDTH."""
    reason = width_unsupported(model.d_model)
    if reason is not None:
        return f"d_model {model.d_model}: {reason}"
    return dtype_unsupported(model.dtype)


add_triton_backend(REGISTRY["rmsnorm"], lambda cfg, model: RMSNormTriton(cfg, model),
                   supports=_triton_supports)
