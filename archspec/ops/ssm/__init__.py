"""State-space-model kernels: Mamba1's selective scan (`selective_scan.py`) and Mamba2's state
space duality (`ssd.py`). Each file holds the plain recurrent form (a loop over time: the ground
truth in tests, and the decoding step) beside the fast form the modules train with."""
from .selective_scan import (selective_scan, selective_scan_recurrent,  # noqa: F401
                             selective_scan_step)
from .ssd import ssd_chunked, ssd_recurrent, ssd_step  # noqa: F401
