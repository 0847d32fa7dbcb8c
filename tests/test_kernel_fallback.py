"""The build-time kernel check: on a CUDA device, a component's `triton` backend is taken only
when every launch it will make compiles (and fits) there. Under `auto` a failure falls back to
the reference for that component, with one KernelFallbackWarning per component symbol and the
reason in `model.backends`; a forced `triton` raises KernelUnavailable.

No GPU is needed: `FakeGPU` replaces the two seams of archspec.ops.triton_support that reach a
device, `target_of` (device -> compile target) and `compile_launches` (archspec.ops.aot's
compiler), and the components' `kernel_launches` return fixed fake launches, so these tests do
not depend on which launches the kernels really make. A meta build for "cuda" makes the choices a
GPU would; materialised on the kernel device (the CPU under the interpreter), it runs.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
import warnings
from dataclasses import dataclass

import pytest
import torch

import archspec
from archspec import KernelFallbackWarning
from archspec import components as C
from archspec.cli import main
from archspec.codegen.build import build
from archspec.ops import triton_support
from archspec.ops.triton_support import KernelLaunch, KernelUnavailable, useful_line

pytestmark = pytest.mark.usefixtures("one_thread")

MOM = "type: mom, n_heads: 2, head_dim: 16, n_memories: 4, topk: 2"
SPEC = f"""\
model: {{vocab_size: 128, d_model: 32, max_seq_len: 64}}
components:
  M1: {{{MOM}, chunk_size: 16}}
  M2: {{{MOM}, chunk_size: 32}}
layout: (M1 M2) x 2
"""
STATE = "linear_attention.state_fwd_kernel"
# what triton's CompilationError looks like: the source, a caret, then the error
TRITON_ERROR = """at 14:8:
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    for i_t in range(NT):
        b_k = tl.load(p_k, boundary_check=(0, 1))
        ^
ValueError('unsupported tensor layout for this target (error in layout pass)')"""


@dataclass(frozen=True)
class Target:  # as archspec.ops.aot.Target
    name: str = "sm_90"
    capability: int = 90
    shared_limit: int = 232448


@dataclass
class CompileResult:  # the fields of archspec.ops.aot.CompileResult the build reads
    compiled: bool = True
    error: str | None = None
    shared_bytes: int | None = 1024
    shared_limit: int | None = 232448
    shared_ok: bool | None = True  # None: not measured
    spill_bytes: int | None = 0


class FakeGPU:
    """A sm_90 device whose compiler fails the launches `fail` names and counts every compile."""

    def __init__(self):
        self.compiled: list[KernelLaunch] = []
        self.batches: list[int] = []  # launches per compile_launches call
        self.recorded: list[str] = []  # component types whose kernel_launches ran
        self.outcomes: list[tuple[str, dict, CompileResult]] = []

    def fail(self, kernel: str, result: CompileResult, **constexprs) -> None:
        """Compile the launches of `kernel` whose constexprs include `constexprs` to `result`."""
        self.outcomes.append((kernel, constexprs, result))

    def target_of(self, device):
        assert torch.device(device).type == "cuda"
        return Target()

    def compile_launches(self, launches: list[KernelLaunch], target: Target) -> list[CompileResult]:
        self.batches.append(len(launches))
        return [self.compile_launch(launch, target) for launch in launches]

    def compile_launch(self, launch: KernelLaunch, target: Target) -> CompileResult:
        self.compiled.append(launch)
        consts = dict(launch.constexprs)
        for kernel, want, result in self.outcomes:
            if launch.kernel == kernel and all(consts.get(k) == v for k, v in want.items()):
                return result
        return CompileResult()

    def launches(self, type_name: str):
        """A fake Component.kernel_launches for `type_name`: one launch per kernel it stands for."""
        def kernel_launches(component, cfg, model, dtype):
            assert dtype == torch.float32  # the build's dtype reaches the check
            self.recorded.append(type_name)
            if type_name == "mom":
                return [fake_launch(STATE, BT=cfg["chunk_size"]), fake_launch("dispatch.gather_kernel", D=32)]
            return [fake_launch("norm.rmsnorm_fwd_kernel", BLOCK=model.d_model)]
        return kernel_launches


def fake_launch(kernel: str, **constexprs) -> KernelLaunch:
    return KernelLaunch(kernel=kernel, signature=(), divisible_by_16=(),
                        constexprs=tuple(constexprs.items()), num_warps=4, num_stages=2)


@pytest.fixture
def gpu(monkeypatch) -> FakeGPU:
    fake = FakeGPU()
    monkeypatch.setattr(triton_support, "target_of", fake.target_of)
    monkeypatch.setattr(triton_support, "compile_launches", fake.compile_launches)
    for type_name in ("mom", "rmsnorm"):
        monkeypatch.setattr(type(C.get(type_name)), "kernel_launches", fake.launches(type_name))
    # these tests build float32 models, for which `auto` keeps MoM on the reference on a real
    # GPU (its float32 kernels spill: mom's auto_skips, tested in test_kernel_backends.py); the
    # fake GPU is one where they meet the bar, so that `auto` picks them and the build checks them
    mom_triton = C.get("mom").backends["triton"]
    monkeypatch.setitem(C.get("mom").backends, "triton",
                        dataclasses.replace(mom_triton, auto_skips=lambda cfg, model: None))
    triton_support.clear_kernel_checks()  # results cached by an earlier test's compiler
    yield fake
    triton_support.clear_kernel_checks()


def fallback_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, KernelFallbackWarning)]


def build_for_cuda(spec, **kwargs):
    """A meta build with the backends a CUDA device gets; the warnings it raised."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = build(spec, meta=True, device="cuda", **kwargs)
    return model, fallback_warnings(record)


