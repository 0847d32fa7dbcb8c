"""archspec/ops/linear_attention: the chunked form against the token loop, packed sequences,
gradients, the decoding step, FLOPs against FlopCounterMode, argument errors.

Tolerance for fp32 comparisons: max |a - b| <= 1e-5 * max(1, max |reference|). Both forms do
fp32 arithmetic on O(1) values (unit-norm q / k, beta < 1, decays <= 1) in different orders, so
they differ by rounding: a few ulps (6e-8) times the depth of the sums; measured 6e-8 .. 4e-7
for outputs and states, packed or not, at mild and strong decay (against a float64 run, both
forms are within 6e-7 of it). 1e-5 leaves >= 25x headroom, while any real mistake (one token's
decay or write missed, a chunk boundary off by one) moves outputs by >= 1e-3. Gradients (through
the triangular solve and the chunk chain in reverse) measured <= 3e-7: the same 1e-5. float64
gradcheck uses torch's default tolerances.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archspec.flopcount import flopcounter_mapping, fvcore_analysis
from archspec.ops.linear_attention import (RULES, chunk_flops, chunk_rule, recurrent_flops,
                                           recurrent_rule, recurrent_step, state_elements)
from archspec.ops.linear_attention import chunk as chunk_module

RTOL = 1e-5
GRAD_RTOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny shapes: a second intra-op thread only adds synchronisation (10x slower when the
    # machine is busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(rule, b, t, h, k_dim, v_dim, *, dtype=torch.float32, decay=1.0, seed=0):
    """Unit-norm q and k (as MoM feeds them), beta in (0, 1), g in [-decay, 0)."""
    gen = torch.Generator().manual_seed(seed)
    rand = (lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64))
    q = torch.nn.functional.normalize(rand(b, t, h, k_dim), dim=-1)
    k = torch.nn.functional.normalize(rand(b, t, h, k_dim), dim=-1)
    v = rand(b, t, h, v_dim)
    g = beta = None
    if rule == "gla":
        g = -decay * torch.rand(b, t, h, k_dim, generator=gen, dtype=torch.float64)
    if rule == "gated_delta":
        g = -decay * torch.rand(b, t, h, generator=gen, dtype=torch.float64)
    if rule in ("delta", "gated_delta"):
        beta = torch.rand(b, t, h, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    cast = (lambda x: None if x is None else x.to(dtype))
    return dict(q=cast(q), k=cast(k), v=cast(v), g=cast(g), beta=cast(beta))


def offsets(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.long)


def assert_close(actual, expected, rtol=RTOL):
    assert actual.shape == expected.shape and torch.isfinite(actual).all()
    if actual.numel() == 0:
        return
    bound = rtol * max(1.0, expected.abs().max().item())
    err = (actual - expected).abs().max().item()
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"


# --- chunked == recurrent --------------------------------------------------------------------

CASES = [  # b, t, h, k, v, chunk, with initial state
    (2, 100, 2, 16, 8, 32, True),   # T not a multiple of C
    (1, 50, 1, 8, 8, 16, False),    # one head, no initial state
    (1, 150, 2, 8, 4, 64, True),    # C = 64: gla has 4 sub-chunks per chunk
    (3, 7, 1, 4, 4, 64, True),      # one partial chunk
]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", CASES)
def test_chunk_matches_recurrent(rule, case):
    b, t, h, k_dim, v_dim, c, with_state = case
    x = make_inputs(rule, b, t, h, k_dim, v_dim)
    s0 = torch.randn(b, h, k_dim, v_dim) if with_state else None
    o_ref, s_ref = recurrent_rule(rule, **x, initial_state=s0, output_final_state=True)
    o, s = chunk_rule(rule, **x, initial_state=s0, output_final_state=True, chunk_size=c)
    assert o.shape == (b, t, h, v_dim) and o.dtype == torch.float32
    assert s.shape == (b, h, k_dim, v_dim) and s.dtype == torch.float32
    assert_close(o, o_ref)
    assert_close(s, s_ref)


@pytest.mark.parametrize("rule", ["gated_delta", "gla"])
@pytest.mark.parametrize("decay", ["uniform20", "constant20", "huge"])
def test_strong_decay_is_finite_and_exact(rule, decay):
    """g = -20 per step (e^-20 per token; cumulative -1280 per chunk of 64), a mix of 0 .. -20,
    and -1e4: no inf or NaN in outputs, states or gradients, and the same tolerance as above:
    exponents are sums of the g's they span, never differences of large cumulative sums."""
    x = make_inputs(rule, 1, 130, 2, 8, 4, decay=20.0)
    if decay != "uniform20":
        x["g"] = torch.full_like(x["g"], -20.0 if decay == "constant20" else -1e4)
    x["g"].requires_grad_(True)
    s0 = torch.randn(1, 2, 8, 4)
    o_ref, s_ref = recurrent_rule(rule, **x, initial_state=s0, output_final_state=True)
    o, s = chunk_rule(rule, **x, initial_state=s0, output_final_state=True, chunk_size=64)
    assert_close(o, o_ref)
    assert_close(s, s_ref)
    (grad,) = torch.autograd.grad((o.sum() + s.sum()), x["g"])
    assert torch.isfinite(grad).all()


