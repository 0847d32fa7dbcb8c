"""The ahead-of-time kernel gate (`archspec kernels`, archspec/ops/aot.py): launches compiled for
real GPU targets with triton's compiler (no GPU needed), and checked.

THE GATE TEST (`test_gate`, one case per kernel family): every launch configuration of the
shipped specs' components and every family's extremes (`gate_launches()`) compiles for sm_80 and
sm_90 with shared memory within the per-block limit, no register spill and tensor cores for 16-bit
dots. Compiles run in worker processes with TRITON_INTERPRET off, whatever this process uses.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

import archspec

import triton
import triton.language as tl

from archspec.cli import main
from archspec.kernels import FAMILIES, collect_launches, shipped_specs
from archspec.ops.aot import (TARGETS, CompileResult, compile_launch, compile_launches, parse_cuobjdump,
                              parse_ptxas_log, parse_targets, tensor_cores, trim_error)
from archspec.ops.triton_support import describe_launch, recorded_launches
from archspec.spec import load

SPECS = Path(__file__).resolve().parent.parent / "specs"
BOTH = [TARGETS["sm_80"], TARGETS["sm_90"]]


# --- kernels defined here (compiled in the workers from this file) ----------------------------

@triton.jit
def broken_kernel(X, Y, N: tl.constexpr):
    """Does not compile: a name that exists nowhere."""
    offs = tl.arange(0, N)
    tl.store(Y + offs, tl.load(X + offs) * undefined_scale)  # noqa: F821


@triton.jit
def dot_kernel(A, B, C, N: tl.constexpr):
    """A 16 x 16 tile product: a tt.dot, tensor cores on 16-bit inputs."""
    r = tl.arange(0, N)
    a = tl.load(A + r[:, None] * N + r[None, :])
    b = tl.load(B + r[:, None] * N + r[None, :])
    tl.store(C + r[:, None] * N + r[None, :], tl.dot(a, b))


def _launch(kernel, *args, **constexprs):
    return describe_launch(kernel, args, constexprs, 4, 3)


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


# --- parsing the compiler's reports ----------------------------------------------------------

PTXAS_LOG = """\
ptxas info    : 11 bytes gmem
ptxas info    : Compiling entry function 'norm_bwd_kernel' for 'sm_90a'
ptxas info    : Function properties for norm_bwd_kernel
    48 bytes stack frame, 40 bytes spill stores, 44 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 48 bytes cumulative stack size
"""

CUOBJDUMP = """
Resource usage:
 Common:
  GLOBAL:11 CONSTANT[4]:8
 Function norm_fwd_kernel:
  REG:30 STACK:16 SHARED:1024 LOCAL:8 CONSTANT[0]:608 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_ptxas_log_parsing_sums_spill_stores_and_loads():
    assert parse_ptxas_log(PTXAS_LOG) == {"registers": 255, "spill_bytes": 84, "stack_bytes": 48}
    assert parse_ptxas_log("no ptxas here") == {}


def test_cuobjdump_parsing():
    assert parse_cuobjdump(CUOBJDUMP) == {"registers": 30, "stack_bytes": 16, "static_shared": 1024,
                                          "local_bytes": 8}
    assert parse_cuobjdump("") == {}


def test_tensor_cores_apply_only_to_16_bit_dots():
    assert tensor_cores("%0 = tt.dot %a, %b", "mma.sync.aligned.m16n8k16", "bf16") is True
    assert tensor_cores("%0 = tt.dot %a, %b", "wgmma.mma_async.sync", "fp16") is True
    assert tensor_cores("%0 = tt.dot %a, %b", "fma.rn.f32", "bf16") is False
    assert tensor_cores("%0 = tt.dot %a, %b", "fma.rn.f32", "fp32") is None
    assert tensor_cores("tt.load", "ld.global", "bf16") is None


def test_error_trimming_drops_the_repro_command_and_keeps_both_ends():
    text = "PTXASError: ptxas failed\nptxas fatal: out of registers\nRepro command: /x/ptxas -v a.ptx\n"
    assert trim_error(text) == "PTXASError: ptxas failed\nptxas fatal: out of registers"
    long = "head " + "x" * 5000 + " tail"
    short = trim_error(long, limit=200)
    assert short.startswith("head") and short.endswith("tail") and len(short) < 220


def test_targets_and_their_shared_memory_limits():
    assert TARGETS["sm_80"].shared_limit == 166912 and TARGETS["sm_90"].shared_limit == 232448
    assert parse_targets("sm_90,80") == [TARGETS["sm_90"], TARGETS["sm_80"]]
    with pytest.raises(ValueError, match="unknown target 'sm_75'"):
        parse_targets("sm_75")


def test_ok_needs_every_check():
    base = dict(kernel="k", config="c", target="sm_90", compiled=True, registers=32, spill_bytes=0,
                stack_bytes=0, shared_bytes=1024, shared_limit=232448, shared_ok=True)
    assert CompileResult(**base).ok
    assert not CompileResult(**{**base, "spill_bytes": 8}).ok
    assert not CompileResult(**{**base, "spill_bytes": None}).ok  # unknown is not zero
    assert not CompileResult(**{**base, "shared_ok": False}).ok
    assert not CompileResult(**base, tensor_cores=False).ok
    assert not CompileResult(**{**base, "compiled": False}).ok