def test_auto_falls_back_for_the_failing_component_only(gpu, kernel_device):
    gpu.fail(STATE, CompileResult(compiled=False, error=TRITON_ERROR), BT=32)
    spec = archspec.loads(SPEC)
    model, warned = build_for_cuda(spec)
    # M2 (chunk 32) in both its sublayers; M1 and the norms keep the kernels
    assert model.backends["sublayers.1.M2"] == model.backends["sublayers.3.M2"] == "reference"
    assert model.backends["sublayers.0.M1"] == model.backends["sublayers.2.M1"] == "triton"
    assert {model.backends[n] for n in model.backends if "norm" in n} == {"triton"}
    assert [n for n, b in model.backends.items() if b.fallback] == ["sublayers.1.M2", "sublayers.3.M2"]
    # one warning for M2, naming the kernel, its configuration, the target and the useful line
    assert len(warned) == 1
    reason = "ValueError('unsupported tensor layout for this target (error in layout pass)')"
    for text in (warned[0], model.backends["sublayers.1.M2"].fallback):
        assert STATE in text and "BT=32 warps=4 stages=2" in text and "sm_90" in text and reason in text
        assert "tl.load" not in text  # the quoted source is trimmed away
    assert warned[0].startswith("M2 (mom)") and "'reference' backend" in warned[0]
    assert "fallback" in repr(model.backends["sublayers.1.M2"])
    assert model.sublayers[1].members["M2"].backend == "reference"
    assert model.sublayers[0].members["M1"].backend == "triton"
    # the mixed model runs forward and backward, as the reference build does
    torch.manual_seed(0)
    model = model.to_empty(device=kernel_device)
    model.reset_parameters()
    ref = build(spec, device=kernel_device, seed=0, backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    tokens = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(0)).to(kernel_device)
    logits = {}
    for name, m in (("mixed", model), ("reference", ref)):
        out = m(tokens, labels=tokens)
        out.loss.backward()
        logits[name] = out.logits.detach()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in m.parameters())
    # fp32: the kernels agree with the reference to a few 1e-6 (tests/test_kernel_backends.py)
    err = (logits["mixed"] - logits["reference"]).norm() / logits["reference"].norm()
    assert err <= 1e-5


