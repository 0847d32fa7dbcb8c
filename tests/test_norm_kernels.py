"""The Triton RMSNorm kernels (archspec/ops/norm: fused residual add + RMSNorm, gated RMSNorm)
against their references: forward values and every gradient, float32 and bfloat16, ragged
shapes; the custom ops under torch.compile, on the meta device and in the FLOP counters; the
`triton` backend of `rmsnorm` in a built model (fused residual adds) against the reference build.
Without a GPU every kernel runs in triton's interpreter (tests/conftest.py sets TRITON_INTERPRET).

Tolerances, as relative errors ||a - b|| / ||b|| over a whole tensor (elementwise relative errors
are meaningless where a gradient nearly cancels):
  * float32: 1e-5. Kernel and reference compute the same formula in float32 and differ only in
    the order of the reductions over n <= 96 columns (8200 in the one test at the real column
    blocks; and dw over <= 700 rows): a few float32 ulps (2^-23 ~ 1.2e-7) per element, growing
    like sqrt(n) at worst; 1e-5 leaves ~100x room over the ~1e-7 observed while any wrong term (a
    missing mean, a wrong group, a chunk left out of a sum) gives errors of order 1e-2 or more.
  * bfloat16 (inputs bfloat16, reference on the same inputs): 1e-2. Both round their outputs to
    bfloat16 (eps 2^-8 ~ 3.9e-3); a different float32 value before that rounding flips a result by
    one ulp (relative <= 2^-8), and the reference's dx of the residual add is rounded twice (the
    norm's gradient, then its sum with dh) where the kernel adds in float32 and rounds once.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archspec import build, load, loads
from archspec.flopcount import analytic_comparable, fvcore_analysis, measure_flopcounter
from archspec.ops import norm as N
from archspec.ops.norm import triton_rmsnorm
from archspec.ops import triton_support
from archspec.ops.triton_support import FLOP_FORMULAS

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "tiny.yaml"
EPS = 1e-5
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # see the module docstring
DTYPES = [torch.float32, torch.bfloat16]
# ragged shapes: n not a power of two, a single row, leading dims flattened; (700, 48) makes the
# backward kernel loop over several row blocks per program and sum dw across programs
SHAPES = [(3, 7, 48), (1, 80), (700, 48)]
GATED = [(True, None), (False, None), (True, 8), (False, 16)]  # (norm_before_gate, group_size)
OPS = ["archspec::rmsnorm", "archspec::add_rmsnorm", "archspec::rmsnorm_backward",
       "archspec::gated_rmsnorm", "archspec::gated_rmsnorm_backward"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(shape, dtype, device, names, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    out = {k: torch.randn(shape, generator=g) for k in names}
    out["weight"] = 1 + 0.5 * torch.randn(n, generator=g)  # not all ones: dw and w both matter
    return {k: v.to(device, dtype).requires_grad_() for k, v in out.items()}


def compare(got, want, grads_got, grads_want, dtype, what):
    for name, a, b in [("y", got, want), *[(f"d{k}", grads_got[k], grads_want[k]) for k in grads_want]]:
        assert a.dtype == b.dtype and a.shape == b.shape, (what, name)
        assert rel(a, b) <= TOL[dtype], (what, name, rel(a, b))


# --- kernels against the references ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rmsnorm_matches_reference(kernel_device, dtype, shape, with_residual):
    t = inputs(shape, dtype, kernel_device, ["x", "r"] if with_residual else ["x"])
    r = t.get("r")
    outs = {}
    for backend in ("triton", "reference"):
        y, h = N.add_rmsnorm(t["x"], r, t["weight"], EPS, backend=backend)
        g = torch.Generator().manual_seed(1)
        dy, dh = (torch.randn(shape, generator=g).to(kernel_device, dtype) for _ in range(2))
        wrt = [t[k] for k in sorted(t)]
        outs[backend] = (y, h, dict(zip(sorted(t), torch.autograd.grad((y, h), wrt, (dy, dh)))))
    (y, h, grads), (y_ref, h_ref, grads_ref) = outs["triton"], outs["reference"]
    # h is the residual stream: exactly x + r in x's dtype (one float32 add, rounded to nearest
    # even, as torch's add does), and x itself without a residual
    assert torch.equal(h, h_ref)
    if r is None:
        assert h is t["x"]
    compare(y, y_ref, grads, grads_ref, dtype, "add_rmsnorm")
    if r is not None:
        assert torch.equal(grads["x"], grads["r"])  # h = x + r: one gradient for both


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rmsnorm_matches_reference(kernel_device, dtype, shape):
    t = inputs(shape, dtype, kernel_device, ["x"])
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(kernel_device, dtype)
    got, want = (N.rmsnorm(t["x"], t["weight"], EPS, backend=b) for b in ("triton", "reference"))
    grads = [dict(zip(("x", "weight"), torch.autograd.grad(y, (t["x"], t["weight"]), dy)))
             for y in (got, want)]
    compare(got, want, *grads, dtype, "rmsnorm")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("norm_before_gate,group_size", GATED)
def test_gated_rmsnorm_matches_reference(kernel_device, dtype, shape, norm_before_gate, group_size):
    t = inputs(shape, dtype, kernel_device, ["x", "z"])
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(kernel_device, dtype)
    wrt = (t["x"], t["z"], t["weight"])
    ys, grads = [], []
    for backend in ("triton", "reference"):
        y = N.gated_rmsnorm(t["x"], t["z"], t["weight"], EPS, norm_before_gate, group_size,
                            backend=backend)
        ys.append(y)
        grads.append(dict(zip(("x", "z", "weight"), torch.autograd.grad(y, wrt, dy))))
    compare(ys[0], ys[1], grads[0], grads[1], dtype, f"gated {norm_before_gate} {group_size}")


def test_groups_are_normalised_separately(kernel_device):
    """A group's output depends on its own columns only: scaling one group of the input leaves
    the others' outputs unchanged (a row-wide norm would change them all)."""
    x, z = torch.randn(4, 48, device=kernel_device), torch.randn(4, 48, device=kernel_device)
    w = torch.ones(48, device=kernel_device)
    y = N.gated_rmsnorm(x, z, w, EPS, True, 16, backend="triton")
    x2 = x.clone()
    x2[:, 16:32] *= 10
    y2 = N.gated_rmsnorm(x2, z, w, EPS, True, 16, backend="triton")
    assert torch.equal(y[:, :16], y2[:, :16]) and torch.equal(y[:, 32:], y2[:, 32:])
    # the scaled group's normalised values are scale-invariant up to eps
    assert rel(y2[:, 16:32], y[:, 16:32]) < 1e-4


