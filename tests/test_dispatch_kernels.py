"""MoM's dispatch kernels (archspec/ops/dispatch) against the plain PyTorch reference: gather
and combine, forward and every gradient, on ragged routings. Without a GPU the Triton kernels
run in triton's interpreter (tests/conftest.py), so shapes are small.

Ground truth: the reference ops evaluated in float64 on the very inputs the kernel sees (the
bf16 / fp16 values upcast exactly), gradients by torch.autograd.grad through them. Tolerances
are error bounds, not fudge factors: a sum of n products accumulated in float32 and rounded
once to the output dtype is within

    u_out |exact| + (n + 1) u_32 sum |terms|                     (Higham 2002, sections 3.1, 4.2)

of the exact value (u = unit roundoff = finfo.eps / 2: 2^-24 float32, 2^-8 bfloat16, 2^-11
float16; the n - 1 additions and the one product per term take n roundings in float32, plus one
of margin; the upcasts of bf16 / fp16 inputs to float32 are exact). For float32 outputs with at
most a handful of terms that is a few ulps; for bfloat16 it is half a bf16 ulp (relative 2^-8,
so a relative RMS error far below 1e-2).
Exception: triton's interpreter converts float32 to bfloat16 by truncation (cast_impl in
triton/runtime/interpreter.py passes no rounding mode), where GPUs round to nearest even
(cvt.rn.bf16.f32), so under the interpreter a bf16 output may be off by one whole ulp
(u_out = eps, relative 2^-7) and the bound allows that there.
"""
from __future__ import annotations

import pytest
import torch

from archspec.ops import dispatch
from archspec.ops.dispatch import RowMap, combine_rows, gather_rows, naive, plan_dispatch, row_map

F64 = torch.float64


# --- cases -------------------------------------------------------------------------------------

def _routing(batch, seq_len, n_memories, topk, shared, capacity, avoid=None, seed=0):
    """A realistic token array from MoM's own planner (memory-major packed rows)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch * seq_len, n_memories, generator=g)
    if avoid is not None:
        logits[:, avoid] = -1e9
    weights, idx = torch.softmax(logits, -1).topk(topk, -1)
    plan = plan_dispatch(idx, weights / weights.sum(-1, keepdim=True), batch, seq_len, n_memories,
                         shared, capacity)
    return plan


def _cases():
    """name -> (n_tokens, token int64 [P])."""
    cases = {}
    plan = _routing(2, 6, 4, 2, shared=True, capacity=None)
    cases["top2_shared"] = (12, plan.token)
    # memory 3 never chosen: its packed group is empty (the token array simply lacks it)
    plan = _routing(2, 6, 4, 2, shared=True, capacity=None, avoid=3)
    assert plan.memory_rows[3] == 0
    cases["idle_memory"] = (12, plan.token)
    # capacity without a shared memory: some tokens lose every assignment and have no row
    plan = _routing(1, 12, 4, 1, shared=False, capacity=0.5, seed=1)
    assert torch.bincount(plan.token, minlength=12).eq(0).any()
    cases["capacity_drops"] = (12, plan.token)
    cases["one_row"] = (5, torch.tensor([3]))
    cases["no_rows"] = (6, torch.zeros(0, dtype=torch.int64))
    # token 2 has 5 rows, interleaved with others; tokens 0, 5 and 6 have none
    cases["duplicates"] = (7, torch.tensor([2, 4, 2, 2, 1, 2, 3, 2, 4]))
    return cases


CASES = _cases()
DTYPES = {  # (x / o dtype, weight dtype); MoM's routing weights stay float32
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.float32),
    "bf16_w": (torch.bfloat16, torch.bfloat16),
    "fp16": (torch.float16, torch.float32),
}
D = 13  # not a power of two: the column mask matters


def _u(dtype) -> float:
    return torch.finfo(dtype).eps / 2


def _u_out(dtype) -> float:
    """Rounding error of the kernel's final conversion to `dtype` (see the top)."""
    from archspec.ops.triton_support import interpreting
    return torch.finfo(dtype).eps if dtype == torch.bfloat16 and interpreting() else _u(dtype)


def _assert_bound(actual, exact, abs_terms, n_terms, what):
    """|actual - exact| <= u_out |exact| + (n + 1) u_32 sum|terms|, elementwise (see the top)."""
    assert actual.dtype != F64
    bound = _u_out(actual.dtype) * exact.abs() + (n_terms + 1) * _u(torch.float32) * abs_terms
    err = (actual.to(F64) - exact).abs()
    worst = (err - bound).max().item() if err.numel() else 0.0
    assert worst <= 0, f"{what}: error exceeds the rounding bound by {worst:.3g}"


