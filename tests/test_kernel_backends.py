"""Components built with their `triton` backend: the same module (parameters, state dict) and
the same results as the reference backend, the backend rule (`auto` keeps the reference off
CUDA; forcing triton where it cannot run, or for a config its kernels do not take, is a clear
error), and exact FLOP accounting with the kernels in use. Without a GPU the kernels run in
triton's interpreter (tests/conftest.py).

Tolerances (relative RMS error, as tests/test_linear_attention_kernels.py): fp32 1e-5, the
layer chains the kernels' own 2e-5-level agreement through projections that both backends share
(observed ~5e-7); bf16 2e-2: bf16 rounding (eps 2^-8) of every intermediate the two backends
round at different points (the kernels keep fp32 between gather, rule and combine).
"""
from __future__ import annotations

import pytest
import torch

import archspec
from archspec import components as C
from archspec.codegen.build import build
from archspec.flopcount import analytic_comparable, fvcore_analysis, measure_flopcounter

from helpers import assert_decodes_like_forward


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def mom_spec(**cfg):
    body = {"type": "mom", "n_heads": 2, "head_dim": 16, "n_memories": 4, "topk": 2, "chunk_size": 16, **cfg}
    flow = ", ".join(f"{k}: {'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in body.items())
    return archspec.loads("model: {vocab_size: 128, d_model: 32, max_seq_len: 64}\n"
                          f"components:\n  M: {{{flow}}}\nlayout: M\n")


def both_backends(spec, dtype=torch.float32):
    inst = spec.sublayers[0].members[0]
    mods = {}
    for backend in ("reference", "triton"):
        mod = C.get("mom").build(inst.config, spec.model, backend, "cpu")
        torch.manual_seed(0)
        mod.reset_parameters()
        mods[backend] = mod.to(dtype)
    return mods


def forward_backward(mod, x):
    x = x.clone().requires_grad_()
    y = mod(x)
    y.float().square().sum().backward()
    return y, x.grad, {n: p.grad for n, p in mod.named_parameters()}


@pytest.mark.parametrize("cfg", [
    {"rule": "gated_delta"},
    {"rule": "delta", "shared_memory": False},
    {"rule": "gla"},
    # capacity 0.5 drops assignments: some tokens keep one memory or none besides the shared one
    {"rule": "linear", "capacity_factor": 0.5},
])
def test_mom_triton_backend_matches_reference(cfg, kernel_device):
    mods = both_backends(mom_spec(**cfg))
    assert mods["triton"].backend == "triton" and mods["reference"].backend == "reference"
    assert mods["triton"].state_dict().keys() == mods["reference"].state_dict().keys()
    x = torch.randn(2, 37, 32, generator=torch.Generator().manual_seed(1))
    (y_r, dx_r, dp_r), (y_t, dx_t, dp_t) = (forward_backward(mods[b], x) for b in ("reference", "triton"))
    assert rel_err(y_t, y_r) <= 1e-5
    assert rel_err(dx_t, dx_r) <= 1e-5
    for name in dp_r:
        assert rel_err(dp_t[name], dp_r[name]) <= 1e-5, name


def test_mom_triton_backend_bf16(kernel_device):
    mods = both_backends(mom_spec(), torch.bfloat16)
    x = torch.randn(1, 40, 32, generator=torch.Generator().manual_seed(3)).bfloat16()
    (y_r, dx_r, _), (y_t, dx_t, _) = (forward_backward(mods[b], x) for b in ("reference", "triton"))
    assert y_t.dtype == torch.bfloat16
    assert rel_err(y_t, y_r) <= 2e-2
    assert rel_err(dx_t, dx_r) <= 2e-2


def test_a_memory_that_receives_no_token(kernel_device):
    # route every token to memories 0 and 1 only: memories 2 and 3 get empty groups
    mods = both_backends(mom_spec(rule="gated_delta"))
    for mod in mods.values():
        with torch.no_grad():
            mod.router.weight.zero_()
            mod.router.weight[:2] = 1.0  # same logit for 0 and 1 ... and above 2, 3 for x > 0
    x = torch.rand(1, 21, 32, generator=torch.Generator().manual_seed(4)) + 0.1
    plan = mods["reference"].plan(x)[3]
    assert plan.memory_rows[2] == plan.memory_rows[3] == 0
    (y_r, dx_r, _), (y_t, dx_t, _) = (forward_backward(mods[b], x) for b in ("reference", "triton"))
    assert rel_err(y_t, y_r) <= 1e-5 and rel_err(dx_t, dx_r) <= 1e-5


def test_backend_rule(monkeypatch, kernel_device):
    spec = mom_spec()
    # the interpreter runs the kernels, but `auto` keeps the reference off CUDA
    assert build(spec, seed=0).backends["sublayers.0.M"] == "reference"
    assert build(spec, seed=0, backend="triton").backends["sublayers.0.M"] == "triton"
    # on CUDA `auto` takes the kernels for a 16-bit model (a meta build shows the choice for a
    # device); a float32 model keeps the reference (its kernels spill registers: auto_skips),
    # though forcing them works, and float64 ones are not taken at all
    for dtype in ("bfloat16", "float16"):
        assert build(spec, meta=True, device="cuda", dtype=dtype).backends["sublayers.0.M"] == "triton"
    assert build(spec, meta=True, device="cuda").backends["sublayers.0.M"] == "reference"
    assert build(spec, meta=True, device="cuda", backend="triton").backends["sublayers.0.M"] == "triton"
    reason = C.get("mom").backends["triton"].auto_skips(spec.sublayers[0].members[0].config, spec.model)
    assert "float32 models" in reason and "spill registers" in reason
    with pytest.raises(ValueError, match="does not support this config.*take float32, bfloat16, float16 models, got float64"):
        build(spec, meta=True, device="cuda", dtype="float64", backend={"M": "triton"})
    # ... and not for a config they do not take: chunk_size 8
    small_chunks = mom_spec(chunk_size=8)
    assert build(small_chunks, meta=True, device="cuda", dtype="bfloat16").backends["sublayers.0.M"] == "reference"
    with pytest.raises(ValueError, match="does not support this config.*chunk_size in .*got 8"):
        build(small_chunks, backend="triton")
    assert build(mom_spec(head_dim=512), meta=True, device="cuda", dtype="bfloat16").backends["sublayers.0.M"] == "reference"
    # a string backend goes to every component (and norm) that has it; the rest keep `auto`
    mixed = archspec.load("specs/mom-tiny.yaml")
    chosen = build(mixed, meta=True, backend="triton").backends
    assert chosen["sublayers.0.mom"] == chosen["final_norm"] == "triton" and chosen["sublayers.1.mlp"] == "reference"
    with pytest.raises(ValueError, match="no 'tritn' backend in any component.*reference, triton"):
        build(mixed, meta=True, backend="tritn")
    # forcing the kernels on the CPU without the interpreter: what and how to fix
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="cannot run on cpu.*TRITON_INTERPRET=1.*'reference'"):
        build(spec, backend="triton")