# --- compiling -----------------------------------------------------------------------------------

def test_a_norm_launch_compiles_for_both_targets_without_spills():
    from archspec.ops.norm import kernel_launches
    launches = kernel_launches(1024, torch.bfloat16, residual=True)
    assert [l.kernel for l in launches] == ["norm.norm_fwd_kernel", "norm.norm_bwd_kernel"]
    results = compile_launches([(l, t) for l in launches for t in BOTH], jobs=2)
    assert [(r.kernel, r.target) for r in results] == [(l.kernel, t.name) for l in launches for t in BOTH]
    for r in results:
        assert r.compiled and r.error is None, r.error
        assert r.spill_bytes == 0 and r.registers and r.registers <= 255
        assert 0 <= r.shared_bytes <= r.shared_limit and r.shared_ok
        assert r.tensor_cores is None  # no tt.dot
        assert r.ok
    fields = json.loads(json.dumps(results[0].to_dict()))
    for key in ("kernel", "config", "target", "compiled", "registers", "spill_bytes", "shared_bytes",
                "shared_ok", "tensor_cores", "compile_s", "error"):
        assert key in fields
    assert "BLOCK_G=1024" in fields["config"] and "dtype=bf16" in fields["config"]


def test_a_compile_error_is_a_result_with_the_compilers_message():
    r = compile_launch(_launch(broken_kernel, _meta(16), _meta(16), N=16), TARGETS["sm_90"])
    assert not r.compiled and not r.ok
    assert "undefined_scale" in r.error
    assert r.registers is None and r.spill_bytes is None


def test_a_16_bit_dot_uses_tensor_cores_on_both_targets():
    a = _meta(16, 16, dtype=torch.bfloat16)
    launch = _launch(dot_kernel, a, a, _meta(16, 16), N=16)
    for r in compile_launches([(launch, t) for t in BOTH], jobs=2):
        assert r.compiled and r.tensor_cores is True, (r.target, r.error)


def test_a_compile_past_its_time_is_a_failure():
    from archspec.ops.norm import kernel_launches
    launch = kernel_launches(4096, torch.float32)[1]
    r = compile_launches([(launch, TARGETS["sm_90"])], jobs=1, timeout=0.01)[0]
    assert not r.compiled and "timed out" in r.error


# --- collecting ------------------------------------------------------------------------------------

def test_collection_dedups_and_names_the_sources():
    # bfloat16: a float32 build keeps MoM on the reference (mom's auto_skips), so only the norm's
    # launches would be collected; test_float32_builds_collect_no_mom_kernels checks that
    spec = load(SPECS / "mom-tiny.yaml")
    collected = collect_launches([spec], [torch.bfloat16], extremes=False)
    kernels = {c.launch.kernel for c in collected}
    assert {"norm.norm_fwd_kernel", "norm.norm_bwd_kernel", "dispatch.gather_kernel",
            "dispatch.segment_sum_kernel", "dispatch.combine_backward_kernel"} <= kernels
    assert any(k.startswith("linear_attention.") for k in kernels)
    assert len({c.launch for c in collected}) == len(collected)  # no launch twice
    sources = {s for c in collected for s in c.sources}
    assert sources == {"mom-tiny:model.norm (rmsnorm)", "mom-tiny:mom (mom)"}
    # the same spec twice: the same launches, each naming it once
    again = collect_launches([spec, spec], [torch.bfloat16], extremes=False)
    assert [c.sources for c in again] == [c.sources for c in collected]


def test_float32_builds_collect_no_mom_kernels():
    """The gate compiles what a build runs: `auto` keeps MoM on the reference in float32, so its
    float32 launches are not collected, unless the spec forces its kernels."""
    spec = load(SPECS / "mom-tiny.yaml")
    kernels = {c.launch.kernel.split(".")[0] for c in collect_launches([spec], [torch.float32], extremes=False)}
    assert kernels == {"norm"}
    forced = archspec.loads((SPECS / "mom-tiny.yaml").read_text().replace("chunk_size: 16}", "chunk_size: 16, backend: triton}"),
                            "mom-tiny.yaml")
    kernels = {c.launch.kernel.split(".")[0] for c in collect_launches([forced], [torch.float32], extremes=False)}
    assert {"norm", "dispatch", "linear_attention"} <= kernels


