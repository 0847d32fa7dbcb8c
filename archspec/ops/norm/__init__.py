"""RMSNorms: the plain residual-add + RMSNorm of the pre-norm block and the gated RMSNorm of
Mamba2 / MoM, each in plain PyTorch (naive.py, the ground truth) and as a Triton kernel
(triton_kernels.py, wrapped as custom ops in triton_rmsnorm.py).

    rmsnorm(x, w, eps):             x: [..., n], w: [n];  y = x / sqrt(mean(x^2) + eps) * w
    add_rmsnorm(x, r, w, eps):      (y, h) with h = x + r (x when r is None), y = rmsnorm(h)
    gated_rmsnorm(x, z, w, eps, norm_before_gate, group_size):
        norm_before_gate=True:  y = x / rms(x) * w * silu(z)
        norm_before_gate=False: y = u / rms(u) * w,  u = x * silu(z)
        (rms over each group of group_size columns; default the whole row)

Each takes `backend` (backends.py): "reference" (default) or "triton" (the kernel: CUDA, or the
CPU under TRITON_INTERPRET=1; rows up to MAX_WIDTH columns, `width_unsupported` says why not).
Computed in float32, returned in x's dtype. costs.py (torch-free) holds the FLOPs and the
kernels' range. Importing this package imports neither torch nor triton; the kernels' custom ops
(`archspec::*`) are registered when triton_rmsnorm.py is first imported (by any kernel name).
"""
from __future__ import annotations

from ...lazy import lazy_exports
from .costs import (DTYPE_NAMES, GATED_NORM_FLOPS_PER_ELEMENT, MAX_WIDTH, dtype_unsupported,
                    gated_rmsnorm_flops, width_unsupported)

_LAZY = {
    ".backends": ["BACKENDS", "add_rmsnorm", "gated_rmsnorm", "rmsnorm"],
    ".naive": ["l2_normalise"],
    ".triton_rmsnorm": ["TRAIN_ROWS", "fused_add_rmsnorm", "fused_gated_rmsnorm", "fused_rmsnorm",
                        "gate_launches", "kernel_launches"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = ["DTYPE_NAMES", "GATED_NORM_FLOPS_PER_ELEMENT", "MAX_WIDTH", "dtype_unsupported",
           "gated_rmsnorm_flops", "width_unsupported"]
__all__ += [name for names in _LAZY.values() for name in names]
