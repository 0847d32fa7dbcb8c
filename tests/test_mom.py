"""MoM (archspec/components/mom.py): exact parameters against fla's formula, chunked form vs
the recurrent ground truth, unpadded dispatch, capacity, the auxiliary loss, memories that
receive no token, and FLOPs at the routing that actually happened. The decoding step against
the forward (every rule, with and without capacity) and the located topk error:
tests/test_contract.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import archspec
from archspec import components as C
from archspec.accounting import account
from archspec.components.base import FlopConvention
from archspec.flopcount import measure_flopcounter
from archspec.report import report

SPECS = Path(__file__).resolve().parent.parent / "specs"
RULES = ["gated_delta", "delta", "gla", "linear"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def mom_spec(d_model=32, max_seq_len=96, **cfg):
    config = {"type": "mom", "n_heads": 2, "head_dim": 8, "n_memories": 4, "topk": 2, "chunk_size": 8, **cfg}
    return archspec.loads(f"model: {{vocab_size: 50, d_model: {d_model}, max_seq_len: {max_seq_len}}}\n"
                          f"components:\n  X: {json.dumps(config)}\nlayout: X\n")


def mom_module(dtype=torch.float32, **cfg):
    spec = mom_spec(**cfg)
    inst = spec.sublayers[0].members[0]
    torch.manual_seed(0)
    module = C.get("mom").build(inst.config, spec.model)
    module.reset_parameters()
    return module.to(dtype), inst.config, spec.model


def fla_formula(d, h, hd, expand_v, m, shared, c=4):
    """REFERENCES.md: d K + d M + n_b (d K + d V + 2 d H) + 2H + c (2K + V) + d V + dv + V d."""
    k, v, dv = h * hd, int(h * hd * expand_v), int(hd * expand_v)
    n_b = m + 1 if shared else m
    return d * k + d * m + n_b * (d * k + d * v + 2 * d * h) + 2 * h + c * (2 * k + v) + d * v + dv + v * d


# --- parameters -------------------------------------------------------------------------------

def test_mom_340m_layer_has_fla_parameter_count():
    spec = archspec.load(SPECS / "mom-340m.yaml")
    acc = account(spec)
    mom_parts = [p for p in acc.parts if p.type == "mom"]
    assert len(mom_parts) == 24
    assert all(p.cost.params == 13_689_096 for p in mom_parts)
    assert fla_formula(1024, 4, 256, 1, 4, True) == 13_689_096
    model = archspec.build(spec, meta=True)
    assert sum(p.numel() for p in model.parameters()) == acc.total().params == report(spec)["totals"]["params"]


@pytest.mark.parametrize("h,hd,expand_v,m,shared", [(4, 256, 1, 4, True), (2, 16, 2, 8, False),
                                                    (1, 8, 0.5, 3, True)])
def test_parameter_count_equals_flas_formula(h, hd, expand_v, m, shared):
    spec = mom_spec(d_model=48, n_heads=h, head_dim=hd, expand_v=expand_v, n_memories=m,
                    topk=min(2, m), shared_memory=shared)
    assert account(spec).params_of_type("mom") == fla_formula(48, h, hd, expand_v, m, shared)


def test_active_parameters_count_topk_memories():
    module, cfg, model = mom_module()
    comp = C.get("mom")
    shapes = comp.param_shapes(cfg, model)
    one_memory = sum(math.prod(s) for n, s in shapes.items() if n.endswith(".0.weight"))
    total = sum(math.prod(s) for s in shapes.values())
    assert comp.active_param_count(cfg, model) == total - (cfg["n_memories"] - cfg["topk"]) * one_memory


# --- forms agree ------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("shared", [True, False])
def test_chunked_form_equals_recurrent_ground_truth(rule, shared):
    """fp32, relative to the output's largest magnitude: 1e-5 (the chunk form reorders sums of
    a few hundred float32 products; observed errors are ~1e-7 relative)."""
    module, _, _ = mom_module(rule=rule, shared_memory=shared)
    x = torch.randn(3, 37, 32)  # 37: not a multiple of the 8-token chunk
    module.form = "fast"
    fast = module(x)
    module.form = "reference"
    slow = module(x)
    assert (fast - slow).abs().max() <= 1e-5 * slow.abs().max()


@pytest.mark.parametrize("rule", RULES)
def test_gradients_of_the_two_forms_agree(rule):
    module, _, _ = mom_module(rule=rule)
    x = torch.randn(2, 21, 32)
    grads = {}
    for form in ("fast", "reference"):
        module.zero_grad()
        module.form = form
        module(x).pow(2).sum().backward()
        grads[form] = {n: p.grad.clone() for n, p in module.named_parameters()}
    for name, g in grads["reference"].items():
        assert (grads["fast"][name] - g).abs().max() <= 1e-4 * max(g.abs().max(), 1e-6), name


def test_float64_gradcheck_through_the_layer():
    module, _, _ = mom_module(torch.float64, rule="gated_delta", n_heads=1, head_dim=4, n_memories=3, chunk_size=4)
    x = torch.randn(1, 9, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: module(inp), (x,), eps=1e-6, atol=1e-6)


# --- dispatch ----------------------------------------------------------------------------------

def test_dispatch_is_unpadded_and_grouped():
    module, cfg, _ = mom_module()
    x = torch.randn(3, 40, 32)
    _, _, idx, plan = module.plan(x)
    b, t, k, m = 3, 40, cfg["topk"], cfg["n_memories"]
    assert plan.token.numel() == (k + 1) * b * t  # every assignment once, no padding rows
    lengths = plan.segment_lengths()
    assert len(lengths) == (m + 1) * b and sum(lengths) == (k + 1) * b * t
    for j in range(m):  # group (j, sequence s) holds exactly the tokens of s routed to j, in order
        for s in range(b):
            lo, hi = plan.cu_seqlens[j * b + s], plan.cu_seqlens[j * b + s + 1]
            expected = torch.nonzero((idx.view(b, t, k)[s] == j).any(-1)).flatten() + s * t
            assert torch.equal(plan.token[lo:hi], expected)


def test_capacity_caps_each_memory_first_come_first_served():
    module, cfg, _ = mom_module(capacity_factor=0.5)
    b, t = 2, 48
    x = torch.randn(b, t, 32)
    _, _, idx, plan = module.plan(x)
    limit = math.ceil(0.5 * cfg["topk"] * t / cfg["n_memories"])
    lengths = plan.segment_lengths()
    routed = lengths[: cfg["n_memories"] * b]
    assert max(routed) <= limit and sum(routed) < cfg["topk"] * b * t
    for j in range(cfg["n_memories"]):
        for s in range(b):
            lo, hi = plan.cu_seqlens[j * b + s], plan.cu_seqlens[j * b + s + 1]
            wanted = torch.nonzero((idx.view(b, t, -1)[s] == j).any(-1)).flatten() + s * t
            assert torch.equal(plan.token[lo:hi], wanted[:limit])  # the earliest ones are kept


@pytest.mark.parametrize("capacity", [None, 0.5])
def test_causal_with_and_without_capacity(capacity):
    module, _, _ = mom_module(capacity_factor=capacity)
    x = torch.randn(2, 40, 32)
    changed = x.clone()
    changed[:, 25:] = torch.randn(2, 15, 32)
    with torch.no_grad():
        a, b = module(x), module(changed)
    assert torch.equal(a[:, :25], b[:, :25]) and not torch.equal(a[:, 25:], b[:, 25:])


def test_memories_that_receive_no_token_break_nothing():
    module, _, _ = mom_module()
    # every token prefers memories 0 and 1: memories 2 and 3 get nothing
    module.router.register_forward_hook(lambda mod, inp, out: out + torch.tensor([30.0, 29.0, 0.0, 0.0]))
    x = torch.randn(2, 24, 32)
    _, _, _, plan = module.plan(x)
    assert plan.memory_rows[2] == plan.memory_rows[3] == 0
    y = module(x)
    y.pow(2).sum().backward()
    assert torch.isfinite(y).all()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert module.k_proj[2].weight.grad.abs().max() == 0 and module.k_proj[0].weight.grad.abs().max() > 0


# --- auxiliary loss ----------------------------------------------------------------------------

def test_aux_loss_is_returned_scaled_summed_over_layers_and_differentiable():
    spec = archspec.load(SPECS / "mom-tiny.yaml")
    model = archspec.build(spec, seed=0)
    tokens = torch.randint(0, 256, (2, 32))
    out = model(tokens, labels=tokens)
    assert set(out.aux_losses) == {"mom_load_balance"}
    # balanced routing gives topk; two layers, coefficient 0.01: about 2 * 0.01 * 2
    assert 0.01 * 2 * 2 * 0.9 < out.aux_loss.item() < 0.01 * 2 * 4
    assert torch.allclose(out.loss, out.lm_loss + out.aux_loss)
    out.aux_loss.backward()
    router = model.sublayers[0].members["mom"].router.weight
    assert router.grad is not None and router.grad.abs().max() > 0


def test_load_balancing_loss_is_topk_when_balanced_and_larger_when_not():
    """MoM counts f_j per token (fla's form): k when balanced; MoE's Switch form gives 1."""
    from archspec.ops.moe import load_balancing_loss
    probs = torch.full((8, 4), 0.25)
    idx = torch.tensor([[0, 1], [2, 3]] * 4)
    assert load_balancing_loss(probs, idx, 4, fraction_of="tokens").item() == pytest.approx(2.0)
    assert load_balancing_loss(probs, idx, 4).item() == pytest.approx(1.0)
    skewed = torch.tensor([[0.7, 0.3, 0.0, 0.0]] * 8)
    assert load_balancing_loss(skewed, torch.tensor([[0, 1]] * 8), 4, fraction_of="tokens").item() > 2.0


# --- FLOPs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", RULES)
def test_flops_exact_for_the_routing_that_happened(rule):
    spec = mom_spec(rule=rule)
    model = archspec.build(spec, seed=0)
    mom = model.sublayers[0].members["X"]
    inst = spec.sublayers[0].members[0]
    tokens = torch.randint(0, 50, (2, 30))
    with torch.no_grad():
        x = model.sublayers[0].norm(model.embedding(tokens))
        lengths = mom.plan(x)[3].segment_lengths()
    comp = C.get("mom")
    measured = measure_flopcounter(model, tokens)
    # the layer's count for the two sequences' actual groups, plus the LM head (2 sequences)
    own = comp.flops(inst.config, spec.model, 2 * 30, FlopConvention(), {"lengths": lengths})
    acc = account(spec, 30, FlopConvention("dense"))
    head = 2 * sum(p.cost.flops.matmul for p in acc.parts if p.type == "lm_head")
    assert measured == own.matmul + head


def test_balanced_flops_lie_within_the_bounds():
    spec = mom_spec()
    inst = spec.sublayers[0].members[0]
    comp = C.get("mom")
    for t in (8, 30, 64):
        lo, hi = comp.flops_bounds(inst.config, spec.model, t, FlopConvention())
        assert lo <= comp.flops(inst.config, spec.model, t, FlopConvention()).matmul <= hi


# --- dtypes and the report ---------------------------------------------------------------------

def test_bfloat16_forward_backward():
    spec = archspec.load(SPECS / "mom-tiny.yaml")
    model = archspec.build(spec, dtype="bfloat16", seed=0)
    tokens = torch.randint(0, 256, (2, 40))
    out = model(tokens, labels=tokens)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.dtype == torch.bfloat16


def test_report_notes_the_routing_assumption():
    rep = report(archspec.load(SPECS / "mom-tiny.yaml"))
    assert any(n.startswith("mom: FLOPs assume balanced routing") for n in rep["notes"])
