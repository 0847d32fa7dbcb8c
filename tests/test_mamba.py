"""Mamba (selective scan) and Mamba2 (SSD): what tests/test_contract.py does not already check.

Agreement is measured as a normwise relative error, max|fast - reference| / max|reference| over
the whole tensor. Elementwise relative error is meaningless here: outputs and gradients cross
zero, and both forms' rounding errors are absolute, of the order of eps times the magnitude of
the terms summed into each entry, which the tensor's largest entry bounds. float32 rounding
(eps 6e-8) accumulated over the tens of steps and dozens of products per entry gives ~1e-7 to
1e-6; 1e-5 leaves an order of magnitude of headroom while still catching a wrong term (a
dropped decay or a misplaced chunk boundary shows up as O(1e-2) or more).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from archspec.accounting import account
from archspec.codegen.build import build
from archspec.components import get
from archspec.ops.ssm import (linear_scan, selective_scan, selective_scan_flops, selective_scan_recurrent,
                              ssd_chunked, ssd_flops, ssd_recurrent)
from archspec.report import report
from archspec.spec import load, loads

from helpers import assert_located, saved_tensors

SPECS = Path(__file__).resolve().parent.parent / "specs"
TOL = 1e-5


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors; also keeps timings stable on a shared 2-core box
    yield
    torch.set_num_threads(before)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Normwise relative error (see the module docstring)."""
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def log_uniform(shape, lo, hi, dtype=torch.float32):
    return torch.exp(torch.rand(shape, dtype=dtype) * (math.log(hi) - math.log(lo)) + math.log(lo))


# dt ranges: the reference's initial range, and strong decay (exp(dt A) down to e^-160 per step)
REGIMES = {"init": (1e-3, 1e-1), "strong": (0.05, 10.0)}


def mamba1_inputs(b, t, e, n, regime="init", dtype=torch.float32):
    u = torch.randn(b, t, e, dtype=dtype)
    dt = log_uniform((b, t, e), *REGIMES[regime], dtype=dtype)
    a = -torch.arange(1, n + 1, dtype=dtype).repeat(e, 1) * (1 + torch.rand(e, 1, dtype=dtype))
    return (u, dt, a, torch.randn(b, t, n, dtype=dtype), torch.randn(b, t, n, dtype=dtype),
            torch.randn(e, dtype=dtype), torch.randn(b, e, n, dtype=dtype))


def mamba2_inputs(b, t, h, p, g, n, regime="init", dtype=torch.float32):
    x = torch.randn(b, t, h, p, dtype=dtype)
    dt = log_uniform((b, t, h), *REGIMES[regime], dtype=dtype)
    a = -(1 + 15 * torch.rand(h, dtype=dtype))  # the reference's A_init_range [1, 16]
    return (x, dt, a, torch.randn(b, t, g, n, dtype=dtype), torch.randn(b, t, g, n, dtype=dtype),
            torch.randn(h, dtype=dtype), torch.randn(b, h, p, n, dtype=dtype))


# --- parameter counts ------------------------------------------------------------------------

def test_mamba_130m_has_the_published_parameter_count():
    spec = load(SPECS / "mamba-130m.yaml")
    assert report(spec)["totals"]["params"] == 129_135_360
    model = build(spec, meta=True)
    assert sum(p.numel() for p in model.parameters()) == 129_135_360
    # embedding (tied) + 24 x (mixer + its block norm) + the final norm
    assert 50280 * 768 + 24 * (3_770_880 + 768) + 768 == 129_135_360


def _mixer_params(type_name: str, config: str, d: int) -> int:
    spec = loads(f"model: {{vocab_size: 97, d_model: {d}, max_seq_len: 64}}\n"
                 f"components:\n  M: {{type: {type_name}{config}}}\nlayout: M\n")
    return next(p for p in account(spec).parts if p.type == type_name).cost.params


@pytest.mark.parametrize("d, config", [(768, ""), (64, ", d_state: 8, expand: 3, d_conv: 3"),
                                       (100, ", dt_rank: 5")])