def test_flops_with_the_kernels_equal_the_accounting(kernel_device):
    spec = mom_spec(rule="gated_delta")
    model = build(spec, seed=0, backend="triton")
    tokens = torch.randint(0, 128, (1, 48), generator=torch.Generator().manual_seed(5))
    # routing decides how far each memory's group is padded to a chunk: compare with the
    # accounting for the routing that happened, as tests/test_mom.py does for the reference
    mom = model.sublayers[0].members["M"]
    inst = spec.sublayers[0].members[0]
    with torch.no_grad():
        x = model.sublayers[0].norm(model.embedding(tokens))
        lengths = mom.plan(x)[3].segment_lengths()
    comp = C.get("mom")
    routed = comp.flops(inst.config, spec.model, 48, archspec.components.base.FlopConvention(), {"lengths": lengths}).matmul
    balanced = comp.flops(inst.config, spec.model, 48, archspec.components.base.FlopConvention("dense")).matmul
    want = analytic_comparable(spec, 48) - balanced + routed
    assert measure_flopcounter(model, tokens) == want
    result = fvcore_analysis(model, tokens)
    assert result.flops == want
    assert not result.skipped_matmul_ops
    assert not [op for op in result.unsupported if op.startswith("archspec::")]


def test_mamba2_triton_backend_matches_reference(kernel_device):
    # its gated RMSNorm (n_groups 2: normalised per group) runs as the fused kernel
    spec = archspec.loads("model: {vocab_size: 128, d_model: 32, max_seq_len: 64}\n"
                          "components:\n  S: {type: mamba2, d_state: 8, head_dim: 16, n_groups: 2, chunk_size: 16}\n"
                          "layout: S\n")
    inst = spec.sublayers[0].members[0]
    mods = {}
    for backend in ("reference", "triton"):
        mods[backend] = C.get("mamba2").build(inst.config, spec.model, backend, "cpu")
        torch.manual_seed(0)
        mods[backend].reset_parameters()
    assert mods["triton"].backend == "triton" and mods["reference"].backend == "reference"
    x = torch.randn(2, 21, 32, generator=torch.Generator().manual_seed(6))
    (y_r, dx_r, dp_r), (y_t, dx_t, dp_t) = (forward_backward(mods[b], x) for b in ("reference", "triton"))
    assert rel_err(y_t, y_r) <= 1e-5 and rel_err(dx_t, dx_r) <= 1e-5
    for name in dp_r:
        assert rel_err(dp_t[name], dp_r[name]) <= 1e-5, name


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("cfg", [
    {"rule": "gated_delta"},
    # capacity counts the whole decoded length: the prompt's routing must use the same limit
    {"rule": "gla", "capacity_factor": 0.5},
    {"rule": "delta", "shared_memory": False},
])
def test_prefill_then_decode_continues_the_sequence(backend, cfg, kernel_device):
    # the chunked form (the kernels' final states) over a 21-token prompt, then 9 decoding steps
    # from the state it fills: the same outputs as one forward over all 30 tokens
    spec = mom_spec(**cfg)
    mod = both_backends(spec)[backend]
    x = torch.randn(2, 30, 32, generator=torch.Generator().manual_seed(7))
    # fp32, 1e-5 of the largest output: the chunked and the token-by-token forms agree to that
    # (tests/test_mom.py, tests/test_contract.py), and the state carries fp32 states
    assert_decodes_like_forward(mod, x, prompt=21, tol=1e-5)
    with pytest.raises(ValueError, match="shorter than the prompt"):
        mod.prefill(x, mod.init_state(2, 10))


def test_importing_archspec_does_not_import_triton():
    # the kernels' FLOP formulas wait for install_flop_formulas (torch's flop counter imports
    # triton); a fresh interpreter shows what `import archspec` alone pulls in
    import subprocess
    import sys
    code = "import sys, archspec; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
