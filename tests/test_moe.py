"""MoE (archspec/components/moe.py): exact parameters, FLOPs against FlopCounterMode for the
routing that happened, the grouped reference path against the dense ground truth and a plain
per-token loop (forward and gradients), causality of the token and chunk routers (and the
documented non-causality of expert choice, which has no decoding step), capacity, the routing
losses, experts that receive no token, validation, and a tiny model that learns. Decoding
against the forward (both causal routers, with and without capacity) and the semantic errors:
tests/test_contract.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import archspec
from archspec.components.modules import ForwardContext
from archspec import components as C
from archspec.accounting import account
from archspec.components.base import FlopConvention
from archspec.flopcount import measure_flopcounter
from archspec.ops import moe as O
from archspec.report import report


SPECS = Path(__file__).resolve().parent.parent / "specs"
ROUTERS = ["token", "chunk", "expert_choice"]
CAUSAL = ["token", "chunk"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def moe_spec(d_model=16, max_seq_len=64, **cfg):
    config = {"type": "moe", "n_experts": 5, "topk": 2, "d_ff": 12, **cfg}
    if config.get("router") == "chunk":
        config.setdefault("chunk_size", 8)
    return archspec.loads(f"model: {{vocab_size: 50, d_model: {d_model}, max_seq_len: {max_seq_len}}}\n"
                          f"components:\n  X: {json.dumps(config)}\nlayout: X\n")


def moe_module(dtype=torch.float32, seed=0, **cfg):
    spec = moe_spec(**cfg)
    inst = spec.sublayers[0].members[0]
    torch.manual_seed(seed)
    module = C.get("moe").build(inst.config, spec.model)
    module.reset_parameters()
    return module.to(dtype), inst.config, spec.model


def per_token_loop(module, x: torch.Tensor) -> torch.Tensor:
    """The plain ground truth, written from the docstring: every token and expert one at a time,
    the router's choice, capacity and chunk summaries recomputed with Python loops."""
    b, t, d = x.shape
    e, k, cs = module.n_experts, module.topk, module.chunk_size
    wg, wu, wd = module._weights()
    w_r = module.router.weight.to(x.dtype)
    y = torch.zeros_like(x)

    def expert(j, v):
        return wd[j] @ (module.act(wg[j] @ v) * (wu[j] @ v))

    for s in range(b):
        if module.router_kind == "expert_choice":
            p = torch.softmax(x[s] @ w_r.T, -1)
            cap = O.expert_choice_capacity(module.capacity_factor, k, t, e)
            for j in range(e):
                for pos in sorted(range(t), key=lambda i: -p[i, j].item())[:cap]:
                    y[s, pos] += p[pos, j] * expert(j, x[s, pos])
            continue
        limit = module._limit(t)
        taken = [0] * e
        for pos in range(t):
            if module.router_kind == "token":
                r = x[s, pos]
            else:
                c = pos // cs
                r = module.router_start.to(x.dtype) if c == 0 else x[s, (c - 1) * cs:c * cs].mean(0)
            p = torch.softmax(w_r @ r, -1)
            chosen = sorted(range(e), key=lambda j: -p[j].item())[:k]
            total = sum(p[j] for j in chosen)
            for j in chosen:
                if limit is not None and taken[j] >= limit:
                    continue
                taken[j] += 1
                w = p[j] / total if module.renormalize else p[j]
                y[s, pos] += w * expert(j, x[s, pos])
    if module.shared is not None:
        y = y + module.shared(x)
    return y


# --- parameters ------------------------------------------------------------------------------

@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("n_shared", [0, 2])
def test_parameters_are_exact(router, n_shared):
    spec = moe_spec(d_model=24, router=router, n_experts=6, topk=2, d_ff=40, n_shared_experts=n_shared,
                    **({"shared_d_ff": 20} if n_shared else {}))
    d, e, f = 24, 6, 40
    expected = e * d + 3 * e * d * f + 3 * d * n_shared * 20 + (d if router == "chunk" else 0)
    assert account(spec).params_of_type("moe") == expected
    model = archspec.build(spec, seed=0)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == account(spec).param_shapes()