def test_chunk_matches_float64_truth():
    """The chunked fp32 result is as close to a float64 run as the fp32 recurrence is."""
    for rule in RULES:
        x = make_inputs(rule, 1, 200, 2, 32, 16, decay=20.0, dtype=torch.float64)
        o64, _ = recurrent_rule(rule, **x)
        x32 = {name: None if val is None else val.float() for name, val in x.items()}
        err_chunk = (chunk_rule(rule, **x32)[0] - o64).abs().max().item()
        err_loop = (recurrent_rule(rule, **x32)[0] - o64).abs().max().item()
        assert err_chunk <= max(4 * err_loop, 1e-6), (rule, err_chunk, err_loop)


@pytest.mark.parametrize("rule", RULES)
def test_dtypes(rule):
    """bf16 in: o in bf16, state fp32, computed in fp32; float64 stays float64."""
    x = make_inputs(rule, 1, 20, 2, 8, 4, dtype=torch.bfloat16)
    o, s = chunk_rule(rule, **x, output_final_state=True, chunk_size=8)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    up = {name: None if val is None else val.float() for name, val in x.items()}
    o32, s32 = chunk_rule(rule, **up, output_final_state=True, chunk_size=8)
    assert torch.equal(o, o32.to(torch.bfloat16)) and torch.equal(s, s32)
    x = make_inputs(rule, 1, 20, 2, 8, 4, dtype=torch.float64)
    for fn in (chunk_rule, recurrent_rule):
        o, s = fn(rule, **x, output_final_state=True)
        assert o.dtype == s.dtype == torch.float64


@pytest.mark.parametrize("rule", RULES)
def test_compiles_fullgraph(rule):
    x = make_inputs(rule, 2, 40, 2, 8, 4)

    def fn(q, k, v, g, beta):
        return chunk_rule(rule, q, k, v, g=g, beta=beta, output_final_state=True, chunk_size=16)

    o, s = torch.compile(fn, fullgraph=True, backend="eager")(**x)
    o_ref, s_ref = fn(**x)
    assert torch.equal(o, o_ref) and torch.equal(s, s_ref)


# --- packed sequences ------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("lengths", [[0, 1, 5, 64, 130], [64, 0, 130, 1, 5], [0, 0]])
def test_varlen_equals_separate_sequences(rule, lengths):
    """Packed == each sequence alone (its own state), for outputs and final states; sequences
    of length 0 and 1; the input order need not be sorted."""
    h, k_dim, v_dim = 2, 8, 4
    x = make_inputs(rule, 1, sum(lengths), h, k_dim, v_dim)
    s0 = torch.randn(len(lengths), h, k_dim, v_dim)
    cu = offsets(lengths)
    o, s = chunk_rule(rule, **x, initial_state=s0, output_final_state=True, cu_seqlens=cu,
                      chunk_size=16)
    o_loop, s_loop = recurrent_rule(rule, **x, initial_state=s0, output_final_state=True,
                                    cu_seqlens=cu)
    assert o.shape == o_loop.shape and s.shape == s0.shape
    assert_close(o, o_loop)
    assert_close(s, s_loop)
    for i, (bos, eos) in enumerate(zip(cu.tolist(), cu.tolist()[1:])):
        part = {name: None if val is None else val[:, bos:eos] for name, val in x.items()}
        o_i, s_i = chunk_rule(rule, **part, initial_state=s0[i:i + 1], output_final_state=True,
                              chunk_size=16)
        assert_close(o[:, bos:eos], o_i)
        assert_close(s[i:i + 1], s_i)