def test_a_failing_norm_kernel_falls_back_every_norm(gpu):
    gpu.fail("norm.rmsnorm_fwd_kernel", CompileResult(compiled=False, error="out of resource: shared memory"))
    model, warned = build_for_cuda(archspec.loads(SPEC))
    norms = [n for n in model.backends if n.endswith("norm")]
    assert len(norms) == 5 and all(model.backends[n] == "reference" and model.backends[n].fallback for n in norms)
    assert model.backends["sublayers.0.M1"] == "triton"
    assert len(warned) == 1 and warned[0].startswith("model.norm (rmsnorm)") and "out of resource" in warned[0]


def test_too_much_shared_memory_falls_back_but_spills_do_not(gpu, caplog):
    gpu.fail(STATE, CompileResult(shared_bytes=300_000, shared_ok=False), BT=16)
    gpu.fail(STATE, CompileResult(spill_bytes=512), BT=32)
    gpu.fail("norm.rmsnorm_fwd_kernel", CompileResult(shared_bytes=None, shared_ok=None, spill_bytes=None))
    with caplog.at_level(logging.DEBUG, logger="archspec.kernels"):
        model, warned = build_for_cuda(archspec.loads(SPEC))
    assert model.backends["sublayers.0.M1"] == "reference"
    assert "needs 300,000 bytes of shared memory per program; sm_90 has 232,448" in warned[0]
    # a kernel that spills runs, slowly: kept, and said at debug level only; figures the
    # compiler did not report are no reason to fall back
    assert model.backends["sublayers.1.M2"] == model.backends["final_norm"] == "triton" and len(warned) == 1
    assert "spills 512 bytes" in caplog.text and "BT=32" in caplog.text


def test_forced_triton_raises_with_the_kernel_and_the_reason(gpu):
    gpu.fail(STATE, CompileResult(compiled=False, error=TRITON_ERROR), BT=32)
    spec = archspec.loads(SPEC)
    expected = (r"backend 'triton' of M2 \(mom\) cannot run on cuda \(sm_90\): kernel "
                r"linear_attention.state_fwd_kernel \[BT=32 .*unsupported tensor layout.*"
                r"Use backend 'reference' for M2, or 'auto'")
    for forced in ("triton", {"M2": "triton"}):
        with pytest.raises(KernelUnavailable, match=expected):
            build(spec, meta=True, device="cuda", backend=forced)
    # `backend: triton` in the spec forces it too
    in_spec = archspec.loads(SPEC.replace("chunk_size: 32}", "chunk_size: 32, backend: triton}"))
    with pytest.raises(ValueError, match=expected):
        build(in_spec, meta=True, device="cuda")
    # forcing the component whose kernels compile is fine (M2, under auto, still falls back)
    with pytest.warns(KernelFallbackWarning, match="M2"):
        model = build(spec, meta=True, device="cuda", backend={"M1": "triton"})
    assert model.backends["sublayers.0.M1"] == "triton" and model.backends["sublayers.1.M2"] == "reference"


def test_no_failure_keeps_the_kernels_without_a_warning(gpu):
    model, warned = build_for_cuda(archspec.loads(SPEC))
    assert set(model.backends.values()) == {"triton"} and warned == []
    assert not any(b.fallback for b in model.backends.values())
    assert gpu.compiled  # the check did run


def test_each_distinct_launch_compiles_once(gpu):
    spec = archspec.loads(SPEC)
    build_for_cuda(spec)
    # (M1 M2) x 2 and five norms: state BT=16, state BT=32, the gather (the same in M1 and
    # M2) and the norm; the launches are recorded once per distinct component config
    assert sorted(la.kernel for la in gpu.compiled) == ["dispatch.gather_kernel", "linear_attention.state_fwd_kernel",
                                                         "linear_attention.state_fwd_kernel", "norm.rmsnorm_fwd_kernel"]
    assert sorted(gpu.recorded) == ["mom", "mom", "rmsnorm"]
    # one batch per component config with launches not yet compiled (M2's gather is M1's)
    assert gpu.batches == [1, 2, 1]
    # a second build in the same process compiles nothing again
    build_for_cuda(spec)
    assert len(gpu.compiled) == 4 and len(gpu.batches) == 3