def _max_rows(token, n_tokens) -> int:
    return int(torch.bincount(token, minlength=n_tokens).max()) if token.numel() else 0


# --- the reference itself ------------------------------------------------------------------------

def test_reference_by_hand():
    """The ground truth on numbers worked out by hand: token 1 gets two rows, 0 one, 2 none."""
    o = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    out = naive.combine_rows(o, torch.tensor([0.5, 2.0, 1.0]), torch.tensor([1, 1, 0]), 3)
    assert torch.equal(out, torch.tensor([[5.0, 6.0], [6.5, 9.0], [0.0, 0.0]]))
    x = torch.tensor([[1.0], [2.0], [3.0]])
    assert torch.equal(naive.gather_rows(x, torch.tensor([2, 2, 0])), torch.tensor([[3.0], [3.0], [1.0]]))


# --- against the reference -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_gather_matches_reference(case, dtype, kernel_device):
    n, token = CASES[case]
    token = token.to(kernel_device)
    dt = DTYPES[dtype][0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g).to(kernel_device, dt).requires_grad_()
    dp = torch.randn(token.shape[0], D, generator=g).to(kernel_device, dt)
    packed = gather_rows(x, token, backend="triton")
    dx, = torch.autograd.grad(packed, x, dp)
    x64 = x.detach().to(F64).requires_grad_()
    exact = naive.gather_rows(x64, token)
    dx64, = torch.autograd.grad(exact, x64, dp.to(F64))
    assert packed.dtype == dt and packed.shape == (token.shape[0], D)
    assert torch.equal(packed.to(F64), exact)  # a copy is exact
    assert dx.dtype == dt and dx.shape == (n, D)
    ones = torch.ones(token.shape[0], dtype=F64, device=kernel_device)
    dx_abs = naive.combine_rows(dp.to(F64).abs(), ones, token, n)
    _assert_bound(dx, dx64, dx_abs, _max_rows(token, n), "dx")
    assert dx[torch.bincount(token, minlength=n) == 0].eq(0).all()  # tokens without rows: exactly 0


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
def test_combine_matches_reference(case, dtype, kernel_device):
    n, token = CASES[case]
    token = token.to(kernel_device)
    dt, wdt = DTYPES[dtype]
    p = token.shape[0]
    g = torch.Generator().manual_seed(1)
    o = torch.randn(p, D, generator=g).to(kernel_device, dt).requires_grad_()
    w = torch.rand(p, generator=g).to(kernel_device, wdt).requires_grad_()
    dout = torch.randn(n, D, generator=g).to(kernel_device, dt)
    out = combine_rows(o, w, token, n, backend="triton")
    do, dw = torch.autograd.grad(out, (o, w), dout)
    o64, w64 = o.detach().to(F64).requires_grad_(), w.detach().to(F64).requires_grad_()
    exact = naive.combine_rows(o64, w64, token, n)
    do64, dw64 = torch.autograd.grad(exact, (o64, w64), dout.to(F64))
    assert (out.dtype, do.dtype, dw.dtype) == (dt, dt, wdt)
    assert out.shape == (n, D) and do.shape == (p, D) and dw.shape == (p,)
    out_abs = naive.combine_rows(o64.detach().abs(), w64.detach().abs(), token, n)
    _assert_bound(out, exact, out_abs, _max_rows(token, n), "out")
    _assert_bound(do, do64, do64.abs(), 1, "do")  # one product per element
    dw_abs = (o64.detach() * dout.to(F64)[token]).abs().sum(-1)
    _assert_bound(dw, dw64, dw_abs, D, "dweight")  # a dot of D terms
    missing = torch.bincount(token, minlength=n) == 0
    assert out[missing].eq(0).all()  # a token without rows (dropped, or no rows at all) is zero