def test_mamba_parameter_formula(d, config):
    cfg = {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": math.ceil(d / 16)}
    cfg.update({k.strip(): int(v) for k, v in (kv.split(":") for kv in config.split(",")[1:])})
    e, n, r, k = cfg["expand"] * d, cfg["d_state"], cfg["dt_rank"], cfg["d_conv"]
    assert _mixer_params("mamba", config, d) == 3 * d * e + e * (k + 2 * r + 3 * n + 3)
    if d == 768:
        assert _mixer_params("mamba", config, d) == 3_770_880
    assert _mixer_params("mamba", config + ", inner_norms: true", d) == (
        3 * d * e + e * (k + 2 * r + 3 * n + 3) + r + 2 * n)


def test_jamba_parameter_count_by_hand():
    """specs/jamba-v0.1.yaml against a sum written out from the Jamba-v0.1 config: untied
    embeddings and head (65536 x 4096 each), final norm, two norms per layer; 28 Mamba layers
    (E 8192, N 16, R 256, k 4, with the dt/B/C norms), 4 GQA attention layers (32 heads, 8 KV),
    16 SwiGLU MLPs (14336) and 16 MoEs of 16 such experts with a router."""
    d, e, n, r, k, f, v = 4096, 8192, 16, 256, 4, 14336, 65536
    mamba = 3 * d * e + e * (k + 2 * r + 3 * n + 3) + r + 2 * n
    attention = 2 * d * d + 2 * d * (d // 4)
    mlp = 3 * d * f
    moe = 16 * mlp + 16 * d
    expected = 2 * v * d + d + 32 * 2 * d + 28 * mamba + 4 * attention + 16 * mlp + 16 * moe
    assert expected == 51_570_323_328
    assert account(load(SPECS / "jamba-v0.1.yaml")).total().params == expected


def test_inner_norms_normalise_dt_b_and_c():
    """With inner_norms the output depends on the norms' weights (so forward and step apply
    them), and scaling x_proj's rows leaves it unchanged (dt0, B, C are normalised: eps 1e-12,
    as at the default 1e-6 the mean square of these small-init projections, ~1e-4, moves by
    ~1% when scaled)."""
    mixer = _mixer("mamba", "d_state: 8, inner_norms: true, inner_norm_eps: 1e-12")
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        before = mixer(x)
        mixer.x_proj.weight.mul_(7.0)
        assert rel(mixer(x), before) < 1e-5
        mixer.b_layernorm.weight.mul_(2.0)
        assert rel(mixer(x), before) > 1e-2


@pytest.mark.parametrize("d, config", [(768, ""), (64, ", d_state: 16, head_dim: 16, n_groups: 4")])
def test_mamba2_parameter_formula(d, config):
    cfg = {"d_state": 128, "head_dim": 64, "n_groups": 1}
    cfg.update({k.strip(): int(v) for k, v in (kv.split(":") for kv in config.split(",")[1:])})
    e, n, g = 2 * d, cfg["d_state"], cfg["n_groups"]
    h = e // cfg["head_dim"]
    expected = d * (2 * e + 2 * g * n + h) + (e + 2 * g * n) * 5 + 3 * h + e + e * d
    assert _mixer_params("mamba2", config, d) == expected
    if d == 768:
        assert expected == 3_764_552


# --- fast vs recurrent -----------------------------------------------------------------------

@pytest.mark.parametrize("regime", sorted(REGIMES))
@pytest.mark.parametrize("t, chunk", [(50, 16), (50, 128), (7, 3)])
def test_selective_scan_matches_recurrent(regime, t, chunk):
    u, dt, a, b, c, d, h0 = mamba1_inputs(2, t, 24, 16, regime)
    y, h = selective_scan(u, dt, a, b, c, d, h0, chunk=chunk)
    y_ref, h_ref = selective_scan_recurrent(u, dt, a, b, c, d, h0)
    assert rel(y, y_ref) < TOL and rel(h, h_ref) < TOL
    # and against the float64 recurrence: the fast form's own error
    y64, h64 = selective_scan_recurrent(*(v.double() for v in (u, dt, a, b, c, d, h0)))
    assert rel(y, y64) < TOL and rel(h, h64) < TOL
    assert torch.isfinite(y).all() and torch.isfinite(h).all()


@pytest.mark.parametrize("regime", sorted(REGIMES))
@pytest.mark.parametrize("t, chunk", [(50, 16), (50, 64), (32, 8), (5, 256)])
def test_ssd_chunked_matches_recurrent(regime, t, chunk):
    """T = 50 with chunk 16: three full chunks and a padded one; 32/8: exact multiple; chunk
    64 > T: a single chunk of T; T = 5 < chunk 256."""
    x, dt, a, b, c, d, h0 = mamba2_inputs(2, t, 4, 8, 2, 16, regime)
    y, h = ssd_chunked(x, dt, a, b, c, chunk, d, h0)
    y_ref, h_ref = ssd_recurrent(x, dt, a, b, c, d, h0)
    assert y.shape == y_ref.shape and rel(y, y_ref) < TOL and rel(h, h_ref) < TOL
    y64, h64 = ssd_recurrent(*(v.double() for v in (x, dt, a, b, c, d, h0)))
    assert rel(y, y64) < TOL and rel(h, h64) < TOL


def test_ssd_long_chunk_with_strong_decay_stays_accurate():
    """Chunk 256 with decays of up to e^-1.6 per step: running sums reach ~-400 inside a chunk;
    their differences are formed in float64 (with float32 differences this was 7.6e-6)."""
    x, _, a, b, c, d, h0 = mamba2_inputs(1, 512, 8, 16, 1, 32)
    dt = log_uniform((1, 512, 8), 0.05, 0.1)
    y, h = ssd_chunked(x, dt, a, b, c, 256, d, h0)
    y64, h64 = ssd_recurrent(*(v.double() for v in (x, dt, a, b, c, d, h0)))
    assert rel(y, y64) < 1e-6 and rel(h, h64) < 1e-6


def test_linear_scan_odd_lengths():
    for n in (1, 2, 3, 5, 6, 7, 13, 64, 100):
        a, b = torch.rand(2, n, 3, dtype=torch.float64), torch.randn(2, n, 3, dtype=torch.float64)
        h, expected = torch.zeros(2, 3, dtype=torch.float64), []
        for i in range(n):
            h = a[:, i] * h + b[:, i]
            expected.append(h)
        assert torch.allclose(linear_scan(a, b), torch.stack(expected, 1), rtol=0, atol=1e-12)


def test_gradcheck_selective_scan_float64():
    inputs = [v.requires_grad_() for v in mamba1_inputs(2, 7, 3, 2, dtype=torch.float64)]
    # chunk 3 over 7 tokens: two full chunks and a short one, so the backward's carry between
    # chunks and the final-state gradient are both exercised
    assert torch.autograd.gradcheck(lambda *v: selective_scan(*v, chunk=3), inputs)


def test_gradcheck_ssd_chunked_float64():
    inputs = [v.requires_grad_() for v in mamba2_inputs(2, 7, 4, 2, 2, 3, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda x, dt, a, b, c, d, h0: ssd_chunked(x, dt, a, b, c, 3, d, h0),
                                    inputs)


def _grads(fn, inputs, weights):
    leaves = [v.detach().clone().requires_grad_() for v in inputs]
    y, h = fn(*leaves)
    ((y * weights[0]).sum() + (h * weights[1]).sum()).backward()
    return [v.grad for v in leaves]


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_fast_gradients_match_recurrent_float32(kind):
    if kind == "mamba":
        inputs = mamba1_inputs(2, 40, 16, 8)
        fast = lambda *v: selective_scan(*v, chunk=16)  # noqa: E731
        slow = selective_scan_recurrent
    else:
        inputs = mamba2_inputs(2, 40, 4, 8, 2, 8)
        fast = lambda x, dt, a, b, c, d, h0: ssd_chunked(x, dt, a, b, c, 16, d, h0)  # noqa: E731
        slow = ssd_recurrent
    y, h = slow(*inputs)
    weights = (torch.randn_like(y), torch.randn_like(h))
    names = ["x", "dt", "A", "B", "C", "D", "initial_state"]
    for name, g_fast, g_slow in zip(names, _grads(fast, inputs, weights), _grads(slow, inputs, weights)):
        assert rel(g_fast, g_slow) < TOL, name


def test_selective_scan_saves_no_per_token_state():
    """The scan's autograd function keeps its inputs and one state per chunk, never the
    [B, T, E, N] states (that is what makes T = 2048, d = 768 fit)."""
    b, t, e, n, chunk = 1, 512, 32, 16, 128
    inputs = [v.requires_grad_() for v in mamba1_inputs(b, t, e, n)]
    saved = [x.numel() for _, x in saved_tensors(lambda: selective_scan(*inputs, chunk=chunk))]
    assert max(saved) == t * e  # u or dt; the chunk-entry states are (T / chunk) E N
    assert (t // chunk) * e * n in saved


# --- FLOPs: what the kernels compute -----------------------------------------------------------

class ElementwiseCounter(TorchDispatchMode):
    """Counts elementwise arithmetic as archspec does: one FLOP per output element of a
    multiply, add, subtract or exp, and n - 1 adds per running sum of n elements."""

    ARITH = {"mul", "add", "sub", "exp"}

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__.rstrip("_")
        if name in self.ARITH:
            self.flops += out.numel()
        elif name == "cumsum":
            self.flops += out.numel() - out.numel() // out.shape[args[1]]
        return out


def _measure(fn, *args):
    with torch.no_grad(), FlopCounterMode(display=False) as matmul, ElementwiseCounter() as other:
        fn(*args)
    return matmul.get_total_flops(), other.flops


@pytest.mark.parametrize("t, chunk", [(50, 16), (37, 128), (1, 4)])
def test_selective_scan_flops_are_what_runs(t, chunk):
    u, dt, a, b, c, d, h0 = mamba1_inputs(1, t, 6, 4)
    measured = _measure(lambda: selective_scan(u, dt, a, b, c, d, h0, chunk=chunk))
    flops = selective_scan_flops(t, 6, 4, has_d=True, chunk=chunk)
    assert measured == (flops.matmul, flops.other)


@pytest.mark.parametrize("t, chunk", [(50, 16), (32, 8), (5, 256)])
def test_ssd_flops_are_what_runs(t, chunk):
    x, dt, a, b, c, d, h0 = mamba2_inputs(1, t, 4, 8, 2, 16)
    measured = _measure(lambda: ssd_chunked(x, dt, a, b, c, chunk, d, h0))
    flops = ssd_flops(t, 4, 8, 2, 16, chunk, has_d=True)
    assert measured == (flops.matmul, flops.other)


@pytest.mark.parametrize("seq_len", [40, 17])
def test_mamba2_tiny_matmul_flops_with_padding(seq_len):
    """mamba2-tiny has chunk 32: 40 tokens pad to 64 (two chunks), 17 run as one chunk of 17."""
    from archspec.flopcount import analytic_comparable, measure_flopcounter
    spec = load(SPECS / "mamba2-tiny.yaml")
    model = build(spec, seed=0)
    tokens = torch.randint(0, 256, (2, seq_len))
    assert measure_flopcounter(model, tokens) == analytic_comparable(spec, seq_len, batch=2)


# --- causality across chunks (decoding: tests/test_contract.py) ------------------------------

def _one_mixer_spec(type_name: str, config: str):
    return loads("model: {vocab_size: 97, d_model: 32, max_seq_len: 64}\n"
                 f"components:\n  M: {{type: {type_name}, {config}}}\nlayout: M\n")


def _mixer(type_name: str, config: str):
    return build(_one_mixer_spec(type_name, config), seed=0).sublayers[0].members["M"].eval()


@pytest.mark.parametrize("change_at", [8, 12, 21])
def test_mamba2_is_causal_across_chunk_boundaries(change_at):
    """Chunks of 8 over 22 tokens (the last chunk padded): changing token `change_at` (the first
    of chunk 1, the middle of chunk 1, inside the padded chunk) leaves every earlier output
    bit-identical, and reaches the last output through the state passed between chunks."""
    mixer = _mixer("mamba2", "d_state: 8, head_dim: 16, chunk_size: 8")
    x = torch.randn(2, 22, 32)
    changed = x.clone()
    changed[:, change_at] += 1.0
    with torch.no_grad():
        a, b = mixer(x), mixer(changed)
    assert torch.equal(a[:, :change_at], b[:, :change_at])
    assert not torch.equal(a[:, change_at], b[:, change_at])
    assert not torch.equal(a[:, -1], b[:, -1])


# --- validation ------------------------------------------------------------------------------

SPEC = """\
model:
  vocab_size: 256
  d_model: 64
  max_seq_len: 128
components:
  M: {type: mamba2, d_state: 16, head_dim: 16}
  S: {type: mamba, d_state: 8}
layout: "(M S) x 2"
"""


def test_the_mamba_spec_is_valid(write):
    spec = load(write(SPEC))
    assert [m.config["dt_rank"] for sub in spec.sublayers for m in sub.members if m.type == "mamba"] == [4, 4]


@pytest.mark.parametrize("old, new, key, message, hint", [
    ("head_dim: 16", "head_dim: 48", "head_dim",
     "head_dim=48 does not divide the inner width expand * d_model = 128",
     "use a divisor of 128 such as 16, 32, 64, or change expand"),
    ("head_dim: 16", "head_dim: 16, n_groups: 3", "n_groups",
     "n_groups=3 does not divide the number of heads 8 (= expand * d_model / head_dim = 128 / 16)",
     "each group serves H / G heads; use a divisor of 8 such as 1, 2, 4"),
    ("head_dim: 16", "head_dim: 16, expand: 1.3", "expand",
     "expand * d_model = 1.3 * 64 = 83.2 is not a whole number of channels",
     "pick expand so that expand * d_model is an integer (Mamba uses 2)"),
    ("head_dim: 16", "head_dim: 16, A_init_range: [16, 1]", "A_init_range",
     "A_init_range=[16, 1] is empty (lo > hi)", "write [lo, hi] with lo <= hi, e.g. [1, 16]"),
    ("head_dim: 16", "head_dim: 16, dt_limit: [0.1, 0.01]", "dt_limit",
     "dt_limit=[0.1, 0.01] is empty (lo >= hi)", "write [lo, hi] with lo < hi, or null for no clamp"),
    ("d_state: 8", "d_state: 8, dt_min: 0.5", "dt_min", "dt_min=0.5 is above dt_max=0.1",
     "initial step sizes are drawn log-uniformly from [dt_min, dt_max]; set dt_min <= dt_max"),
    ("d_state: 8", "d_state: 8, dt_rank: aut", "dt_rank", "unknown value 'aut'", "did you mean 'auto'?"),
])
def test_semantic_errors_are_located_with_hints(problems, old, new, key, message, hint):
    text = SPEC.replace(old, new)
    symbol = "S" if old == "d_state: 8" else "M"
    line = 7 if symbol == "S" else 6
    row = text.splitlines()[line - 1]
    assert_located(problems(text), path=("components", symbol, key),
                   at=(line, row.index(f" {key}: ") + len(key) + 4),  # at the value
                   message=message, hint=hint)


def test_bad_headdim_in_an_override_points_at_the_override(problems):
    text = SPEC + "overrides:\n  - at: 2\n    set: {head_dim: 24}\n"
    p = assert_located(problems(text), path=("overrides", 0, "set", "head_dim"), at=11)
    assert p.message.startswith("sublayer 2 (M) with this override: head_dim=24 does not divide")


# --- tracing ---------------------------------------------------------------------------------

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["mamba-tiny", "mamba2-tiny"])
def test_forward_traces_as_one_graph(fresh_dynamo, name):
    model = build(load(SPECS / f"{name}.yaml"), seed=0)
    tokens = torch.randint(0, 256, (2, 40))  # mamba2-tiny: chunk 32, so two chunks, padded
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    out, ref = compiled(tokens, labels=tokens), model(tokens, labels=tokens)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)


def test_scan_backward_under_aot_autograd_matches_eager(fresh_dynamo):
    """The selective scan's custom autograd function traces forward and backward."""
    spec = loads("model: {vocab_size: 97, d_model: 32, max_seq_len: 64}\n"
                 "components:\n  M: {type: mamba, d_state: 4}\nlayout: M\n")
    model = build(spec, seed=0)
    tokens = torch.randint(0, 97, (2, 24))
    torch.compile(model, backend="aot_eager", fullgraph=True)(tokens, labels=tokens).loss.backward()
    compiled = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(tokens, labels=tokens).loss.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(compiled[name], p.grad, rtol=0, atol=1e-6), name


@pytest.mark.parametrize("name", ["mamba-tiny", "mamba2-tiny"])
def test_tiny_specs_train_a_step(name):
    model = build(load(SPECS / f"{name}.yaml"), seed=0)
    tokens = torch.randint(0, 256, (2, 128))
    out = model(tokens, labels=tokens)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_initialisation_follows_the_reference():
    mixer = _mixer("mamba", "d_state: 8, dt_min: 0.01, dt_max: 0.05")
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1.0, 9.0)).expand(64, 8))
    assert torch.equal(mixer.D, torch.ones(64))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    bound = 2 ** -0.5  # dt_rank 2 at d_model 32
    assert mixer.dt_proj.weight.abs().max() <= bound
    m2 = _mixer("mamba2", "d_state: 8, head_dim: 16, A_init_range: [2, 4]")
    assert (m2.A_log.exp() >= 2).all() and (m2.A_log.exp() <= 4).all()
    assert torch.equal(m2.D, torch.ones(4)) and torch.equal(m2.norm.weight, torch.ones(64))
    dt2 = torch.nn.functional.softplus(m2.dt_bias)
    assert dt2.min() >= 1e-3 * (1 - 1e-5) and dt2.max() <= 0.1 * (1 + 1e-5)


def test_scan_flops_count_whole_chunks_once():
    """selective_scan_flops in closed form (issue 17: a chunk loop at a 16M-token context took
    seconds per component) equals the sum over scan_chunks it replaced."""
    from archspec.ops.ssm import costs
    for t in range(1, 300):
        for chunk in (1, 7, 128):
            walked = sum(5 * 3 * (3 * (b - a) + 2 + costs.linear_scan_flops(b - a).other) + 5 * (b - a)
                         for a, b in costs.scan_chunks(t, chunk)) + 2 * t * 5
            assert costs.selective_scan_flops(t, 5, 3, True, chunk).other == walked