def test_no_check_off_cuda(gpu, kernel_device):
    spec = archspec.loads(SPEC)
    gpu.fail(STATE, CompileResult(compiled=False, error="boom"))
    # the CPU under the interpreter runs every kernel: nothing to compile, nothing to fall back
    assert build(spec, meta=True, backend="triton").backends["sublayers.1.M2"] == "triton"
    assert gpu.compiled == [] and gpu.recorded == []


def test_no_cuda_device_here_means_no_target(monkeypatch):
    # a meta build for "cuda" on a machine without one: nothing to compile for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert triton_support.target_of(torch.device("cuda")) is None
    comp = C.get("mom")
    monkeypatch.setattr(type(comp), "kernel_launches", lambda *a: [fake_launch(STATE, BT=16)])
    assert triton_support.kernel_failures(comp, {}, None, torch.float32, torch.device("cuda")) == []


def test_a_compiler_that_raises_is_a_failure_to_compile(gpu, monkeypatch):
    # compile_launches reports compiler errors in its results; should one escape, the kernels
    # cannot be shown to run: auto falls back rather than crash the build
    def crash(launches, target):
        if any(launch.kernel == STATE for launch in launches):
            raise RuntimeError("PassManager::run failed")
        return [CompileResult() for _ in launches]
    monkeypatch.setattr(triton_support, "compile_launches", crash)
    model, warned = build_for_cuda(archspec.loads(SPEC))
    assert model.backends["sublayers.0.M1"] == model.backends["sublayers.1.M2"] == "reference"
    assert model.backends["final_norm"] == "triton"
    assert len(warned) == 2 and all("RuntimeError: PassManager::run failed" in w for w in warned)


def test_saved_build_records_the_fallbacks(gpu):
    from archspec.checkpoint_json import build_record  # archspec.json's "build" entry
    gpu.fail(STATE, CompileResult(compiled=False, error="boom"), BT=32)
    model, _ = build_for_cuda(archspec.loads(SPEC))
    saved = build_record(model)["fallbacks"]
    assert sorted(saved) == ["sublayers.1.M2", "sublayers.3.M2"] and "boom" in saved["sublayers.1.M2"]
    assert "fallbacks" not in build_record(build_for_cuda(archspec.loads(SPEC.replace("32}", "16}")))[0])


def test_a_device_whose_target_is_unknown_is_not_checked(monkeypatch, caplog):
    # archspec.ops.aot.target_of refuses a device whose shared-memory limit it cannot know
    import sys
    import types

    def unknown(device):
        raise ValueError("torch does not report the shared memory limit of sm_120")
    monkeypatch.setitem(sys.modules, "archspec.ops.aot", types.SimpleNamespace(target_of=unknown))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.DEBUG, logger="archspec.kernels"):
        assert triton_support.target_of(torch.device("cuda")) is None
    assert "sm_120" in caplog.text


def test_backend_choice_keeps_its_reason_through_copies(gpu):
    gpu.fail(STATE, CompileResult(compiled=False, error="boom"), BT=32)
    model, _ = build_for_cuda(archspec.loads(SPEC))
    for backends in (copy.deepcopy(model.backends), pickle.loads(pickle.dumps(model.backends))):
        assert backends["sublayers.1.M2"] == "reference" and "boom" in backends["sublayers.1.M2"].fallback
        assert backends["sublayers.0.M1"].fallback is None