def test_mixed_dtypes_follow_each_input(kernel_device):
    """z and w may have other dtypes than x (Mamba2's float32 scan output gated by bf16 z):
    y and dx in x's dtype, dz in z's, dw in w's; values as the reference's."""
    x = torch.randn(5, 32, device=kernel_device, requires_grad=True)
    z = torch.randn(5, 32, device=kernel_device, dtype=torch.bfloat16, requires_grad=True)
    w = torch.rand(32, device=kernel_device, dtype=torch.bfloat16, requires_grad=True)
    outs = []
    for backend in ("triton", "reference"):
        y = N.gated_rmsnorm(x, z, w, EPS, False, backend=backend)
        outs.append((y, *torch.autograd.grad(y.sum(), (x, z, w))))
    for a, b in zip(*outs):
        assert a.dtype == b.dtype
        # z and w are bf16-rounded; the rest is float32 math: float32's tolerance applies to y and
        # dx, bf16's to the gradients stored in bf16
        assert rel(a, b) <= TOL[torch.bfloat16 if a.dtype == torch.bfloat16 else torch.float32]
    assert [t.dtype for t in outs[0]] == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]


def test_dw_is_deterministic(kernel_device):
    """dw is summed per program, then across programs in torch (no atomics): bitwise repeatable."""
    t = inputs((700, 48), torch.float32, kernel_device, ["x", "r"])
    dws = []
    for _ in range(2):
        y, h = N.add_rmsnorm(t["x"], t["r"], t["weight"], EPS, backend="triton")
        dws.append(torch.autograd.grad((y * y).sum() + h.sum(), t["weight"])[0])
    assert torch.equal(dws[0], dws[1])


