"""benchmarks/gpu_check.sh --smoke: the GPU session's one command, run end to end on the CPU
(tiny sizes, Triton kernels in the interpreter), so that the script a lent GPU runs is known to
work before a GPU is lent. Checks the exit code, the files and their structure, and that every
correctness check passed within its bound."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ("linear", "gla", "delta", "gated_delta")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)  # --out decides
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    return proc, out


def test_exit_code_and_files(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = {p.name for p in out.iterdir()}
    assert files == {"gpu_check.log", "check_kernels.json", "bench_kernels.json", "gpu_check.json"}
    assert len(files) <= 8  # the device tool returns at most 8 files
    assert proc.stdout.rstrip().splitlines()[-1].startswith("PASSED")  # the table is printed last
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["passed"] is True and summary["problems"] == []
    assert set(summary["stages"]) == {"env", "deps", "check", "bench"}
    assert all(s["exit"] == 0 for s in summary["stages"].values())
    assert summary["versions"]["torch"] and summary["versions"]["triton"]
    assert summary["mode"].startswith("smoke")


def test_every_check_ran_and_passed(smoke):
    _, out = smoke
    data = json.loads((out / "check_kernels.json").read_text())
    names = {c["name"] for c in data["checks"]}
    for dtype in ("float32", "bfloat16"):
        for rule in RULES:
            assert {f"la/{rule}/{dtype}", f"la_ragged/{rule}/{dtype}"} <= names
        assert {f"dispatch/{dtype}", f"mom_layer/{dtype}"} <= names
        for op in ("rmsnorm", "add_rmsnorm", "gated_rmsnorm"):
            assert any(n.startswith(f"norm/{op}/") and n.endswith(dtype) for n in names)
    assert "poison" in names
    for c in data["checks"]:
        assert c["passed"], c
        assert c["errors"] and all(math.isfinite(e) and e <= c["bound"] for e in c["errors"].values()), c
    la = next(c for c in data["checks"] if c["name"] == "la/gated_delta/float32")
    # output, final state and every input's gradient
    assert set(la["errors"]) == {"o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dinitial_state"}
    assert la["bound"] == 2e-5 and set(la["reference_errors"]) == set(la["errors"])
    assert data["summary"] == {"checks": len(data["checks"]), "passed": len(data["checks"]), "failed": [], "not_run": []}
    assert data["jobs"] == 2  # the sharded path the GPU run takes (8 processes there)


def test_benchmark_json(smoke):
    _, out = smoke
    data = json.loads((out / "bench_kernels.json").read_text())
    assert data["errors"] == [] and data["mode"].startswith("smoke")
    for section in ("ceilings", "norms", "la_chunk", "mom_layer"):
        assert "error" not in data[section], data[section]
    assert data["ceilings"]["copy_bytes_per_s"] > 0
    from archspec.ops.linear_attention import chunk_flops
    for r in data["la_chunk"].values():
        s = r["shape"]
        assert r["floor"]["flops"] == 3 * chunk_flops("gated_delta", [s["T"]] * s["B"], s["H"], s["K"], s["V"], s["chunk"]).matmul
        assert r["floor"]["bytes"] > 0 and r["floor"]["floor_s"] > 0
        for name in ("archspec_triton", "archspec_reference"):
            assert r[name]["median_s"] > 0 and "not meaningful" in r[name]["timer"]
    for r in data["mom_layer"].values():
        assert r["archspec_triton"]["median_s"] > 0 and r["parameters"]["archspec"] > 0
    for r in data["norms"].values():
        assert {"fwd", "fwd_bwd"} <= set(r) and r["fwd"]["archspec_triton"]["median_s"] > 0
    fla = data["fla"]
    if not fla["available"]:  # CI: benchmarks/.fla is not there
        assert fla["reason"] and "fla_chunk_gated_delta_rule" not in next(iter(data["la_chunk"].values()))


def test_a_check_that_misses_its_bound_or_raises_fails(tmp_path, monkeypatch):
    """The check harness itself: NaN, an error over its bound and an exception all fail."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import check_kernels
    checks = check_kernels.Checks(tmp_path / "c.json", {}, planned=["ok", "nan", "over", "raises", "cut_off"])
    checks.run("ok", 1e-5, lambda: ({"o": 1e-6}, {}))
    checks.run("nan", 1e-5, lambda: ({"o": float("nan")}, {}))
    checks.run("over", 1e-5, lambda: ({"o": 1e-6, "dq": 2e-5}, {}))
    checks.run("raises", 1e-5, lambda: 1 / 0)
    data = json.loads((tmp_path / "c.json").read_text())
    assert [c["passed"] for c in data["checks"]] == [True, False, False, False]
    assert data["summary"]["failed"] == ["nan", "over", "raises"]
    assert data["summary"]["not_run"] == ["cut_off"]  # planned, never recorded: a time limit hit
    assert "ZeroDivisionError" in data["checks"][3]["error"]


def test_the_cuda_timing_branch(monkeypatch):
    """time_fns' CUDA branch (events per call, warm-ups, interleaved rounds, rotation index) run
    with a stand-in for CUDA events, since no GPU is here: the flow a GPU run takes."""
    import time
    import torch
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_kernels

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, end):  # milliseconds, as torch.cuda.Event
            return (end.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    seen = []

    def slow(i):
        seen.append(i)
        time.sleep(0.002)

    def broken(i):
        raise RuntimeError("no kernel image")

    calls = []

    def fails_when_timed(i):  # passes the warm-ups, then runs out of memory
        calls.append(i)
        if len(calls) > 5:
            raise RuntimeError("CUDA out of memory")

    res = bench_kernels.time_fns({"slow": slow, "broken": broken, "late": fails_when_timed}, "cuda",
                                 rounds=2, target_s=0.02)
    assert "no kernel image" in res["broken"]["error"]
    assert "out of memory" in res["late"]["error"]
    r = res["slow"]
    assert r["timer"] == "cuda events" and len(r["round_medians_s"]) == 2
    assert 5 <= r["calls"] // 2 <= 50 and r["calls"] == len(seen) - 4  # 3 warm-ups + 1 estimate
    assert 0.002 <= r["min_s"] <= r["median_s"] <= r["max_s"]
    assert seen[4:7] == [0, 1, 2]  # timed calls walk the rotated input sets