@pytest.mark.parametrize("op", ["gather", "combine"])
def test_wide_rows(op, kernel_device):
    """D = 200 > MAX_BLOCK_D (128): two column blocks, and the combine backward's loop over
    them. Float32, at most 3 rows per token: the bound (see the top) is a few ulps."""
    n, token, d = 4, torch.tensor([0, 3, 0, 1, 0], device=kernel_device), 200
    p = token.shape[0]
    g = torch.Generator().manual_seed(2)
    if op == "gather":
        x = torch.randn(n, d, generator=g).to(kernel_device).requires_grad_()
        dp = torch.randn(p, d, generator=g).to(kernel_device)
        packed = gather_rows(x, token, backend="triton")
        dx, = torch.autograd.grad(packed, x, dp)
        assert torch.equal(packed, x.detach()[token])
        exact = naive.combine_rows(dp.to(F64), torch.ones(p, dtype=F64, device=kernel_device), token, n)
        abs_terms = naive.combine_rows(dp.to(F64).abs(), torch.ones(p, dtype=F64, device=kernel_device), token, n)
        _assert_bound(dx, exact, abs_terms, 3, "dx")
    else:
        o = torch.randn(p, d, generator=g).to(kernel_device).requires_grad_()
        w = torch.rand(p, generator=g).to(kernel_device).requires_grad_()
        dout = torch.randn(n, d, generator=g).to(kernel_device)
        out = combine_rows(o, w, token, n, backend="triton")
        do, dw = torch.autograd.grad(out, (o, w), dout)
        o64, w64 = o.detach().to(F64).requires_grad_(), w.detach().to(F64).requires_grad_()
        exact = naive.combine_rows(o64, w64, token, n)
        do64, dw64 = torch.autograd.grad(exact, (o64, w64), dout.to(F64))
        _assert_bound(out, exact, naive.combine_rows(o64.detach().abs(), w64.detach(), token, n), 3, "out")
        _assert_bound(do, do64, do64.abs(), 1, "do")
        _assert_bound(dw, dw64, (o64.detach() * dout.to(F64)[token]).abs().sum(-1), d, "dweight")


def test_float64_accumulates_in_float64(kernel_device):
    """float64 inputs accumulate in float64: within a few float64 ulps of the reference (1e-12
    relative is ~5000 ulps of slack, yet 10^5 times tighter than a float32 accumulator's ~1e-7)."""
    n, token = CASES["duplicates"]
    token = token.to(kernel_device)
    g = torch.Generator().manual_seed(6)
    o = torch.randn(token.shape[0], D, generator=g, dtype=F64).to(kernel_device).requires_grad_()
    w = torch.rand(token.shape[0], generator=g, dtype=F64).to(kernel_device).requires_grad_()
    dout = torch.randn(n, D, generator=g, dtype=F64).to(kernel_device)
    got = [combine_rows(o, w, token, n, backend=b) for b in ("triton", "reference")]
    grads = [torch.autograd.grad(y, (o, w), dout) for y in got]
    for a, b in zip((got[0], *grads[0]), (got[1], *grads[1])):
        assert a.dtype == F64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    x = torch.randn(n, D, generator=g, dtype=F64).to(kernel_device).requires_grad_()
    dx = [torch.autograd.grad(gather_rows(x, token, backend=b), x, o.detach())[0] for b in ("triton", "reference")]
    assert dx[0].dtype == F64
    torch.testing.assert_close(dx[0], dx[1], rtol=1e-12, atol=1e-12)


# --- the RowMap ----------------------------------------------------------------------------------

def test_row_map_is_the_csr_inverse(kernel_device):
    token = torch.tensor([2, 4, 2, 2, 1, 2, 3, 2, 4], device=kernel_device)
    rows = row_map(token, 7)
    assert isinstance(rows, RowMap) and rows.n_tokens == 7 and rows.n_rows == 9
    assert rows.offsets.tolist() == [0, 0, 1, 6, 7, 9, 9, 9]
    # rows of each token in ascending order (the stable sort): the fixed summation order
    assert rows.order.tolist() == [4, 0, 2, 3, 5, 7, 6, 1, 8]
    empty = row_map(torch.zeros(0, dtype=torch.int64, device=kernel_device), 3)
    assert empty.offsets.tolist() == [0, 0, 0, 0] and empty.order.numel() == 0


def test_row_map_reused_by_both_ops(kernel_device):
    """One RowMap per dispatch, passed to the gather and the combine, gives bit-identical
    results and gradients to the simple entry points (which build it themselves)."""
    n, token = CASES["top2_shared"]
    token = token.to(kernel_device)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, D, generator=g).to(kernel_device).requires_grad_()
    w = torch.rand(token.shape[0], generator=g).to(kernel_device).requires_grad_()

    def run(index, n_tokens):
        out = combine_rows(gather_rows(x, index, backend="triton").sin(), w, index, n_tokens, backend="triton")
        return (out, *torch.autograd.grad(out.square().sum(), (x, w)))

    rows = row_map(token, n)
    for a, b in zip(run(rows, None), run(token, n)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="built for 12 tokens"):
        combine_rows(torch.randn(token.shape[0], D, device=kernel_device), w, rows, 5, backend="triton")