def test_empty_input(kernel_device):
    x = torch.randn(0, 48, device=kernel_device, requires_grad=True)
    w = torch.ones(48, device=kernel_device, requires_grad=True)
    y, h = N.add_rmsnorm(x, x, w, EPS, backend="triton")
    assert y.shape == h.shape == (0, 48)
    dx, dw = torch.autograd.grad(y.sum(), (x, w))
    assert dx.shape == (0, 48) and torch.equal(dw, torch.zeros(48))


# --- rows wider than a column block: column blocks, chunked groups, stats kernels ---------------
# The kernels hold at most FWD_COLUMNS / BWD_COLUMNS columns of a row per program (8192 / 4096);
# here those blocks are shrunk to 16 / 8 columns (and the tile to 16 elements, so a program
# holds 1-2 rows and the backward loops over several row blocks) so that small shapes take every
# path: groups split into chunks with a ragged last chunk, whole groups in several column blocks
# with a masked last block, and dw summed over programs and column blocks.

SMALL_BLOCKS = dict(FWD_COLUMNS=16, BWD_COLUMNS=8, TILE=16, BWD_PROGRAMS_CPU=12)


@pytest.fixture
def small_blocks(monkeypatch):
    for name, value in SMALL_BLOCKS.items():
        monkeypatch.setattr(triton_rmsnorm, name, value)


def _paths(shape, **kwargs) -> dict[str, set]:
    """kernel -> the SPLIT flags of its launches (None for the stats kernels), as recorded."""
    found: dict[str, set] = {}
    for launch in triton_rmsnorm.kernel_launches(shape[-1], torch.float32, rows=math.prod(shape[:-1]), **kwargs):
        found.setdefault(launch.kernel.split(".")[1], set()).add(dict(launch.constexprs).get("SPLIT"))
    return found


# (shape, norm_before_gate or None: add_rmsnorm, group_size, the kernels that must run)
STATS = {"norm_fwd_stats_kernel": {None}, "norm_bwd_stats_kernel": {None}}
CHUNKED = [
    # one group of 40: forward chunks 16+16+8, backward 8 x 5; 13 rows: 7 row blocks of 2 in
    # the backward, 4 per program (2 programs per column block: 12 // 5)
    ((13, 40), None, None, {**STATS, "norm_fwd_kernel": {True}, "norm_bwd_kernel": {True}}),
    ((1, 40), None, None, {**STATS, "norm_fwd_kernel": {True}, "norm_bwd_kernel": {True}}),
    # three groups of 20, both gates: chunks 16+4 (forward), 8+8+4 (backward)
    ((5, 3, 60), False, 20, {**STATS, "norm_fwd_kernel": {True}, "norm_bwd_kernel": {True}}),
    ((5, 3, 60), True, 20, {**STATS, "norm_fwd_kernel": {True}, "norm_bwd_kernel": {True}}),
    # groups of 12: whole in the forward's 16-column blocks (three blocks), chunked backward
    ((13, 36), True, 12, {"norm_fwd_kernel": {False}, "norm_bwd_stats_kernel": {None},
                          "norm_bwd_kernel": {True}}),
    # ten groups of 4: whole groups, 4 per forward block and 2 per backward block (masked last)
    ((13, 40), False, 4, {"norm_fwd_kernel": {False}, "norm_bwd_kernel": {False}}),
]


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,norm_before_gate,group_size,kernels", CHUNKED,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CHUNKED])
def test_column_blocks_match_reference(kernel_device, dtype, shape, norm_before_gate, group_size, kernels):
    """Values and every gradient as the reference's, within TOL, through the path `kernels`
    names (checked on the recorded launches: the stats kernels run exactly where groups are
    wider than a block)."""
    gated = norm_before_gate is not None
    flags = dict(gate=True, norm_before_gate=norm_before_gate, group_size=group_size) if gated \
        else dict(residual=True)
    assert _paths(shape, **flags) == kernels
    t = inputs(shape, dtype, kernel_device, ["x", "z"] if gated else ["x", "r"])
    g = torch.Generator().manual_seed(1)
    dy, dh = (torch.randn(shape, generator=g).to(kernel_device, dtype) for _ in range(2))
    outs = []
    for backend in ("triton", "reference"):
        if gated:
            y = N.gated_rmsnorm(t["x"], t["z"], t["weight"], EPS, norm_before_gate, group_size,
                                backend=backend)
            outputs, cotangents = (y,), (dy,)
        else:
            y, h = N.add_rmsnorm(t["x"], t["r"], t["weight"], EPS, backend=backend)
            outputs, cotangents = (y, h), (dy, dh)
        outs.append((outputs, dict(zip(sorted(t), torch.autograd.grad(outputs, [t[k] for k in sorted(t)],
                                                                       cotangents)))))
    (got, grads), (want, grads_want) = outs
    if not gated:  # h, stored by the stats kernel, is exactly x + r rounded, as torch's add
        assert torch.equal(got[1], want[1])
    compare(got[0], want[0], grads, grads_want, dtype, f"chunked {shape} {norm_before_gate} {group_size}")


