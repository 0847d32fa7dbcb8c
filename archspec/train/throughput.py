"""Throughput: tokens/s, achieved FLOP/s and MFU (model FLOPs utilisation).

achieved FLOP/s = tokens/s x training FLOPs per token, where training FLOPs per token is the
report's (archspec/accounting.py: 3 x the forward FLOPs at the training seq_len; 1 FLOP = one
multiply or one add, so a multiply-add is 2, the convention vendors' peaks use too).
MFU = achieved FLOP/s / (peak FLOP/s per device x devices). Activation checkpointing's recomputed
forward is not counted (model FLOPs, not hardware FLOPs).

Peaks used (dense, no sparsity, per device, FLOP/s; from the vendors' data sheets):

    device (name contains)   bf16        fp32 (no TF32)
    H200, H100 (SXM)         989.4e12    66.9e12
    H100 PCIe                756.5e12    51.2e12
    A100                     312e12      19.5e12
    L40S                     362.1e12    91.6e12
    A10G                     70e12       31.2e12  (bf16 dense tensor core, AWS data sheet)

Any other device (a CPU among them): no MFU; the progress bar shows FLOP/s instead.
"""
from __future__ import annotations

import torch

# name fragment (tested in order, upper case) -> (bf16 peak, fp32 peak) in FLOP/s
PEAKS = [("H200", 989.4e12, 66.9e12), ("H100 PCIE", 756.5e12, 51.2e12), ("H100", 989.4e12, 66.9e12),
         ("A100", 312e12, 19.5e12), ("L40S", 362.1e12, 91.6e12), ("A10G", 70e12, 31.2e12)]


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """The peak FLOP/s of one `device` at `dtype` ('bf16' or 'fp32'), or None when unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    for fragment, bf16, fp32 in PEAKS:
        if fragment in name:
            return bf16 if dtype == "bf16" else fp32
    return None


def human_flops(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}FLOP/s"
    return f"{x:.0f} FLOP/s"