def test_mom_launches_follow_its_module():
    """Gathers at d_model and key_dim, the combine at value_dim, the gated norm at head_v_dim
    (norm before gate), the chunked rule's launches for training and prefill."""
    spec = load(SPECS / "mom-tiny.yaml")
    cfg = spec.components["mom"].config
    launches = spec.components["mom"].component.kernel_launches(cfg, spec.model, torch.float32)
    gather_d = {dict(l.constexprs).get("BLOCK_D") for l in launches if l.kernel == "dispatch.gather_kernel"}
    assert gather_d == {triton.next_power_of_2(spec.model.d_model), triton.next_power_of_2(cfg["key_dim"])}
    norm = [dict(l.constexprs) for l in launches if l.kernel == "norm.norm_fwd_kernel"]
    assert norm and all(c["HAS_GATE"] and c["NORM_BEFORE_GATE"] and c["BLOCK_G"] == cfg["head_v_dim"]
                        for c in norm)
    stores = {dict(l.constexprs).get("STORE_HT") for l in launches if l.kernel == "linear_attention.state_fwd_kernel"}
    assert stores == {False, True}


def test_every_family_package_exports_gate_launches():
    """The collector asks each family package (archspec.kernels.extreme_launches)."""
    import importlib
    assert all(callable(importlib.import_module(f"archspec.ops.{f}").gate_launches) for f in FAMILIES)


# --- the CLI ----------------------------------------------------------------------------------

def test_cli_lists_launches_with_their_sources(capsys):
    assert main(["kernels", str(SPECS / "tiny.yaml"), "--dtypes", "float32", "--no-extremes"]) == 0
    out = capsys.readouterr().out
    assert "norm.norm_fwd_kernel" in out and "used by: tiny:model.norm (rmsnorm)" in out


def test_cli_json_listing(capsys):
    assert main(["kernels", str(SPECS / "tiny.yaml"), "--format", "json", "--only", "dispatch"]) == 0
    launches = json.loads(capsys.readouterr().out)["launches"]
    assert launches and all(l["kernel"].startswith("dispatch.") and l["sources"] == ["extreme"]
                            for l in launches)


@pytest.mark.parametrize("argv, message", [
    (["--compile", "sm_75"], "unknown target 'sm_75'"),
    (["--dtypes", "float8"], "unknown dtype 'float8'"),
    (["missing.yaml"], "missing.yaml"),
])
def test_cli_usage_errors_exit_2(argv, message, capsys):
    assert main(["kernels", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_invalid_spec_exits_2(write, capsys):
    path = write("model: {name: x, vocab_size: 10, d_model: 0, max_seq_len: 8}\nlayout: A\n")
    assert main(["kernels", str(path)]) == 2
    assert "d_model" in capsys.readouterr().err


def test_cli_exits_1_when_a_configuration_fails(monkeypatch, capsys):
    import archspec.kernels as K
    from archspec.kernels import Collected
    broken = _launch(broken_kernel, _meta(16), _meta(16), N=16)
    monkeypatch.setattr(K, "collect_launches", lambda *a, **k: [Collected(broken, ["test"])])
    assert main(["kernels", str(SPECS / "tiny.yaml"), "--compile", "sm_90", "--jobs", "1"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "undefined_scale" in captured.out
    assert "1 of 1 configurations fail the gate" in captured.err and "[1/1] FAIL" in captured.err


def test_cli_without_triton_exits_2(monkeypatch, capsys):
    import archspec.ops.triton_support as S
    monkeypatch.setattr(S, "triton_installed", lambda: False)
    assert main(["kernels"]) == 2
    assert "needs triton" in capsys.readouterr().err


# --- THE GATE --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def every_launch():
    """Every shipped spec's launches (in the dtype each builds in) and every family's extremes."""
    specs = [load(p) for p in shipped_specs()]
    assert len(specs) >= 20  # the specs/ directory was found
    return collect_launches(specs)


@pytest.mark.parametrize("family", FAMILIES)
def test_gate(family, every_launch):
    """Each launch configuration of `family` compiles for sm_80 and sm_90 within the shared
    memory limit, without spills, with tensor cores for 16-bit dots (CompileResult.ok)."""
    launches = [c for c in every_launch if c.launch.kernel.startswith(family + ".")]
    assert launches, f"no launches of {family}"
    results = compile_launches([(c.launch, t) for c in launches for t in BOTH])
    failures = [f"{r.kernel} [{r.config}] {r.target} (used by {', '.join(c.sources)}): "
                f"{'; '.join(r.problems)}"
                for r, c in zip(results, (c for c in launches for _ in BOTH)) if not r.ok]
    assert not failures, "\n".join(failures)


def test_gate_covers_mom_340m_kernels(every_launch):
    """The gate compiles the kernels mom-340m's MoM layer runs (bf16, 4 heads of 256, chunk
    64): every linear-attention kernel of its forward and backward is among the launches."""
    used = {c.launch.kernel for c in every_launch if any("mom-340m" in s for s in c.sources)}
    assert {"linear_attention.wy_fwd_kernel", "linear_attention.state_fwd_kernel",
            "linear_attention.output_fwd_kernel", "linear_attention.local_bwd_kernel",
            "linear_attention.state_bwd_kernel", "linear_attention.dqk_bwd_kernel",
            "linear_attention.wy_bwd_kernel", "linear_attention.wy_inverse_bwd_kernel",
            "linear_attention.wy_dk_bwd_kernel", "linear_attention.chunk_dg_kernel"} <= used