@pytest.mark.parametrize("rule", RULES)
def test_varlen_equals_batch(rule):
    """B equal-length sequences packed == the same as a batch."""
    b, t, h = 3, 37, 2
    x = make_inputs(rule, b, t, h, 8, 4)
    packed = {name: None if val is None else val.reshape(1, b * t, *val.shape[2:])
              for name, val in x.items()}
    o_b, s_b = chunk_rule(rule, **x, output_final_state=True, chunk_size=16)
    o_p, s_p = chunk_rule(rule, **packed, output_final_state=True, chunk_size=16,
                          cu_seqlens=offsets([t] * b))
    assert_close(o_p.reshape(o_b.shape), o_b)
    assert_close(s_p, s_b)


def test_empty_inputs():
    for rule in RULES:
        x = make_inputs(rule, 2, 0, 1, 4, 4)
        s0 = torch.randn(2, 1, 4, 4)
        for fn in (chunk_rule, recurrent_rule):
            o, s = fn(rule, **x, initial_state=s0, output_final_state=True)
            assert o.shape == (2, 0, 1, 4) and torch.equal(s, s0)


# --- gradients -------------------------------------------------------------------------------

def _grad_inputs(rule, x, s0):
    return {name: val.requires_grad_(True) for name, val in {**x, "initial_state": s0}.items()
            if val is not None}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_float64(rule, packed, monkeypatch):
    """Every input gets exact gradients. Sub-chunks of 4 so gla's below-diagonal blocks (and
    the blocks between them) are exercised at chunk size 16; packing covers an empty sequence
    and padded chunks."""
    monkeypatch.setattr(chunk_module, "SUB_CHUNK", 4)
    lengths = [0, 3, 20] if packed else [37]
    x = make_inputs(rule, 1, sum(lengths), 1, 3, 2, dtype=torch.float64)
    s0 = torch.randn(len(lengths), 1, 3, 2, dtype=torch.float64)
    inputs = _grad_inputs(rule, x, s0)
    names = list(inputs)
    cu = offsets(lengths) if packed else None

    def fn(*values):
        kw = dict(zip(names, values))
        return chunk_rule(rule, kw.pop("q"), kw.pop("k"), kw.pop("v"), **kw, cu_seqlens=cu,
                          output_final_state=True, chunk_size=16)

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()))


@pytest.mark.parametrize("rule", RULES)
def test_chunk_grads_match_recurrent_grads(rule):
    x = make_inputs(rule, 2, 45, 2, 8, 4, decay=2.0)
    s0 = torch.randn(2, 2, 8, 4)
    w_o, w_s = torch.randn(2, 45, 2, 4), torch.randn(2, 2, 8, 4)
    grads = []
    for fn, kw in ((recurrent_rule, {}), (chunk_rule, {"chunk_size": 16})):
        inputs = _grad_inputs(rule, {k: None if v is None else v.clone() for k, v in x.items()},
                              s0.clone())
        o, s = fn(rule, **inputs, output_final_state=True, **kw)
        grads.append(dict(zip(inputs, torch.autograd.grad((o * w_o).sum() + (s * w_s).sum(),
                                                          list(inputs.values())))))
    ref, got = grads
    for name in ref:
        assert_close(got[name], ref[name], GRAD_RTOL)


