"""The dtype rule every SSM form follows: computed in float32, float64 for float64 inputs."""
from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 promoted with every input's dtype: bf16 / fp16 / fp32 compute in float32."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype
