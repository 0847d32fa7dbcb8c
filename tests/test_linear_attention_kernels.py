"""The Triton chunk kernels of the linear-attention rules (archspec/ops/linear_attention/
triton_chunk.py) against the reference chunk form (chunk.py, itself tested against the token
loop): forward, every gradient, final states, fp32 and bf16, packed sequences against a
per-sequence loop, ragged shapes; the custom ops under torch.compile, on the meta device and in
both FLOP counters. Without a GPU the kernels run in triton's interpreter (tests/conftest.py).

Error measure: relative RMS error ||a - b|| / ||b|| over the whole tensor (as fla's tests).
Tolerances:
  fp32: 2e-5. Both sides compute in fp32; they differ in summation order over sums of up to
        C K ~ 1e3 products and in how (I + A)^-1 is formed (squarings vs substitution): observed
        <= 2e-6, fp32 eps is 1.2e-7.
  bf16: 1e-2 on outputs and gradients, which are rounded to bf16 (eps 2^-8 = 3.9e-3, so RMS
        rounding error ~1.1e-3 per element) and, on a GPU, come from tf32 products (2^-11).
"""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from archspec.ops.linear_attention import KERNEL_RULES, chunk_flops, chunk_rule, triton_chunk_rule

TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(rule, b, t, h, k, v, dtype, device, seed=0, state=False, n_states=None):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    inputs = {
        "q": rnd(b, t, h, k),
        "k": F.normalize(rnd(b, t, h, k), dim=-1),  # the delta rules take unit keys
        "v": rnd(b, t, h, v),
        "g": (F.logsigmoid(rnd(b, t, h)) if rule == "gated_delta" else
              F.logsigmoid(rnd(b, t, h, k)) if rule == "gla" else None),
        "beta": torch.rand(b, t, h, generator=gen) if rule in ("delta", "gated_delta") else None,
        "initial_state": rnd(n_states or b, h, k, v) if state else None,
    }
    out = {}
    for name, x in inputs.items():
        if x is not None:
            # g stays fp32 (a log decay: its cumsum must not round); the state is fp32
            keep = name in ("g", "initial_state")
            x = x.to(device=device, dtype=torch.float32 if keep else dtype).requires_grad_()
        out[name] = x
    return out


def run(fn, rule, inputs, chunk_size=16, cu_seqlens=None, seed=1):
    """Forward with the final state, then backward from fixed random cotangents; returns the
    outputs and the gradient of every input."""
    o, ht = fn(rule, inputs["q"], inputs["k"], inputs["v"], g=inputs["g"], beta=inputs["beta"],
               initial_state=inputs["initial_state"], output_final_state=True,
               cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen).to(o)
    dht = torch.randn(ht.shape, generator=gen).to(ht)
    names = [n for n, x in inputs.items() if x is not None]
    grads = torch.autograd.grad((o.float() * do.float()).sum() + (ht * dht).sum(),
                                [inputs[n] for n in names])
    return {"o": o, "ht": ht, **{f"d{n}": gr for n, gr in zip(names, grads)}}


def assert_close(got: dict, want: dict, tol: float):
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        if not want[name].any():
            # an exactly-zero gradient (gla's dg with one token: g decays nothing yet) that
            # the kernel forms as q dq - k dk of O(1) terms: fp32 cancellation leaves ~1e-7
            assert got[name].abs().max() <= 1e-5, name
            continue
        err = rel_err(got[name], want[name])
        assert err <= tol, f"{name}: relative RMS error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule", KERNEL_RULES)
def test_kernel_matches_reference(rule, dtype, kernel_device):
    # T = 37: two full chunks of 16 and a partial one; an initial state and a final state
    inputs = make_inputs(rule, 2, 37, 2, 16, 32, dtype, kernel_device, state=True)
    got = run(triton_chunk_rule, rule, inputs)
    want = run(chunk_rule, rule, inputs)
    assert_close(got, want, TOL[dtype])


