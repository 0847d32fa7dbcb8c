"""Shared helpers for the benchmarks: machine description and JSON output."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    import torch
    try:
        from importlib.metadata import version
        fvcore_version = version("fvcore")
    except Exception:  # noqa: BLE001 - not installed
        fvcore_version = None
    return {
        "device": {"cpu": cpu_model(), "cores": os.cpu_count(),
                   "torch_threads": torch.get_num_threads()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fvcore": fvcore_version,
        # other processes on this (shared) machine compete for its 2 cores; recorded so a
        # reader can judge the timings
        "load_average_1_5_15min": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Run fn `repeats` times; wall-clock seconds of each, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": len(times), "all_s": times}


def write(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    return path


def allocator_trace(fn) -> tuple[int, int]:
    """(peak, end): bytes live in torch's CPU allocator during and after `fn()`, above what was
    live before, from the profiler's allocation (+) and free (-) events in time order. Exact and
    independent of machine load (unlike RSS, which also holds what the C library keeps after a
    free and the BLAS libraries' workspaces)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return peak, live