# --- properties ----------------------------------------------------------------------------------

def test_backward_is_deterministic(kernel_device):
    """Two backward runs are bit-identical (no atomics; fixed CSR order), on duplicate-heavy
    tokens where an atomic scatter-add would be free to reorder the sums."""
    n, token = 3, torch.tensor([1, 0, 1, 1, 2, 1, 1, 0, 1, 1], device=kernel_device)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, D, generator=g).to(kernel_device).requires_grad_()
    w = torch.rand(token.shape[0], generator=g).to(kernel_device).requires_grad_()
    dout = torch.randn(n, D, generator=g).to(kernel_device)

    def grads():
        packed = gather_rows(x, token, backend="triton")
        out = combine_rows(packed.exp(), w, token, n, backend="triton")
        return torch.autograd.grad(out, (x, w), dout)

    first, second = grads(), grads()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert first[0].abs().sum() > 0  # not trivially equal


def test_torch_compile_fullgraph(kernel_device):
    """torch.compile(fullgraph=True) traces through row_map and both custom ops (fake impls,
    autograd) without a graph break; results and gradients equal eager's bit for bit."""
    n, token = CASES["capacity_drops"]
    token = token.to(kernel_device)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, D, generator=g).to(kernel_device)
    w = torch.rand(token.shape[0], generator=g).to(kernel_device)

    def fn(x, w, token):
        rows = row_map(token, x.shape[0])
        packed = gather_rows(x, rows, backend="triton")
        return combine_rows(torch.tanh(packed), w, rows, backend="triton")

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        from torch._dynamo.backends.registry import lookup_backend
        return lookup_backend("aot_eager")(gm, example_inputs)  # traces the fake impls and autograd

    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    results = []
    for f in (fn, compiled):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = f(xi, wi, token)
        results.append((out, *torch.autograd.grad(out.sum(), (xi, wi))))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert len(graphs) == 1 and "dispatch_gather" in graphs[0] and "dispatch_combine" in graphs[0]


def test_meta_device():
    """On the meta device the fake implementations give the shapes and dtypes, gradients too."""
    token = torch.empty(9, dtype=torch.int64, device="meta")
    x = torch.empty(7, D, dtype=torch.bfloat16, device="meta", requires_grad=True)
    o = torch.empty(9, D, dtype=torch.float16, device="meta", requires_grad=True)
    w = torch.empty(9, dtype=torch.float32, device="meta", requires_grad=True)
    rows = row_map(token, 7)
    assert rows.offsets.shape == (8,) and rows.order.shape == (9,)
    packed = gather_rows(x, rows, backend="triton")
    out = combine_rows(o, w, rows, backend="triton")
    assert (packed.shape, packed.dtype, packed.device.type) == ((9, D), torch.bfloat16, "meta")
    assert (out.shape, out.dtype) == ((7, D), torch.float16)
    dx, = torch.autograd.grad(packed.sum(), x)
    do, dw = torch.autograd.grad(out.sum(), (o, w))
    assert (dx.shape, dx.dtype) == ((7, D), torch.bfloat16)
    assert (do.shape, do.dtype, dw.shape, dw.dtype) == ((9, D), torch.float16, (9,), torch.float32)