def test_cli_build_prints_the_fallback(gpu, write, capsys):
    gpu.fail(STATE, CompileResult(compiled=False, error=TRITON_ERROR), BT=32)
    path = str(write(SPEC))
    assert main(["build", path, "--meta", "--device", "cuda"]) == 0
    captured = capsys.readouterr()
    assert "backends: M1=triton, M2=reference (fallback), model.norm=triton" in captured.out
    fallback = [line for line in captured.out.splitlines() if line.startswith("fallback: M2: ")]
    assert len(fallback) == 1 and STATE in fallback[0] and "BT=32" in fallback[0] and "sm_90" in fallback[0]
    warned = [line for line in captured.err.splitlines() if line.startswith("archspec: warning: ")]
    assert len(warned) == 1 and "M2 (mom)" in warned[0] and "Traceback" not in captured.err
    # forced: a usage error, said plainly
    assert main(["build", path, "--meta", "--device", "cuda", "--backend", "triton"]) == 2
    err = capsys.readouterr().err
    assert "backend 'triton' of M2 (mom) cannot run on cuda (sm_90)" in err and "Traceback" not in err


def _wide_spec(d_model: int, expand: int = 2) -> str:
    return (f"model: {{vocab_size: 16, d_model: {d_model}, max_seq_len: 8}}\n"
            f"components:\n  S: {{type: mamba2, expand: {expand}, d_state: 16, head_dim: 64, chunk_size: 16}}\n"
            "layout: S\n")


def test_auto_keeps_the_reference_for_norms_wider_than_the_kernels_take(gpu, write, capsys):
    """`supports(cfg, model)` sees the model: a d_model above ops.norm's MAX_WIDTH keeps the
    reference norm on a GPU (it is not taken, so nothing is compiled and nothing falls back),
    and so does Mamba2 whose inner width expand * d_model is too wide for its gated norm;
    at the limit itself both take the kernels. Forcing them is a plain error."""
    from archspec.ops.norm import MAX_WIDTH
    at_limit, _ = build_for_cuda(archspec.loads(_wide_spec(MAX_WIDTH // 2)))  # E = MAX_WIDTH
    assert set(at_limit.backends.values()) == {"triton"}
    too_wide, warned = build_for_cuda(archspec.loads(_wide_spec(MAX_WIDTH + 64)))
    assert set(too_wide.backends.values()) == {"reference"} and warned == []
    assert not any(b.fallback for b in too_wide.backends.values())
    mixed, warned = build_for_cuda(archspec.loads(_wide_spec(MAX_WIDTH // 2, expand=4)))
    assert mixed.backends["sublayers.0.S"] == "reference" and mixed.backends["final_norm"] == "triton"
    assert warned == []
    gpu.recorded.clear()
    with pytest.raises(ValueError, match=rf"backend 'triton' of 'rmsnorm' does not support this config: "
                                         rf"d_model {MAX_WIDTH + 64}: rows of {MAX_WIDTH + 64} columns are "
                                         rf"wider than the Triton norm kernels take \({MAX_WIDTH}\); use "
                                         "backend 'reference'"):
        build(archspec.loads(_wide_spec(MAX_WIDTH + 64)), meta=True, device="cuda",
              backend={"model.norm": "triton", "S": "reference"})
    assert gpu.recorded == []  # refused before any kernel was recorded
    path = str(write(_wide_spec(MAX_WIDTH // 2, expand=4)))
    assert main(["build", path, "--meta", "--device", "cuda", "--backend", "triton"]) == 2
    err = capsys.readouterr().err
    assert ("backend 'triton' of 'mamba2' does not support this config: the gated norm over the "
            f"inner width {2 * MAX_WIDTH}: rows of {2 * MAX_WIDTH} columns are wider") in err
    assert "Traceback" not in err


@pytest.mark.parametrize("message, line", [
    (TRITON_ERROR, "ValueError('unsupported tensor layout for this target (error in layout pass)')"),
    ("ptxas info    : compiling\nptxas error   : Entry function 'k' uses too much shared data\n"
     "ptxas fatal   : Ptx assembly aborted due to errors", "ptxas error   : Entry function 'k' uses too much shared data"),
    ("out of resource: shared memory, Required: 262144, Hardware limit: 232448.", None),
    ("", "the compiler gave no message"),
])
def test_useful_line(message, line):
    assert useful_line(message) == (line or message)


def test_a_long_compiler_line_is_cut():
    cut = useful_line("x" * 1000)
    assert len(cut) == triton_support.MAX_REASON and cut.endswith("...")
