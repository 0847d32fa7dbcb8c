"""A smoke run of a built model: one forward and backward on a small random batch, timed, with
its peak memory (CUDA: allocator peak; CPU: the process's peak resident set, reset first where
Linux allows)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class SmokeResult:
    batch: int
    seq_len: int
    loss: float
    forward_backward_seconds: float
    peak_memory_bytes: int | None
    peak_memory_kind: str
    grads_finite: bool
    params_without_grad: list[str] = field(default_factory=list)  # parameters the backward never reached (unused weights)


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def _cpu_peak() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def smoke_run(model: torch.nn.Module, batch: int = 2, seq_len: int = 64, seed: int = 0,
              warmup: int = 1) -> SmokeResult:
    """One timed forward+backward after `warmup` untimed ones (the first call pays one-off costs:
    kernel selection, allocator growth, lazily built tables). Gradients are left from the timed
    step."""
    device = next(model.parameters()).device
    vocab = model.embedding.weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=g).to(device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        model(tokens[:, :-1], labels=tokens[:, 1:]).loss.backward()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        kind = "cuda allocator peak"
    else:
        kind = "process peak RSS" if _reset_cpu_peak() else "process peak RSS since start"
    start = time.perf_counter()
    out = model(tokens[:, :-1], labels=tokens[:, 1:])
    out.loss.backward()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if cuda else _cpu_peak()
    finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    return SmokeResult(batch, seq_len, float(out.loss.detach()), seconds, peak, kind, finite, missing)