@pytest.mark.parametrize("rule", KERNEL_RULES)
def test_packed_sequences_match_a_loop_over_them(rule, kernel_device):
    # lengths 1, 0 (an empty sequence: no chunk at all), 20 and 33: none a multiple of 16
    lengths = [1, 0, 20, 33]
    cu = torch.tensor([0, 1, 1, 21, 54], device=kernel_device)
    packed = make_inputs(rule, 1, 54, 2, 16, 16, torch.float32, kernel_device, state=True, n_states=4)
    got = run(triton_chunk_rule, rule, packed, cu_seqlens=cu)
    # each sequence alone (fixed-length path, batch 1), same inputs sliced
    ends = cu.tolist()
    for i, (a, e) in enumerate(zip(ends, ends[1:])):
        alone = {n: (None if x is None else x.detach()[i:i + 1] if n == "initial_state" else x.detach()[:, a:e])
                 for n, x in packed.items()}
        o, ht = triton_chunk_rule(rule, alone["q"], alone["k"], alone["v"], g=alone["g"],
                                  beta=alone["beta"], initial_state=alone["initial_state"],
                                  output_final_state=True, chunk_size=16)
        assert o.shape[1] == lengths[i]
        if e > a:
            assert rel_err(got["o"][:, a:e], o) <= TOL[torch.float32]
        assert rel_err(got["ht"][i:i + 1], ht) <= TOL[torch.float32]
    # the empty sequence passes its initial state through unchanged, and gets its gradient back
    assert torch.equal(got["ht"][1], packed["initial_state"].detach()[1])
    # and the packed kernel against the packed reference, gradients included
    assert_close(got, run(chunk_rule, rule, packed, cu_seqlens=cu), TOL[torch.float32])


@pytest.mark.parametrize("rule", KERNEL_RULES)
def test_ragged_shapes(rule, kernel_device):
    # one head, K and V not powers of two, chunk 32, a sequence of length 1
    for (b, t, h, k, v, c) in [(1, 1, 1, 12, 20, 32), (3, 5, 1, 16, 48, 32)]:
        inputs = make_inputs(rule, b, t, h, k, v, torch.float32, kernel_device, seed=t)
        assert_close(run(triton_chunk_rule, rule, inputs, chunk_size=c),
                     run(chunk_rule, rule, inputs, chunk_size=c), TOL[torch.float32])


