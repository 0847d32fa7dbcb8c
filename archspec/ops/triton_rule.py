"""Where Triton kernels can run, without importing torch or triton (the spec side asks this when
`report` shows which backend each component gets).

A `triton` backend is *available* where triton is installed and the device is CUDA, or the CPU
under TRITON_INTERPRET=1; `auto` *prefers* it only on CUDA (the interpreter proves correctness;
it is orders of magnitude slower than the reference).
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

TRITON_PRIORITY = 10  # outranks the reference (0) where `auto` may pick it


def device_type(device) -> str:
    """'cuda' for torch.device('cuda:1'), 'cuda:1' or 'cuda'."""
    return getattr(device, "type", None) or str(device).split(":", 1)[0]


@lru_cache(maxsize=1)
def triton_installed() -> bool:
    """Whether triton can be imported (asked once: the answer does not change in a process, and
    the report asks it for every component of every sublayer)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on the CPU in triton's numpy interpreter."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def triton_unavailable(device) -> str | None:
    """None when Triton kernels can run on `device`, else why not and what to do."""
    kind = device_type(device)
    if not triton_installed():
        return "triton is not installed (pip install 'archspec[triton]', or a CUDA build of torch)"
    if kind == "cuda":
        return None
    if kind == "cpu":
        if interpreting():
            return None
        return ("Triton kernels need a CUDA device; on the CPU they run only in triton's interpreter "
                "(set TRITON_INTERPRET=1 before triton is imported; slow, for tests). "
                "Use backend 'reference' or 'auto' here")
    return f"Triton kernels do not run on '{kind}' devices; use backend 'reference'"


def triton_preferred(device) -> bool:
    return device_type(device) == "cuda"
