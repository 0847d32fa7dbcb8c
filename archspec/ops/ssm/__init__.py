"""State-space-model kernels: Mamba1's selective scan and Mamba2's state space duality (SSD).

    naive.py           the plain recurrent forms, a loop over time (the ground truth in tests,
                       and the decoding step): selective_scan_recurrent / selective_scan_step,
                       ssd_recurrent / ssd_step
    selective_scan.py  Mamba1's training form, a chunked parallel scan: selective_scan
    ssd.py             Mamba2's training form, the chunked SSD: ssd_chunked
    costs.py           their FLOPs (torch-free): selective_scan_flops, ssd_flops

Importing this package imports no torch: the costs are loaded with it, every other name on
first use.
"""
from __future__ import annotations

from ...lazy import lazy_exports
from .costs import SCAN_CHUNK, selective_scan_flops, ssd_flops

_LAZY = {
    ".naive": ["selective_scan_recurrent", "selective_scan_step", "ssd_recurrent", "ssd_step"],
    ".selective_scan": ["linear_scan", "selective_scan"],
    ".ssd": ["ssd_chunked"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = ["SCAN_CHUNK", "selective_scan_flops", "ssd_flops"]
__all__ += [name for names in _LAZY.values() for name in names]