def test_flop_counter_counts_zero(kernel_device):
    """FlopCounterMode sees all four ops (their formulas are registered) and counts them 0 (data
    movement, or elementwise `other` work that it leaves out); a matmul beside them is counted
    exactly, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode
    n, token = CASES["top2_shared"]
    token = token.to(kernel_device)
    x = torch.randn(n, D, device=kernel_device, requires_grad=True)
    w = torch.rand(token.shape[0], device=kernel_device, requires_grad=True)
    lin = torch.randn(D, 8, device=kernel_device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = combine_rows(gather_rows(x, token, backend="triton") @ lin, w, token, n, backend="triton")
        out.sum().backward()
    p = token.shape[0]
    assert counter.get_total_flops() == 3 * 2 * p * D * 8  # the matmul and its two gradients
    counts = counter.get_flop_counts()["Global"]
    ops = torch.ops.archspec
    for op in (ops.dispatch_gather, ops.dispatch_gather_backward, ops.dispatch_combine,
               ops.dispatch_combine_backward):
        assert op in counts and counts[op] == 0
    assert x.grad is not None and w.grad is not None


def test_fvcore_supports_the_ops(kernel_device):
    """fvcore's trace sees the custom ops; with archspec's handles installed none is reported
    unsupported, and they add 0 to the matmul's count."""
    pytest.importorskip("fvcore")
    from fvcore.nn import FlopCountAnalysis
    from archspec.ops.triton_support import fvcore_handles
    n, token = CASES["top2_shared"]
    token = token.to(kernel_device)

    class Mod(torch.nn.Module):
        def forward(self, x, w, lin):
            return combine_rows(gather_rows(x, token, backend="triton") @ lin, w, token, n, backend="triton")

    args = (torch.randn(n, D, device=kernel_device), torch.rand(token.shape[0], device=kernel_device),
            torch.randn(D, 8, device=kernel_device))
    def analyse(with_handles: bool):
        analysis = FlopCountAnalysis(Mod(), args)
        if with_handles:
            for name, handle in fvcore_handles().items():
                analysis.set_op_handle(name, handle)
        analysis.unsupported_ops_warnings(False)
        return analysis.total(), {op for op in analysis.unsupported_ops() if op.startswith("archspec::")}

    # without handles fvcore skips them (so the trace does contain them) ...
    assert analyse(False)[1] == {"archspec::dispatch_gather", "archspec::dispatch_combine"}
    # ... with archspec's handles none is unsupported, and they add 0 to the matmul's MACs
    assert analyse(True) == (token.shape[0] * D * 8, set())


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_inputs(backend, kernel_device):
    dev = kernel_device
    x = torch.randn(4, D, device=dev)
    o, w, token = torch.randn(3, D, device=dev), torch.rand(3, device=dev), torch.tensor([0, 1, 3], device=dev)
    with pytest.raises(ValueError, match=r"x must be 2-D \[N, D\].*reshape"):
        gather_rows(x[None], token, backend=backend)
    with pytest.raises(ValueError, match=r"o must be 2-D"):
        combine_rows(o[:, None], w, token, 4, backend=backend)
    with pytest.raises(ValueError, match=r"token must be int64.*\.long\(\)"):
        gather_rows(x, token.int(), backend=backend)
    with pytest.raises(ValueError, match=r"token must be 1-D"):
        combine_rows(o, w, token[None], 4, backend=backend)
    with pytest.raises(ValueError, match=r"index 4 is out of range.*\[0, 4\)"):
        gather_rows(x, torch.tensor([0, 4], device=dev), backend=backend)
    with pytest.raises(ValueError, match=r"index -1 is out of range"):
        combine_rows(o, w, torch.tensor([0, -1, 1], device=dev), 4, backend=backend)
    with pytest.raises(ValueError, match=r"index 3 is out of range.*3 tokens"):
        combine_rows(o, w, token, 3, backend=backend)
    with pytest.raises(ValueError, match=r"one entry per packed row"):
        combine_rows(o, w[:2], token, 4, backend=backend)
    with pytest.raises(ValueError, match=r"weight must be a 1-D"):
        combine_rows(o, w[:, None], token, 4, backend=backend)
    with pytest.raises(ValueError, match=r"needs n_tokens"):
        combine_rows(o, w, token, backend=backend)
    with pytest.raises(ValueError, match=r"unknown dispatch backend 'cuda'"):
        gather_rows(x, token, backend="cuda")


def test_device_triton_cannot_run_on(monkeypatch):
    """CPU tensors without the interpreter: a ValueError saying why and what to use instead,
    before any kernel launches (triton_unavailable reads TRITON_INTERPRET on each call)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, token = torch.randn(4, D), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"cannot run a Triton kernel on cpu.*backend 'reference'"):
        gather_rows(x, token, backend="triton")
    with pytest.raises(ValueError, match=r"cannot run a Triton kernel on cpu"):
        combine_rows(torch.randn(2, D), torch.rand(2), token, 4, backend="triton")
    assert torch.equal(gather_rows(x, token, backend="reference"), x[token])  # the reference still runs


def test_exports():
    assert set(dispatch.__all__) == {"Dispatch", "RowMap", "plan_dispatch", "row_map", "gather_rows",
                                     "combine_rows", "gate_launches", "kernel_launches"}
    assert "out[t] = sum_{r : token[r] = t} weight[r] o[r]" in dispatch.__doc__