def test_d_ff_defaults_to_the_dense_gated_mlp_and_shared_width_to_d_ff():
    spec = archspec.loads("model: {vocab_size: 32000, d_model: 4096, max_seq_len: 64}\n"
                          "components:\n  X: {type: moe, n_shared_experts: 1}\nlayout: X\n")
    cfg = spec.sublayers[0].members[0].config
    assert cfg["d_ff"] == 11008 and cfg["shared_d_ff"] == 11008  # Llama-2-7B's FFN width


@pytest.mark.parametrize("router,cf,used", [("token", None, 2), ("chunk", None, 2),
                                             ("expert_choice", None, 2), ("expert_choice", 1.5, 3)])
def test_active_parameters_count_router_active_and_shared_experts(router, cf, used):
    spec = moe_spec(router=router, capacity_factor=cf, n_shared_experts=1)
    cfg, model = spec.sublayers[0].members[0].config, spec.model
    d, f = 16, 12
    start = d if router == "chunk" else 0
    assert C.get("moe").active_param_count(cfg, model) == 5 * d + start + used * 3 * d * f + 3 * d * f
    rep = report(spec)
    assert rep["totals"]["active_params"] < rep["totals"]["params"]


# --- the grouped path against the ground truths ----------------------------------------------

CASES = [dict(router="token"), dict(router="token", capacity_factor=0.6), dict(router="token", renormalize=False),
         dict(router="chunk"), dict(router="chunk", capacity_factor=0.8), dict(router="expert_choice"),
         dict(router="expert_choice", capacity_factor=1.7), dict(router="token", n_shared_experts=2),
         dict(router="token", activation="geglu", topk=3)]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_grouped_equals_dense_and_the_per_token_loop(cfg):
    """float64; the grouped and dense forms add the same terms in the same expert order, the loop
    in its own order: agreement to 1e-12 relative."""
    module, _, _ = moe_module(torch.float64, **cfg)
    x = torch.randn(2, 37, 16, dtype=torch.float64)  # 37: the last chunk is partial
    with torch.no_grad():
        grouped = module(x)
        module.form = "reference"
        dense = module(x)
        loop = per_token_loop(module, x)
    scale = loop.abs().max()
    assert (grouped - dense).abs().max() <= 1e-12 * scale
    assert (grouped - loop).abs().max() <= 1e-12 * scale


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gradients_of_grouped_and_dense_agree(cfg):
    module, _, _ = moe_module(torch.float64, **cfg)
    x = torch.randn(2, 29, 16, dtype=torch.float64, requires_grad=True)
    grads = {}
    for form in ("fast", "reference"):
        module.zero_grad()
        x.grad = None
        module.form = form
        ctx = ForwardContext()
        y = module(x, ctx)
        (y.pow(2).sum() + sum(ctx.aux_losses.values())).backward()
        grads[form] = {"x": x.grad.clone(), **{n: p.grad.clone() for n, p in module.named_parameters()}}
    for name, g in grads["reference"].items():
        assert (grads["fast"][name] - g).abs().max() <= 1e-12 * max(g.abs().max(), 1e-12), name


def test_float32_grouped_and_dense_agree():
    module, _, _ = moe_module(router="chunk", n_shared_experts=1)
    x = torch.randn(3, 40, 16)
    grouped = module(x)
    module.form = "reference"
    assert (grouped - module(x)).abs().max() <= 1e-6 * grouped.abs().max()


def test_gradcheck_through_the_layer():
    module, _, _ = moe_module(torch.float64, router="chunk", d_ff=6, n_experts=3)
    x = torch.randn(1, 19, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: module(inp), (x,), eps=1e-6, atol=1e-6)


def test_expert_choice_has_no_decoding_step():
    module, _, _ = moe_module(router="expert_choice")
    with pytest.raises(ValueError, match="not causal"):
        module.init_state(1, 8)


# --- routing ---------------------------------------------------------------------------------

def test_reference_path_never_runs_an_expert_on_a_token_not_routed_to_it():
    module, cfg, _ = moe_module()
    x = torch.randn(2, 30, 16)
    routing = module.route(x)
    a = module.assignments(x, routing)
    assert a.token.numel() == sum(a.counts) == 2 * 30 * 2  # k T rows, no padding, none repeated
    rows = {(int(t), int(e)) for t, e in zip(a.token, a.expert)}
    assert rows == {(n, int(e)) for n in range(60) for e in routing["idx"][n]}
    assert torch.equal(a.expert, a.expert.sort().values)  # expert-major, contiguous per expert


