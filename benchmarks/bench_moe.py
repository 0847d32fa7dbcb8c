"""CPU forward+backward tokens/s of the MoE layer's grouped reference path against running every
expert densely (the baseline: what Hydra's toy MoE does), in the same run.

    /work/venv/bin/python benchmarks/bench_moe.py [--seq-len 2048] [--repeats 3] [--cases coarse,fine]

Writes benchmarks/results/moe_cpu.json. One torch thread (torch.set_num_threads(1): with 2
threads, timings on the 2-core development machine are erratic). float32, batch 1, token-choice
routing, dropless, no shared expert, the component's reference init (near-balanced routing).

Cases (same active work, k f = 2816, and same dense work, E f = 22528, per token):
  * coarse: d_model 1024, 16 experts top-2, d_ff 1408;
  * fine:   d_model 1024, 64 experts top-8, d_ff 352 (4x more, 4x smaller experts: more
    per-expert launches for the grouped path).
Forms (archspec/components/moe.py, the same module and weights):
  * grouped: module.form = "fast" (stable sort by expert, one gate/up/down matmul chain per
    expert on its contiguous rows, weighted index_add_): 6 d f k T matmul FLOPs;
  * dense:   module.form = "reference" (every expert on every token, multiplied by the dense
    combine matrix): 6 d f E T.
Each form: one warm-up run, then --repeats timed runs of forward + backward (gradient of a fixed
random tensor on the output; parameter and input gradients reset each run). Reported: median,
min, max and all times, tokens/s = T / median, ratio = grouped tokens/s / dense tokens/s; the
largest relative difference of the two forms' outputs and input gradients; forward matmul FLOPs
of each form, analytic and by FlopCounterMode.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, summary, timed, write  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(ROOT))
import archspec  # noqa: E402

FORMS = {"grouped": "fast", "dense": "reference"}  # this benchmark's names -> the module's forms
from archspec import components as C  # noqa: E402
from archspec.components.base import FlopConvention  # noqa: E402
from archspec.flopcount import measure_flopcounter  # noqa: E402

CASES = {"coarse": {"n_experts": 16, "topk": 2, "d_ff": 1408},
         "fine": {"n_experts": 64, "topk": 8, "d_ff": 352}}
D_MODEL = 1024


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max()).item()


def build(cfg: dict, seq_len: int):
    config = {"type": "moe", **cfg}
    spec = archspec.loads(f"model: {{vocab_size: 256, d_model: {D_MODEL}, max_seq_len: {seq_len}}}\n"
                          f"components:\n  E: {json.dumps(config)}\nlayout: E\n")
    inst = spec.sublayers[0].members[0]
    torch.manual_seed(0)
    module = C.get("moe").build(inst.config, spec.model)
    module.reset_parameters()
    return module.float(), inst.config, spec.model


def bench_case(name: str, cfg: dict, t: int, repeats: int) -> dict:
    module, config, model = build(cfg, t)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, t, D_MODEL, generator=g).requires_grad_()
    grad = torch.randn(1, t, D_MODEL, generator=g)
    leaves = [x, *module.parameters()]

    def step(form):
        def run():
            module.form = FORMS[form]
            for p in leaves:
                p.grad = None
            y = module(x)
            y.backward(grad)
            return y.detach(), x.grad.detach().clone()
        return run

    result = {"config": {k: config[k] for k in ("n_experts", "topk", "d_ff", "activation", "router",
                                                 "capacity_factor", "n_shared_experts")},
              "parameters": sum(p.numel() for p in module.parameters())}
    with torch.no_grad():
        counts = module.assignments(x).counts
    result["expert_loads"] = {"min": min(counts), "max": max(counts), "mean": sum(counts) / len(counts)}
    outputs, forms = {}, {}
    for form in ("grouped", "dense"):
        print(f"[{name}] {form}: warm-up + {repeats} runs", flush=True)
        run = step(form)
        run()
        times, outputs[form] = timed(run, repeats)
        s = summary(times)
        forms[form] = {**s, "tokens_per_s": t / s["median_s"], "load_average_after": load_now()}
    comp = C.get("moe")
    d, e, f, k = D_MODEL, cfg["n_experts"], cfg["d_ff"], cfg["topk"]
    router = 2 * t * d * e
    analytic = {"grouped": comp.flops(config, model, t, FlopConvention("dense")).matmul,
                "dense": router + 6 * d * f * e * t}
    measured = {}
    with torch.no_grad():
        for form in ("grouped", "dense"):
            module.form = FORMS[form]
            measured[form] = measure_flopcounter(module, x.detach())
    for form in forms:
        forms[form]["forward_matmul_flops"] = {"analytic": analytic[form], "flopcountermode": measured[form]}
    result["forms"] = forms
    result["ratio"] = {"value": forms["grouped"]["tokens_per_s"] / forms["dense"]["tokens_per_s"],
                       "meaning": "grouped tokens/s / dense tokens/s (forward + backward)",
                       "flop_ratio_dense_over_grouped": analytic["dense"] / analytic["grouped"]}
    result["agreement"] = {"output_max_rel_diff": rel_diff(outputs["grouped"][0], outputs["dense"][0]),
                           "input_grad_max_rel_diff": rel_diff(outputs["grouped"][1], outputs["dense"][1])}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="coarse,fine")
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = environment()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = None
    data = {"benchmark": "MoE forward+backward tokens/s: grouped reference path vs every expert densely",
            **env, "git": {"commit": commit},
            "shapes": {"batch": 1, "seq_len": args.seq_len, "d_model": D_MODEL, "dtype": "float32"},
            "repeats": {"timed": args.repeats, "warmup": 1},
            "baseline": "dense: every expert on every token, masked by the combine weights",
            "cases": {}}
    for name in args.cases.split(","):
        data["cases"][name] = bench_case(name, CASES[name], args.seq_len, args.repeats)
    data["load_average_1_5_15min_at_end"] = list(os.getloadavg())
    write("moe_cpu", data)


if __name__ == "__main__":
    main()