# --- decoding step ---------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
def test_recurrent_step_sequence_equals_recurrent_rule(rule):
    x = make_inputs(rule, 2, 12, 2, 8, 4)
    s0 = torch.randn(2, 2, 8, 4)
    o_ref, s_ref = recurrent_rule(rule, **x, initial_state=s0, output_final_state=True, scale=0.3)
    state, outs = s0, []
    for t in range(12):
        at = {name: None if val is None else val[:, t] for name, val in x.items()}
        o_t, state = recurrent_step(rule, at["q"], at["k"], at["v"], state, g_t=at["g"],
                                    beta_t=at["beta"], scale=0.3)
        outs.append(o_t)
    assert_close(torch.stack(outs, 1), o_ref, 1e-6)
    assert_close(state, s_ref, 1e-6)
    # continuing a chunked prefill with steps == one chunked pass over the whole sequence
    head = {name: None if val is None else val[:, :9] for name, val in x.items()}
    _, state = chunk_rule(rule, **head, initial_state=s0, output_final_state=True, chunk_size=4)
    for t in range(9, 12):
        at = {name: None if val is None else val[:, t] for name, val in x.items()}
        o_t, state = recurrent_step(rule, at["q"], at["k"], at["v"], state, g_t=at["g"],
                                    beta_t=at["beta"], scale=0.3)
        assert_close(o_t, o_ref[:, t])
    assert_close(state, s_ref)


def test_recurrent_step_dtypes_and_zero_state():
    x = make_inputs("gated_delta", 3, 1, 2, 8, 4, dtype=torch.bfloat16)
    at = {name: val[:, 0] for name, val in x.items()}
    o, s = recurrent_step("gated_delta", at["q"], at["k"], at["v"], None, g_t=at["g"],
                          beta_t=at["beta"])
    assert o.dtype == torch.bfloat16 and o.shape == (3, 2, 4)
    assert s.dtype == torch.float32 and s.shape == (3, 2, 8, 4)


# --- FLOPs -----------------------------------------------------------------------------------

def _counted(fn, *args, **kwargs) -> int:
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flopcounter_mapping()) as mode:
        fn(*args, **kwargs)
    return mode.get_total_flops()


FLOP_CASES = [  # lengths, batch (fixed-length path) or None (packed), chunk size
    ([100], 1, 32), ([40, 40], 2, 16), ([0, 1, 5, 64, 130], None, 16), ([7, 33], None, 64),
    ([200], None, 64),
]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("lengths,batch,c", FLOP_CASES)
def test_chunk_flops_equal_flopcountermode_exactly(rule, lengths, batch, c):
    h, k_dim, v_dim = 2, 8, 4
    if batch is None:
        x, cu = make_inputs(rule, 1, sum(lengths), h, k_dim, v_dim), offsets(lengths)
    else:
        x, cu = make_inputs(rule, batch, lengths[0], h, k_dim, v_dim), None
    measured = _counted(chunk_rule, rule, **x, cu_seqlens=cu, chunk_size=c, output_final_state=True)
    expected = chunk_flops(rule, lengths, h, k_dim, v_dim, c)
    assert measured == expected.matmul > 0
    assert expected.attention == 0 and expected.other > 0
    loop = recurrent_flops(rule, lengths, h, k_dim, v_dim)
    assert _counted(recurrent_rule, rule, **x, cu_seqlens=cu) == loop.matmul


@pytest.mark.parametrize("rule", RULES)
def test_fvcore_agrees_with_chunk_flops(rule):
    """The second counter (fvcore, TorchScript trace) with the triangular-solve handle; T = 40 at
    C = 16 gives gla 2 sub-chunks per chunk (its broadcast block matmul)."""
    x = make_inputs(rule, 2, 40, 2, 8, 4)

    class Chunked(torch.nn.Module):
        def forward(self, q):
            o, s = chunk_rule(rule, q, x["k"], x["v"], g=x["g"], beta=x["beta"], chunk_size=16,
                              output_final_state=True)
            return torch.cat([o.flatten(), s.flatten()])  # both, or tracing drops the last update

    result = fvcore_analysis(Chunked(), x["q"])
    assert not result.skipped_matmul_ops
    assert result.flops == chunk_flops(rule, [40, 40], 2, 8, 4, 16).matmul