@pytest.mark.usefixtures("small_blocks")
def test_chunked_dw_is_deterministic(kernel_device):
    """dw summed per program and column block, then in torch: bitwise repeatable when chunked."""
    t = inputs((13, 40), torch.float32, kernel_device, ["x", "z"])
    dws = [torch.autograd.grad(N.gated_rmsnorm(t["x"], t["z"], t["weight"], EPS, False, 20,
                                               backend="triton").square().sum(), t["weight"])[0]
           for _ in range(2)]
    assert torch.equal(dws[0], dws[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_real_column_blocks_match_reference(kernel_device, dtype):
    """At the shipped block sizes: a row of FWD_COLUMNS + 8 columns is chunked in both
    directions (8192 + 8 forward, 4096 + 4096 + 8 backward), with the residual add."""
    n = triton_rmsnorm.FWD_COLUMNS + 8
    assert _paths((3, n), residual=True) == {**STATS, "norm_fwd_kernel": {True}, "norm_bwd_kernel": {True}}
    t = inputs((3, n), dtype, kernel_device, ["x", "r"])
    g = torch.Generator().manual_seed(1)
    dy, dh = (torch.randn(3, n, generator=g).to(kernel_device, dtype) for _ in range(2))
    outs = []
    for backend in ("triton", "reference"):
        y, h = N.add_rmsnorm(t["x"], t["r"], t["weight"], EPS, backend=backend)
        outs.append((y, h, dict(zip(("r", "weight", "x"), torch.autograd.grad(
            (y, h), (t["r"], t["weight"], t["x"]), (dy, dh))))))
    (y, h, grads), (y_ref, h_ref, grads_ref) = outs
    assert torch.equal(h, h_ref)
    compare(y, y_ref, grads, grads_ref, dtype, "real blocks")


def test_blocks_stay_within_their_limits_up_to_max_width():
    """Every launch up to MAX_WIDTH (plain, gated, many small groups) holds at most
    FWD_COLUMNS (forward) or BWD_COLUMNS (backward, stats) columns of a row: what the gate
    measured to fit in registers without spills."""
    limits = {"norm_fwd_kernel": triton_rmsnorm.FWD_COLUMNS, "norm_bwd_kernel": triton_rmsnorm.BWD_COLUMNS,
              "norm_fwd_stats_kernel": triton_rmsnorm.BWD_COLUMNS, "norm_bwd_stats_kernel": triton_rmsnorm.BWD_COLUMNS}
    for kwargs in (dict(), dict(gate=True, norm_before_gate=False), dict(gate=True, group_size=16)):
        for launch in triton_rmsnorm.kernel_launches(N.MAX_WIDTH, torch.bfloat16, **kwargs):
            c = dict(launch.constexprs)
            assert c.get("BLOCK_NG", 1) * c["BLOCK_G"] <= limits[launch.kernel.split(".")[1]], launch.config
            assert launch.num_warps <= 16


def test_rows_wider_than_max_width_are_a_clear_value_error():
    n = N.MAX_WIDTH + 1
    x = torch.empty(2, n, device="meta")
    with pytest.raises(ValueError, match=rf"fused RMSNorm: rows of {n} columns are wider than the "
                                         rf"Triton norm kernels take \({N.MAX_WIDTH}\); use "
                                         "backend 'reference'"):
        N.rmsnorm(x, torch.empty(n, device="meta"), EPS, backend="triton")
    assert N.width_unsupported(N.MAX_WIDTH) is None
    assert N.width_unsupported(N.MAX_WIDTH, 16) is None


# --- errors ------------------------------------------------------------------------------------

def test_bad_inputs_are_value_errors(kernel_device):
    x = torch.randn(4, 48, device=kernel_device)
    w = torch.ones(48, device=kernel_device)
    with pytest.raises(ValueError, match=r"residual has shape \(4, 47\) but x has \(4, 48\)"):
        N.add_rmsnorm(x, torch.randn(4, 47, device=kernel_device), w, EPS, backend="triton")
    with pytest.raises(ValueError, match="residual is torch.bfloat16 but x is torch.float32"):
        N.add_rmsnorm(x, x.bfloat16(), w, EPS, backend="triton")
    with pytest.raises(ValueError, match=r"weight has shape \(40,\), expected \(48,\)"):
        N.rmsnorm(x, torch.ones(40, device=kernel_device), EPS, backend="triton")
    with pytest.raises(ValueError, match=r"z has shape \(4, 24\)"):
        N.gated_rmsnorm(x, x[:, :24], w, EPS, True, backend="triton")
    with pytest.raises(ValueError, match="group_size 20 does not divide the normalised size 48; "
                                         "use a divisor of 48"):
        N.gated_rmsnorm(x, x, w, EPS, True, 20, backend="triton")
    with pytest.raises(ValueError, match="torch.float64.*use backend 'reference'"):
        N.rmsnorm(x.double(), w, EPS, backend="triton")
    with pytest.raises(ValueError, match="unknown norm backend 'cuda'.*reference, triton"):
        N.gated_rmsnorm(x, x, w, EPS, True, backend="cuda")


def test_cpu_without_the_interpreter_is_a_clear_value_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # triton_unavailable reads it at call time
    x = torch.randn(4, 48)
    with pytest.raises(ValueError, match="cannot run the Triton kernel on cpu: .*need a CUDA "
                                         "device.*TRITON_INTERPRET=1"):
        N.rmsnorm(x, torch.ones(48), EPS, backend="triton")
    with pytest.raises(ValueError, match="backend 'triton' of 'rmsnorm' cannot run on cpu: "
                                         "Triton kernels need a CUDA device"):
        build(load(TINY), seed=0, backend={"model.norm": "triton"})
    # auto keeps the reference where triton cannot run
    assert set(build(load(TINY), seed=0).backends.values()) == {"reference"}


# --- custom ops: compile, meta, FLOP counters ----------------------------------------------------

def _all_ops(x, r, z, w):
    y, h = triton_rmsnorm.fused_add_rmsnorm(x, r, w, EPS)
    a = triton_rmsnorm.fused_rmsnorm(y, w, EPS)
    b = triton_rmsnorm.fused_gated_rmsnorm(h, z, w, EPS, False, 8)
    return a + b


def test_custom_ops_under_torch_compile(kernel_device):
    """fullgraph: the entry points trace without a graph break; aot_eager also traces the
    backward ops through their fake implementations."""
    t = inputs((3, 5, 24), torch.float32, kernel_device, ["x", "r", "z"])
    args = (t["x"], t["r"], t["z"], t["weight"])
    eager = _all_ops(*args)
    grads = torch.autograd.grad(eager.sum(), args)
    compiled = torch.compile(_all_ops, fullgraph=True, backend="aot_eager")(*args)
    grads_c = torch.autograd.grad(compiled.sum(), args)
    # the same kernels run in both: bitwise equal
    assert torch.equal(compiled, eager)
    assert all(torch.equal(a, b) for a, b in zip(grads_c, grads))


def test_custom_ops_on_the_meta_device():
    t = inputs((2, 3, 24), torch.bfloat16, "meta", ["x", "r", "z"])
    out = _all_ops(t["x"], t["r"], t["z"], t["weight"])
    assert out.device.type == "meta" and out.shape == (2, 3, 24) and out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.sum(), [t[k] for k in ("x", "r", "z", "weight")])
    assert [g.shape for g in grads] == [(2, 3, 24)] * 3 + [(24,)]
    assert all(g.device.type == "meta" and g.dtype == torch.bfloat16 for g in grads)


def test_flopcounter_counts_the_ops_as_zero(kernel_device):
    """Norms are `other` work, which FlopCounterMode leaves out: the kernels' ops are registered
    (so fvcore knows them) and count 0, beside a matmul that is counted."""
    triton_support.install_flop_formulas()
    assert set(OPS) <= set(FLOP_FORMULAS)
    from torch.utils.flop_counter import flop_registry
    assert all(getattr(torch.ops.archspec, op.split("::")[1]) in flop_registry for op in OPS)
    t = inputs((4, 24), torch.float32, kernel_device, ["x", "r", "z"])
    m = torch.randn(24, 24, device=kernel_device)
    with FlopCounterMode(display=False) as mode:
        out = _all_ops(t["x"], t["r"], t["z"], t["weight"]) @ m
        out.sum().backward()
    counts = mode.get_flop_counts()["Global"]
    # the matmul alone: forward, and its input's gradient in backward (m needs none)
    assert sum(counts.values()) == 2 * (2 * 4 * 24 * 24)
    assert all(counts.get(getattr(torch.ops.archspec, op.split("::")[1]), 0) == 0 for op in OPS)


# --- the model: triton norms, fused residual adds -------------------------------------------------

PARALLEL = """\
model: {name: par, vocab_size: 64, d_model: 32, max_seq_len: 16, norm: {type: rmsnorm}}
components:
  A: {type: attention, n_heads: 2}
  F: {type: mlp, activation: swiglu, d_ff: 48}
layout: "[A | F] x 2"
"""


# float32: the norms differ from the reference by reduction order (~1e-7 each, module docstring),
# carried through a few sublayers and the head: observed ~1e-7 (logits), ~6e-7 (gradients).
# bfloat16: forward values round to the same bf16 numbers but for an occasional one-ulp flip
# (2^-8); in backward the reference rounds the residual's dx twice per norm (module docstring),
# differences that add up over the sublayers: observed 0 (logits), ~6e-3 (gradients); 2e-2
# bounds a few ulps' worth, while a wrong fused add or a lost gate gives order-1 errors.
MODEL_TOL = {"float32": 1e-5, "bfloat16": 2e-2}


@pytest.mark.parametrize("spec,dtype", [("tiny", "float32"), ("parallel", "float32"),
                                        ("parallel_token", "float32"), ("tiny", "bfloat16")])
def test_triton_norms_match_the_reference_build(kernel_device, spec, dtype):
    """Same seed, same weights (same module tree and parameter names); logits and every
    parameter's gradient within MODEL_TOL. The parallel spec exercises a gated group handing its
    last update on to the next norm (parallel_token: with token gates, computed from the norm's
    output)."""
    s = load(TINY) if spec == "tiny" else loads(PARALLEL if spec == "parallel" else
                                                PARALLEL.replace("norm: {type: rmsnorm}}", "norm: {type: rmsnorm}, group_gates: softmax}"))
    ref = build(s, seed=0, device=kernel_device, dtype=dtype)
    tri = build(s, seed=0, device=kernel_device, dtype=dtype, backend={"model.norm": "triton"})
    assert not ref.fused_residual_norms and tri.fused_residual_norms
    n_sub = len(s.sublayers)
    assert tri.backends["final_norm"] == "triton"
    assert [tri.backends[f"sublayers.{i}.norm"] for i in range(n_sub)] == ["triton"] * n_sub
    norms = lambda m: [m.final_norm, *(b.norm for b in m.sublayers)]  # noqa: E731
    assert {n.backend for n in norms(ref)} == {"reference"} and {n.backend for n in norms(tri)} == {"triton"}
    assert ref.state_dict().keys() == tri.state_dict().keys()
    assert all(torch.equal(v, tri.state_dict()[k]) for k, v in ref.state_dict().items())
    tokens = torch.randint(0, s.model.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(kernel_device)
    out_ref, out_tri = ref(tokens, labels=tokens), tri(tokens, labels=tokens)
    assert rel(out_tri.logits, out_ref.logits) <= MODEL_TOL[dtype]
    out_ref.loss.backward()
    out_tri.loss.backward()
    grads_tri = dict(tri.named_parameters())
    for name, p in ref.named_parameters():
        assert rel(grads_tri[name].grad, p.grad) <= MODEL_TOL[dtype], name


def test_triton_build_compiles_fullgraph(kernel_device):
    """The fused residual path traces without a graph break (the kernels are opaque custom ops);
    aot_eager runs the same kernels and aten ops, so the loss agrees to float32 rounding (1e-6:
    decompositions may reorder a few float32 operations; observed equal)."""
    model = build(load(TINY), seed=0, device=kernel_device, backend={"model.norm": "triton"})
    tokens = torch.randint(0, 256, (2, 12), device=kernel_device)
    eager = model(tokens, labels=tokens).loss
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(tokens, labels=tokens).loss
    assert rel(compiled, eager) <= 1e-6
    compiled.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_norm_backend_choice_in_build():
    spec = load(TINY)
    with pytest.raises(ValueError, match="unknown component.*'norm'.*'model.norm' names the model's norm"):
        build(spec, backend={"norm": "triton"})
    with pytest.raises(ValueError, match="'rmsnorm' has no 'fast' backend.*reference, triton"):
        build(spec, backend={"model.norm": "fast"})
    model = build(spec, meta=True, backend={"model.norm": "triton", "A": "reference"})
    assert model.backends["final_norm"] == "triton" and model.backends["sublayers.0.A"] == "reference"
    # a string names the norm's backend too
    assert set(build(spec, meta=True, backend="reference").backends.values()) == {"reference"}


def test_fvcore_knows_the_kernels(kernel_device, monkeypatch):
    """fvcore traces the triton build: no archspec op unsupported, and the count is the
    analytic matmul + attention count, as for the reference build."""
    spec = load(TINY)
    model = build(spec, seed=0, device=kernel_device, backend={"model.norm": "triton"})
    tokens = torch.randint(0, 256, (1, 8), device=kernel_device)
    result = fvcore_analysis(model, tokens)
    assert not [op for op in result.unsupported if op.startswith("archspec::")], result.unsupported
    assert result.flops == analytic_comparable(spec, 8)
    # the trace holds the kernels' ops: without their formulas fvcore reports them
    monkeypatch.setattr(triton_support, "FLOP_FORMULAS", {})
    unsupported = fvcore_analysis(model, tokens).unsupported
    assert {k: v for k, v in unsupported.items() if k.startswith("archspec::")} == {
        "archspec::rmsnorm": 1, "archspec::add_rmsnorm": 4}  # the first norm has no residual yet
    assert measure_flopcounter(model, tokens) == analytic_comparable(spec, 8)