def test_capacity_keeps_each_experts_earliest_tokens_per_sequence():
    module, cfg, _ = moe_module(capacity_factor=0.5)
    b, t = 2, 48
    x = torch.randn(b, t, 16)
    routing = module.route(x)
    a = module.assignments(x, routing)
    limit = math.ceil(0.5 * 2 * t / 5)
    for e in range(5):
        for s in range(b):
            mine = a.token[(a.expert == e) & (a.token // t == s)]
            wanted = torch.nonzero((routing["idx"].view(b, t, -1)[s] == e).any(-1)).flatten() + s * t
            assert torch.equal(mine, wanted[:limit])


def test_capacity_is_causal_first_come_first_served():
    module, _, _ = moe_module(capacity_factor=0.6)  # 10 assignments per expert and sequence
    x = torch.randn(2, 40, 16)
    changed = x.clone()
    changed[:, 15:] = torch.randn(2, 25, 16)
    with torch.no_grad():
        a, b = module(x), module(changed)
        assert sum(module.assignments(x).counts) < 2 * 40 * 2  # some assignments were dropped
    assert torch.equal(a[:, :15], b[:, :15]) and not torch.equal(a[:, 15:], b[:, 15:])


@pytest.mark.parametrize("router", CAUSAL)
@pytest.mark.parametrize("at", [0, 8, 13, 23, 31])
def test_causal_routers_never_look_ahead(router, at):
    """Changing the inputs at and after position `at` (a chunk start, or inside a chunk of 8)
    leaves every earlier output bit-identical and changes the later ones."""
    module, _, _ = moe_module(router=router, chunk_size=8) if router == "chunk" else moe_module(router=router)
    x = torch.randn(2, 32, 16)
    changed = x.clone()
    changed[:, at:] = torch.randn(2, 32 - at, 16)
    with torch.no_grad():
        a, b = module(x), module(changed)
    assert torch.equal(a[:, :at], b[:, :at]) and not torch.equal(a[:, at:], b[:, at:])


def test_chunk_routing_depends_only_on_the_previous_chunk():
    """Chunk c's experts and weights: unchanged by anything at or after c's first token (even
    inside chunk c), changed when chunk c - 1 changes; chunk 0 uses the learned start vector."""
    module, _, _ = moe_module(router="chunk", chunk_size=8, n_experts=8, topk=2)
    x = torch.randn(4, 40, 16)
    base = module.route(x)
    idx, w = base["idx"].view(4, 40, -1), base["weights"].view(4, 40, -1)
    for c in range(5):  # one decision per chunk: every token of the chunk shares it
        assert (idx[:, c * 8:(c + 1) * 8] == idx[:, c * 8:c * 8 + 1]).all()
    for c in range(1, 5):
        later = x.clone()
        later[:, c * 8:] = torch.randn(4, 40 - c * 8, 16)
        r = module.route(later)
        assert torch.equal(r["idx"].view(4, 40, -1)[:, :(c + 1) * 8], idx[:, :(c + 1) * 8])
        assert torch.equal(r["weights"].view(4, 40, -1)[:, :(c + 1) * 8], w[:, :(c + 1) * 8])
        before = x.clone()
        before[:, (c - 1) * 8:c * 8] = 3 * torch.randn(4, 8, 16)
        assert not torch.equal(module.route(before)["weights"].view(4, 40, -1)[:, c * 8], w[:, c * 8])
    logits0 = module._logits(module.router_start.float())
    assert torch.allclose(base["logits"].view(4, 40, -1)[:, 0], logits0.expand(4, -1))


def test_expert_choice_is_not_causal_and_the_report_says_so():
    """Documented: each expert picks its top-C tokens of the whole sequence, so later tokens
    change which earlier tokens an expert takes."""
    module, _, _ = moe_module(router="expert_choice")
    x = torch.randn(2, 32, 16)
    changed = x.clone()
    changed[:, 16:] = 5 * torch.randn(2, 16, 16)  # larger inputs: they win the experts' picks
    with torch.no_grad():
        assert not torch.equal(module(x)[:, :16], module(changed)[:, :16])
    rep = report(moe_spec(router="expert_choice"))
    assert any("NOT causal" in n for n in rep["notes"])
    assert not any("NOT causal" in n for n in report(moe_spec())["notes"])


def test_expert_choice_balances_exactly():
    module, _, _ = moe_module(router="expert_choice", capacity_factor=1.25)
    x = torch.randn(3, 40, 16)
    a = module.assignments(x)
    cap = math.ceil(1.25 * 2 * 40 / 5)
    assert a.counts == [3 * cap] * 5


def test_an_expert_that_receives_no_token_breaks_nothing():
    module, _, _ = moe_module(n_experts=5, topk=2, n_shared_experts=1)
    # every token prefers experts 0 and 1: experts 2, 3, 4 get nothing
    logits = module._logits
    module._logits = lambda r: logits(r) + torch.tensor([30.0, 29.0, 0.0, 0.0, 0.0])
    x = torch.randn(2, 24, 16)
    a = module.assignments(x)
    assert a.counts[2:] == [0, 0, 0]
    ctx = ForwardContext()
    y = module(x, ctx)
    (y.pow(2).sum() + sum(ctx.aux_losses.values())).backward()
    assert torch.isfinite(y).all()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    g = module.experts.gate_proj.grad
    assert g[2:].abs().max() == 0 and g[0].abs().max() > 0
    assert module.router.weight.grad.abs().max() > 0  # the load-balancing loss pushes back
    lb = O.load_balancing_loss(module.route(x)["probs"], module.route(x)["idx"], 5)
    assert lb.item() > 2  # collapsed onto 2 of 5 experts: near E / k = 2.5; balanced gives 1


# --- losses ----------------------------------------------------------------------------------

def test_routing_losses_are_returned_scaled_and_differentiable():
    spec = archspec.load(SPECS / "moe-tiny.yaml")
    model = archspec.build(spec, seed=0)
    tokens = torch.randint(0, 256, (2, 40))
    out = model(tokens, labels=tokens)
    assert set(out.aux_losses) == {"moe_load_balance", "moe_z_loss"}
    # two layers at 0.01 x about 1 (near-balanced at init) each
    assert 0.01 * 2 * 0.9 < out.aux_losses["moe_load_balance"].item() < 0.01 * 2 * 2
    assert out.aux_losses["moe_z_loss"].item() > 0
    assert torch.allclose(out.loss, out.lm_loss + out.aux_loss)
    out.aux_loss.backward()
    for i in (1, 3):
        moe = model.sublayers[i].members["moe"]
        assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().max() > 0
    assert model.sublayers[3].members["moe"].router_start.grad.abs().max() > 0


def test_loss_values_follow_their_formulas():
    probs = torch.full((8, 4), 0.25)
    assert O.load_balancing_loss(probs, torch.tensor([[0, 1], [2, 3]] * 4), 4).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0, 0, 0]] * 8)
    assert O.load_balancing_loss(collapsed, torch.tensor([[0]] * 8), 4).item() == pytest.approx(4.0)
    logits = torch.randn(6, 4)
    assert O.z_loss(logits).item() == pytest.approx((torch.logsumexp(logits, -1) ** 2).mean().item())
    module, _, _ = moe_module(router="expert_choice")
    ctx = ForwardContext()
    module(torch.randn(1, 10, 16), ctx)
    assert set(ctx.aux_losses) == {"moe_z_loss"}  # expert choice balances by construction
    module, _, _ = moe_module(aux_loss_scale=0, z_loss_scale=0)
    ctx = ForwardContext()
    module(torch.randn(1, 10, 16), ctx)
    assert ctx.aux_losses == {}


