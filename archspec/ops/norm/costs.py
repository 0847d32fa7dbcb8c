"""What the RMSNorms cost and what their Triton kernels take, without torch.

FLOPs of the gated RMSNorm (naive.gated_rmsnorm), per element: the norm's
RMSNORM_FLOPS_PER_ELEMENT (square, sum, scale, weight), SiLU's ACTIVATION_FLOPS["silu"] and 1 for
the gate's multiply (4 + 4 + 1 = 9); per group, RMSNORM_FLOPS_PER_GROUP (the mean's division and
the eps add). All of it is elementwise (`Flops.other`).
"""
from __future__ import annotations

from ...costs import ACTIVATION_FLOPS, RMSNORM_FLOPS_PER_ELEMENT, RMSNORM_FLOPS_PER_GROUP, Flops

GATED_NORM_FLOPS_PER_ELEMENT = RMSNORM_FLOPS_PER_ELEMENT + ACTIVATION_FLOPS["silu"] + 1

# The widest row the kernels take (columns). No program holds more than a column block of a row,
# so wider rows cost loop trips and programs, not registers; this is the widest the gate compiles
# and the tests state (`gate_launches`): above Mamba2's inner width at d_model 16384 (expand 2:
# 32768) and every published dense model's d_model (Llama-3-405B 16384, PaLM-540B 18432).
MAX_WIDTH = 65536
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # the model dtypes the kernels take


def gated_rmsnorm_flops(n_elements: int, n_groups: int) -> Flops:
    """FLOPs of a gated RMSNorm over `n_elements` elements in `n_groups` groups."""
    return Flops(other=GATED_NORM_FLOPS_PER_ELEMENT * n_elements + RMSNORM_FLOPS_PER_GROUP * n_groups)


def dtype_unsupported(dtype_name: str) -> str | None:
    """None when the kernels take a model built in `dtype_name`, else why not."""
    if dtype_name in DTYPE_NAMES:
        return None
    return (f"the Triton norm kernels take {', '.join(DTYPE_NAMES)} models, got {dtype_name}; "
            "use backend 'reference'")


def width_unsupported(n: int, group_size: int | None = None) -> str | None:
    """None when the kernels take rows of `n` columns normalised in groups of `group_size`
    (None: the whole row), else why not and what to do: the one statement of their range, for
    the kernels' argument checks and the components' `triton` backends (`supports`)."""
    group = group_size or n
    if group < 1 or n % group:
        return (f"group_size {group_size} does not divide the normalised size {n}; use a divisor "
                f"of {n} (or None for the whole row)")
    if n > MAX_WIDTH:
        return (f"rows of {n} columns are wider than the Triton norm kernels take ({MAX_WIDTH}); "
                "use backend 'reference'")
    return None
