"""MoM's dispatch: gather tokens into packed rows, combine packed rows back into tokens, without
padding. P packed rows, each the copy of one token (top-k routing plus a shared memory; fewer
with capacity drops), so a token has 0, 1 or several rows and a memory may receive none.

    gather_rows(x [N, D], token int64 [P])                 -> x[token]          [P, D]
    combine_rows(o [P, D], weight [P], token, n_tokens)    -> out [n_tokens, D]
        out[t] = sum_{r : token[r] = t} weight[r] o[r]     (0 for a token without rows)
    gradients:  dx[t] = sum_{r : token[r] = t} dpacked[r]
                do[r] = weight[r] dout[token[r]],   dweight[r] = <o[r], dout[token[r]]>

Outputs keep the dtype of x / o (dweight: weight's); sums accumulate in float32 (float64 for
float64 inputs). float32, bfloat16 and float16 are supported.

plan.py plans the rows: `plan_dispatch` sorts top-k routing (N tokens, k memories each, plus
a shared memory) into packed groups per (memory, sequence), with an optional capacity, as a
`Dispatch` (token and weight of each row, the groups' varlen offsets `cu_seqlens`).

backends.py runs the gather and the combine: backend="reference" (naive.py, plain PyTorch, the
ground truth) or "triton" (triton_dispatch.py: custom ops `archspec::dispatch_*` running
triton_kernels.py, on CUDA or under TRITON_INTERPRET=1). The Triton kernels are deterministic
and atomics-free: the inverse map token -> rows, in CSR form (plan.py's `RowMap`: a stable
argsort of token and per-token offsets), turns every scatter-add into a segmented row sum in a
fixed order. Build it once per dispatch and pass it to both ops:

    rows = row_map(token, n_tokens)                  # RowMap(token, order, offsets, n_tokens)
    packed = gather_rows(x, rows, backend="triton")  # x: [n_tokens, D]
    out = combine_rows(o, weight, rows, backend="triton")

(the simple form, with a token tensor, builds the RowMap itself). FLOPs: the gather moves data
(0); the combine is elementwise `other` work, which the measured counters leave out, so all its
ops register 0 FLOPs.

Index range checks (values in [0, N) / [0, n_tokens)) run in eager mode only (a device sync);
under torch.compile and on the meta device they are skipped. Importing this package imports
neither torch nor triton: every name loads on first use.
"""
from __future__ import annotations

from ...lazy import lazy_exports

_LAZY = {
    ".plan": ["Dispatch", "RowMap", "plan_dispatch", "row_map"],
    ".backends": ["combine_rows", "gather_rows"],
    ".triton_dispatch": ["gate_launches", "kernel_launches"],
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = [name for names in _LAZY.values() for name in names]