# --- FLOPs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_flops_exact_for_the_routing_that_happened(cfg):
    """FlopCounterMode on the grouped path equals the analytic count for the assignments each
    sequence actually kept (k T dropless and E C expert choice: the same for any routing)."""
    module, config, model = moe_module(**cfg)
    b, t = 2, 37
    x = torch.randn(b, t, 16)
    with torch.no_grad():
        a = module.assignments(x)
        measured = measure_flopcounter(module, x)
    comp = C.get("moe")
    per_seq = torch.bincount(a.token // t, minlength=b).tolist()
    expected = sum(comp.flops(config, model, t, FlopConvention("dense"), {"assignments": n}).matmul for n in per_seq)
    assert measured == expected
    if cfg.get("capacity_factor") is None or cfg["router"] == "expert_choice":
        assert measured == b * comp.flops(config, model, t, FlopConvention("dense")).matmul
    else:
        lo, hi = comp.flops_bounds(config, model, t, FlopConvention("dense"))
        assert b * lo <= measured <= b * hi


def test_dense_ground_truth_does_e_over_k_times_the_expert_work():
    module, config, model = moe_module(n_experts=8, topk=2)
    x = torch.randn(1, 32, 16)
    grouped = measure_flopcounter(module, x)
    module.form = "reference"
    dense = measure_flopcounter(module, x)
    router = 2 * 32 * 16 * 8
    assert (dense - router) == 4 * (grouped - router)


def test_model_flops_match_the_accounting():
    spec = archspec.load(SPECS / "moe-tiny.yaml")
    model = archspec.build(spec, seed=0)
    tokens = torch.randint(0, 256, (2, 50))
    acc = account(spec, 50, FlopConvention("dense")).total().flops
    assert measure_flopcounter(model, tokens) == 2 * (acc.matmul + acc.attention)


def test_flop_formula_by_hand():
    spec = moe_spec(d_model=32, n_experts=8, topk=2, d_ff=48, n_shared_experts=1, shared_d_ff=24,
                    router="chunk", chunk_size=10)
    cfg, model = spec.sublayers[0].members[0].config, spec.model
    f = C.get("moe").flops(cfg, model, 45, FlopConvention())
    n_c = 5
    assert f.matmul == 2 * n_c * 32 * 8 + 6 * 32 * 48 * 2 * 45 + 6 * 32 * 24 * 45
    assert f.other == (n_c * 8 * 5 + n_c * 3 + 4 * 10 * 32              # softmax, renormalise, means
                       + 2 * 45 * (48 * 5 + 2 * 32) + 45 * (24 * 5 + 32))  # experts, shared


# --- validation (the located errors: tests/test_contract.py) ---------------------------------

def test_topk_one_without_renormalisation_is_valid():
    spec = moe_spec(topk=1, renormalize=False)
    model = archspec.build(spec, seed=0)
    out = model(torch.randint(0, 50, (1, 12)), labels=torch.randint(0, 50, (1, 12)))
    out.loss.backward()
    assert model.sublayers[0].members["X"].router.weight.grad.abs().max() > 0


def test_bfloat16_forward_backward():
    spec = archspec.load(SPECS / "moe-tiny.yaml")
    model = archspec.build(spec, dtype="bfloat16", seed=0)
    tokens = torch.randint(0, 256, (2, 40))
    out = model(tokens, labels=tokens)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.dtype == torch.bfloat16


# --- learning --------------------------------------------------------------------------------

@pytest.mark.parametrize("router", ["token", "chunk"])
def test_a_tiny_moe_model_learns_a_token_mapping(router):
    """Each label is a fixed random permutation of its token: only the feed-forward path can
    learn it (no attention in the model). Chance is ln 64 = 4.16 nats; 150 AdamW steps."""
    extra = ", chunk_size: 8" if router == "chunk" else ""
    spec = archspec.loads(
        "model: {vocab_size: 64, d_model: 32, max_seq_len: 32, tie_embeddings: true}\n"
        f"components:\n  E: {{type: moe, n_experts: 4, topk: 2, d_ff: 32, router: {router}{extra}}}\n"
        "layout: E x 2\n")
    model = archspec.build(spec, seed=0)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        tokens = torch.randint(0, 64, (16, 32), generator=g)
        out = model(tokens, labels=perm[tokens])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert set(out.aux_losses) == {"moe_load_balance", "moe_z_loss"}
    tokens = torch.randint(0, 64, (16, 32), generator=g)
    with torch.no_grad():
        final = model(tokens, labels=perm[tokens]).lm_loss.item()
    assert final < 1.0, final