def test_solve_triangular_formula_equals_substitution():
    """The formula flopcount registers for aten.linalg_solve_triangular equals what
    FlopCounterMode counts, on its own, for forward substitution written with matmuls."""
    n, m = 7, 5
    a = torch.randn(3, n, n).tril(-1)
    b = torch.randn(3, n, m)

    def substitution(a, b):
        rows = [b[:, :1]]
        for i in range(1, n):
            rows.append(b[:, i:i + 1] - a[:, i:i + 1, :i] @ torch.cat(rows, 1))
        return torch.cat(rows, 1)

    solved = torch.linalg.solve_triangular(a, b, upper=False, unitriangular=True)
    assert torch.allclose(solved, substitution(a, b), atol=1e-5)
    fused = _counted(torch.linalg.solve_triangular, a, b, upper=False, unitriangular=True)
    assert fused == _counted(substitution, a, b) == 3 * m * n * (n - 1)
    right = _counted(torch.linalg.solve_triangular, a, b.transpose(-1, -2), upper=False, left=False)
    assert right == fused
    with FlopCounterMode(display=False) as mode:  # why the mapping exists
        torch.linalg.solve_triangular(a, b, upper=False)
    assert mode.get_total_flops() == 0


def test_state_elements():
    assert all(state_elements(rule, 4, 64, 128) == 4 * 64 * 128 for rule in RULES)


# --- argument errors -------------------------------------------------------------------------

def test_bad_arguments_raise_clear_errors():
    x = make_inputs("gated_delta", 1, 10, 2, 8, 4)
    q, k, v, g, beta = x["q"], x["k"], x["v"], x["g"], x["beta"]
    g_channel = g[..., None].expand(1, 10, 2, 8)
    cases = [
        (dict(rule="softmax"), "unknown linear-attention rule"),
        (dict(rule="gated_delta", beta=beta), "needs the log-space decay g"),
        (dict(rule="gated_delta", g=g), "needs beta"),
        (dict(rule="delta", g=g, beta=beta), "has no decay"),
        (dict(rule="linear", beta=beta), "takes no beta"),
        (dict(rule="gla", g=g_channel, beta=beta), "takes no beta"),
        (dict(rule="gla", g=g), r"g must have shape \[B, T, H, K\]"),
        (dict(rule="gated_delta", g=g_channel, beta=beta), r"g must have shape \[B, T, H\]"),
        (dict(rule="linear", k=k[..., :4]), "k must have shape"),
        (dict(rule="linear", v=v[:, :5]), "v must have shape"),
        (dict(rule="linear", initial_state=torch.zeros(2, 2, 8, 4)), "initial_state must have shape"),
        (dict(rule="linear", cu_seqlens=torch.tensor([0, 4, 10]).float()), "cu_seqlens must be"),
        (dict(rule="linear", cu_seqlens=torch.tensor([0, 4, 9])), "from 0 to T = 10"),
        (dict(rule="linear", cu_seqlens=torch.tensor([0, 6, 4, 10])), "non-decreasing"),
        (dict(rule="linear", q=q.long(), k=k.long()), "floating-point"),
    ]
    for fn in (chunk_rule, recurrent_rule):
        for overrides, message in cases:
            kw = {"q": q, "k": k, "v": v, **overrides}
            with pytest.raises(ValueError, match=message):
                fn(kw.pop("rule"), kw.pop("q"), kw.pop("k"), kw.pop("v"), **kw)
    with pytest.raises(ValueError, match="need batch 1"):
        both = {name: torch.cat([val, val]) for name, val in x.items()}
        chunk_rule("gated_delta", **both, cu_seqlens=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_rule("linear", q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="g_t must have shape"):
        recurrent_step("gla", q[:, 0], k[:, 0], v[:, 0], None, g_t=g[:, 0])
    with pytest.raises(ValueError, match="recurrent_step needs"):
        recurrent_step("linear", q, k, v, None)
    with pytest.raises(ValueError, match="unknown linear-attention rule"):
        chunk_flops("softmax", [10], 1, 8, 8, 16)