@pytest.mark.parametrize("rule", ["gated_delta", "gla"])
def test_value_blocks_and_strong_decay(rule, kernel_device):
    # V = 80 spans two value blocks of 64 (the state pass and the backward loop over them).
    # Decays of 8 logsigmoid(N(0, 1)), down to about -25 per token and -400 over a chunk: a
    # factorisation through exp(-G) would overflow (e^88 is fp32's limit); every exponent the
    # kernels take is a decay over a span, <= 0
    inputs = make_inputs(rule, 1, 40, 2, 16, 80, torch.float32, kernel_device, state=True)
    with torch.no_grad():
        inputs["g"].mul_(8.0)
    assert inputs["g"].detach()[0, :32].sum(0).min() < -88
    assert_close(run(triton_chunk_rule, rule, inputs, chunk_size=32),
                 run(chunk_rule, rule, inputs, chunk_size=32), TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule", KERNEL_RULES)
def test_key_and_value_blocks(rule, dtype, kernel_device):
    # K = 200: four key blocks of 64 (the last ragged) in the forward, two state tiles of 128
    # rows in the state passes, seven blocks of 32 in the backward's per-chunk kernels; V = 72
    # spans two value blocks. A partial last chunk, an initial and a final state.
    inputs = make_inputs(rule, 1, 37, 1, 200, 72, dtype, kernel_device, state=True)
    assert_close(run(triton_chunk_rule, rule, inputs), run(chunk_rule, rule, inputs), TOL[dtype])


def test_clear_errors(kernel_device):
    inputs = make_inputs("linear", 1, 8, 1, 16, 16, torch.float32, kernel_device)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    with pytest.raises(ValueError, match="unknown linear-attention rule"):
        triton_chunk_rule("gsa", q, k, v)
    with pytest.raises(ValueError, match="chunk_size in .*got 8"):
        triton_chunk_rule("linear", q, k, v, chunk_size=8)
    with pytest.raises(ValueError, match="float64"):
        triton_chunk_rule("linear", q.double(), k.double(), v.double())
    wide = torch.zeros(1, 4, 1, 272)
    with pytest.raises(ValueError, match="head sizes up to 256, got K=272"):
        triton_chunk_rule("linear", wide, wide, wide, chunk_size=16)
    with pytest.raises(ValueError, match="beta"):  # the reference's own checks come first
        triton_chunk_rule("delta", q, k, v)


def test_forcing_the_kernel_without_a_gpu_or_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(1, 4, 1, 16)
    with pytest.raises(RuntimeError, match="cannot run a Triton kernel on cpu.*TRITON_INTERPRET=1"):
        triton_chunk_rule("linear", x, x, x, chunk_size=16)


def test_meta_device_and_compile(kernel_device):
    # the fake implementation gives shapes and dtypes without running anything
    q = torch.empty(2, 40, 3, 16, device="meta", dtype=torch.bfloat16)
    v = torch.empty(2, 40, 3, 24, device="meta", dtype=torch.bfloat16)
    beta = torch.empty(2, 40, 3, device="meta", dtype=torch.bfloat16)
    g = torch.empty(2, 40, 3, device="meta")
    o, ht = triton_chunk_rule("gated_delta", q, q, v, g=g, beta=beta, output_final_state=True,
                              chunk_size=16)
    assert (o.shape, o.dtype, o.device.type) == ((2, 40, 3, 24), torch.bfloat16, "meta")
    assert (ht.shape, ht.dtype) == ((2, 3, 16, 24), torch.float32)
    # torch.compile traces the fixed-length path as one graph (no host reads) around the op
    inputs = make_inputs("gated_delta", 1, 20, 1, 16, 16, torch.float32, kernel_device)
    args = [inputs[n].detach() for n in ("q", "k", "v", "g", "beta")]

    def f(q, k, v, g, beta):
        return triton_chunk_rule("gated_delta", q, k, v, g=g, beta=beta, chunk_size=16)[0].sum(-1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(*args), f(*args))


def test_flop_counters_see_the_kernel(kernel_device):
    from torch.utils.flop_counter import FlopCounterMode
    from archspec.flopcount import fvcore_analysis
    h, k, v, c = 2, 16, 32, 16
    cu = torch.tensor([0, 5, 5, 40], device=kernel_device)
    for rule in KERNEL_RULES:
        inputs = make_inputs(rule, 1, 40, h, k, v, torch.float32, kernel_device)
        want = chunk_flops(rule, [5, 0, 35], h, k, v, c).matmul
        with FlopCounterMode(display=False) as mode:
            o, _ = triton_chunk_rule(rule, inputs["q"], inputs["k"], inputs["v"], g=inputs["g"],
                                     beta=inputs["beta"], cu_seqlens=cu, chunk_size=c)
        assert mode.get_total_flops() == want
        with FlopCounterMode(display=False) as mode:
            o.sum().backward()
        assert mode.get_total_flops() == 2 * want  # the backward op's registered estimate

    class Layer(torch.nn.Module):
        def forward(self, q):
            return triton_chunk_rule("linear", q, q, q, chunk_size=16)[0]

    q = torch.randn(2, 20, 2, 16, device=kernel_device)
    result = fvcore_analysis(Layer(), q)
    # (elementwise ops it skips are `other` work in our convention, not compared)
    assert not result.skipped_matmul_ops and not [op for op in result.unsupported if "la_chunk" in op]
    assert result.by_operator == {"la_chunk_fwd": chunk_flops("linear", [20, 20], 2, 16, 16, 16).matmul // 2}
    assert result.flops == chunk_flops("linear", [20, 20], 2, 16, 16, 16).matmul
