"""Computational kernels shared by components, one package per algorithm family (conv, dispatch,
linear_attention, moe, norm, pkm, sparse_attention, ssm), every family named alike (as fla
names its own):

    naive.py          the ground truth in plain PyTorch (recurrent loops, dense masked forms,
                      all-slot scoring): what every other form is tested against, and the
                      decoding step where there is one
    <algorithm>.py    the PyTorch fast form (chunk.py, window.py, topk.py, selective_scan.py,
                      ssd.py, experts.py, lookup.py)
    triton_<op>.py    the Triton kernels' custom ops, fake implementations, FLOP formulas and
                      launch records (triton_chunk.py, triton_rmsnorm.py, triton_dispatch.py),
                      beside triton_kernels.py, the @triton.jit kernels: the only module that
                      imports triton, and only when a kernel first runs
    costs.py          what a component's accounting and config checks read, without torch:
                      FLOP and state formulas, capacities and plans from shapes, the kernels'
                      supported range
    common.py, plan.py, backends.py, routing.py: argument checks and dtype rules, dispatch
                      planning, the entry points that pick a backend, mixture routing

Each family's `__init__.py` names its public API and imports neither torch nor triton: its
costs load with it, every other name on first use (PEP 562, archspec/lazy.py). So the front
end's accounting can import the costs without torch. aot.py (the ahead-of-time kernel gate) and
triton_support.py (what every kernel shares) serve all families. Nothing here imports a stage
above it (components, codegen, the CLI: an import-linter contract in pyproject.toml).
"""
