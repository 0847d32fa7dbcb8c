"""Correctness of archspec's Triton kernels at the sizes models use, against the PyTorch
reference: the first thing a session lent a GPU runs (benchmarks/gpu_check.sh).

    python benchmarks/check_kernels.py [--out DIR] [--jobs N]  # on a CUDA device: real sizes
    python benchmarks/check_kernels.py --smoke                  # the same checks on the CPU, tiny, interpreter

--jobs N runs the check groups (one per rule, the norms, the dispatch, the layer) in N child
processes, merged into one JSON every second: Triton compiles on the CPU, and gpu_check.sh
gives the GPU machine's 16 cores 8 processes.

Checks (each: relative RMS error ||a - b|| / ||b|| of every output and gradient, against a bound):
  * la/<rule>/<dtype>, la_ragged/<rule>/<dtype>: triton_chunk_rule against chunk_rule evaluated
    in float64 on the same (upcast) inputs, forward output, final state and the gradient of every
    input (q, k, v, g, beta, initial state), for linear, gla, delta, gated_delta; fixed-length
    [B, T] batches and packed ragged sequences (cu_seqlens, an empty and a 1-token sequence).
    mom-340m's layer shape: 4 heads, K = V = 256, chunk 64, T 2048. `reference_errors` records
    chunk_rule at the kernel's own dtype against the same float64 truth, for comparison.
  * norm/<op>/<width>/<dtype>: rmsnorm, add_rmsnorm (mom-340m d 1024, hydra-1.6b d 2048) and
    gated_rmsnorm (MoM's output norm over a 256-wide head, norm before gate; hydra's Mamba2 over
    its 4096-wide inner width, norm after gate), forward and every gradient, against the
    reference at the same dtype (as tests/test_norm_kernels.py).
  * dispatch/<dtype>: gather_rows / combine_rows over a MoM routing (4 memories top-2 + shared,
    B T tokens, D 1024) against the reference evaluated in float64 (the gather itself is exact).
  * mom_layer/<dtype>: the MoM layer (mom-340m) built with backend triton against backend
    reference, same weights: output, input gradient and (float32) every parameter gradient.

Bounds (those of the interpreter tests, which state their reasons; re-argued here):
  * LA_FP32 2e-5: both sides compute in fp32 (the kernels take exact fp32 products, 'ieee', for
    fp32 inputs; torch's fp32 matmuls are kept out of TF32 here) and differ in summation order
    and in how (I + A)^-1 is formed. Measured in the interpreter at K = V = 256, chunk 64 against
    float64: <= 2.2e-6 for every rule and gradient at T 400 (fp32 eps 1.2e-7), <= 1.6e-6 for
    gated_delta and gla on this script's ragged GPU lengths (one head), so 2e-5 leaves ~10x
    while a wrong term gives errors of order 1e-1. (The dispatch at D 1024, 2048 tokens: dweight
    1.1e-7, the rest <= 4e-8; bf16 <= 3.3e-3.)
  * LA_BF16 1e-2: outputs and gradients are rounded to bf16 (eps 2^-8 = 3.9e-3: relative RMS
    rounding ~1e-3, ~2e-3 under the interpreter, which truncates); on a GPU the kernels' bf16 mode
    uses tf32 products (2^-11), well under that rounding.
  * NORM_FP32 1e-5, NORM_BF16 1e-2: same formula in fp32, reductions in another order (a few
    ulps); bf16: both round their outputs (a flipped last bit is 2^-8 relative).
  * DISPATCH_FP32 1e-5, DISPATCH_BF16 1e-2: the gathers' sums and the combine have at most 3
    terms per token (top-2 + shared): a few fp32 ulps; dweight is a dot of D = 1024 products
    in fp32, relative error ~sqrt(D) u = 2e-6 on random data; bf16: half a bf16 ulp (one ulp
    under the interpreter, which truncates).
  * LAYER_FP32 2e-5, LAYER_BF16 2e-2: the layer chains the kernels' agreement through
    projections both backends share (tests/test_kernel_backends.py: 1e-5 at its tiny size; the
    kernels' own bound at this size); bf16: both backends round intermediates at different points.
NaN or inf never passes. Outputs are poisoned: torch.use_deterministic_algorithms with
fill_uninitialized_memory makes every torch.empty (the kernels' output buffers) NaN, so an
element a kernel fails to write shows up as a NaN error (the `poison` check proves the fill is on).
Inputs are random normal (never zeros), fresh per check. Exits 1 if any check fails, after
writing the JSON (rewritten after every check, so a timeout leaves the finished ones).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

SMOKE = "--smoke" in sys.argv
if SMOKE or not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic mode asks for it

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))
import archspec  # noqa: E402
from archspec import components as C  # noqa: E402
from archspec.ops import norm as N  # noqa: E402
from archspec.ops.dispatch import combine_rows, gather_rows, naive as dispatch_naive, plan_dispatch, row_map  # noqa: E402
from archspec.ops.linear_attention import chunk_rule, triton_chunk_rule  # noqa: E402
from gpu_env import versions  # noqa: E402

F = torch.nn.functional
F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64
BOUNDS = {"la": {F32: 2e-5, BF16: 1e-2}, "norm": {F32: 1e-5, BF16: 1e-2},
          "dispatch": {F32: 1e-5, BF16: 1e-2}, "layer": {F32: 2e-5, BF16: 2e-2}}
EPS = 1e-5

# real sizes (GPU) and tiny ones (smoke: the same code on the CPU in seconds)
SIZES = {
    "gpu": {"la": dict(b=2, t=2048, h=4, k=256, v=256, c=64), "ragged": [1, 0, 63, 65, 1000, 919],
            "norm_rows": 8192, "norm_widths": [1024, 2048], "gated": [(256, True), (4096, False)],
            "dispatch": dict(b=4, t=2048, d=1024),
            "layer": dict(b=2, t=2048, d=1024, n_heads=4, head_dim=256, chunk_size=64)},
    # smoke: two chunks of 16 (one partial), K != V; ragged: empty, 1-token and partial sequences
    "smoke": {"la": dict(b=1, t=20, h=1, k=16, v=32, c=16), "ragged": [1, 0, 19],
              "norm_rows": 37, "norm_widths": [48, 80], "gated": [(16, True), (48, False)],
              "dispatch": dict(b=2, t=9, d=13),
              "layer": dict(b=1, t=20, d=16, n_heads=1, head_dim=16, chunk_size=16)},
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def dname(dtype: torch.dtype) -> str:
    return str(dtype).split(".")[-1]


class Checks:
    """Collects check records and rewrites the JSON after each one."""

    def __init__(self, path: Path, header: dict, planned: list[str] | None = None):
        self.path, self.data, self.planned = path, {**header, "checks": []}, planned or []

    def run(self, name: str, bound: float, fn) -> None:
        t0 = time.perf_counter()
        rec = {"name": name, "bound": bound}
        try:
            errors, extra = fn()
            rec.update(extra)
            rec["errors"] = errors
            worst = max(errors.values())
            rec["max_error"] = worst
            # NaN compares false: a NaN (an unwritten, poisoned element) never passes
            rec["passed"] = all(e == e and e <= bound for e in errors.values())
        except Exception as exc:  # noqa: BLE001 - recorded as a failed check
            rec.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:2000],
                       traceback=traceback.format_exc()[-3000:])
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        self.data["checks"].append(rec)
        self.write()
        status = "ok  " if rec["passed"] else "FAIL"
        worst = rec.get("max_error")
        print(f"{status} {name:34s} max {worst if worst is None else f'{worst:.2e}'} "
              f"bound {bound:.0e}  {rec['seconds']:.1f}s" + (f"  {rec['error']}" if "error" in rec else ""),
              flush=True)

    def write(self) -> None:
        checks = self.data["checks"]
        done = {c["name"] for c in checks}
        # not_run: planned checks with no record yet (a run cut short by its time limit)
        self.data["summary"] = {"checks": len(checks), "passed": sum(c["passed"] for c in checks),
                                "failed": [c["name"] for c in checks if not c["passed"]],
                                "not_run": [n for n in self.planned if n not in done]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)  # readers (the merging parent) never see half a file


# --- linear attention ------------------------------------------------------------------------

def la_inputs(rule, b, t, h, k, v, dtype, device, n_states, seed):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x = {"q": rnd(b, t, h, k), "k": F.normalize(rnd(b, t, h, k), dim=-1), "v": rnd(b, t, h, v),
         "g": (F.logsigmoid(rnd(b, t, h)) if rule == "gated_delta" else
               F.logsigmoid(rnd(b, t, h, k)) if rule == "gla" else None),
         "beta": torch.rand(b, t, h, generator=gen) if rule in ("delta", "gated_delta") else None,
         "initial_state": rnd(n_states, h, k, v)}
    # g (a log decay) and the state stay fp32, as the kernels take them
    return {n: None if a is None else a.to(device, F32 if n in ("g", "initial_state") else dtype)
            for n, a in x.items()}


def la_run(fn, rule, x, chunk, cu, cotangents, dtype=None):
    """Output, final state and every input gradient of fn on x (cast to dtype if given)."""
    x = {n: None if a is None else a.detach().to(dtype or a.dtype).requires_grad_() for n, a in x.items()}
    o, ht = fn(rule, x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"], initial_state=x["initial_state"],
               output_final_state=True, cu_seqlens=cu, chunk_size=chunk)
    do, dht = cotangents
    names = [n for n, a in x.items() if a is not None]
    grads = torch.autograd.grad((o.double() * do.double()).sum() + (ht.double() * dht.double()).sum(),
                                [x[n] for n in names])
    return {"o": o, "ht": ht, **{f"d{n}": g for n, g in zip(names, grads)}}


def check_la(rule, dtype, s, device, lengths=None, seed=0):
    la = s["la"]
    if lengths is None:
        b, t, n_states, cu = la["b"], la["t"], la["b"], None
    else:
        b, t, n_states = 1, sum(lengths), len(lengths)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
    x = la_inputs(rule, b, t, la["h"], la["k"], la["v"], dtype, device, n_states, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    cot = (torch.randn(b, t, la["h"], la["v"], generator=gen).to(device, dtype),
           torch.randn(n_states, la["h"], la["k"], la["v"], generator=gen).to(device))
    got = la_run(triton_chunk_rule, rule, x, la["c"], cu, cot)
    truth = la_run(chunk_rule, rule, x, la["c"], cu, cot, dtype=F64)
    ref = la_run(chunk_rule, rule, x, la["c"], cu, cot)
    shape = {"B": b, "T": t, "H": la["h"], "K": la["k"], "V": la["v"], "chunk": la["c"],
             **({"lengths": lengths} if lengths else {})}
    return ({n: rel_err(got[n], truth[n]) for n in truth},
            {"shape": shape, "dtype": dname(dtype), "truth": "chunk_rule in float64 on the same inputs",
             "reference_errors": {n: rel_err(ref[n], truth[n]) for n in truth}})


# --- norms -----------------------------------------------------------------------------------

def norm_inputs(rows, n, dtype, device, names, seed):
    gen = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(rows, n, generator=gen) for k in names}
    out["weight"] = 1 + 0.5 * torch.randn(n, generator=gen)  # not all ones: dw and w both matter
    return {k: v.to(device, dtype).requires_grad_() for k, v in out.items()}


def check_norm(op, n, dtype, rows, device, norm_before_gate=True, seed=0):
    names = {"rmsnorm": ["x"], "add_rmsnorm": ["x", "r"], "gated_rmsnorm": ["x", "z"]}[op]
    t = norm_inputs(rows, n, dtype, device, names, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    cot = [torch.randn(rows, n, generator=gen).to(device, dtype) for _ in range(2)]
    res = {}
    for backend in ("triton", "reference"):
        if op == "rmsnorm":
            outs = (N.rmsnorm(t["x"], t["weight"], EPS, backend=backend),)
        elif op == "add_rmsnorm":
            outs = N.add_rmsnorm(t["x"], t["r"], t["weight"], EPS, backend=backend)  # (y, h)
        else:
            outs = (N.gated_rmsnorm(t["x"], t["z"], t["weight"], EPS, norm_before_gate, backend=backend),)
        wrt = sorted(t)
        grads = torch.autograd.grad(outs, [t[k] for k in wrt], cot[:len(outs)])
        res[backend] = {"y": outs[0], **({"h": outs[1]} if len(outs) > 1 else {}),
                        **{f"d{k}": g for k, g in zip(wrt, grads)}}
    errors = {k: rel_err(res["triton"][k], res["reference"][k]) for k in res["reference"]}
    return errors, {"shape": {"rows": rows, "n": n}, "dtype": dname(dtype),
                    **({"norm_before_gate": norm_before_gate} if op == "gated_rmsnorm" else {})}


# --- dispatch --------------------------------------------------------------------------------

def check_dispatch(dtype, s, device, seed=0):
    b, t, d = s["dispatch"]["b"], s["dispatch"]["t"], s["dispatch"]["d"]
    n = b * t
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 4, generator=gen)
    weights, idx = torch.softmax(logits, -1).topk(2, -1)
    plan = plan_dispatch(idx.to(device), (weights / weights.sum(-1, keepdim=True)).to(device), b, t, 4, True, None)
    token, p = plan.token, plan.token.shape[0]
    x = torch.randn(n, d, generator=gen).to(device, dtype).requires_grad_()
    o = torch.randn(p, d, generator=gen).to(device, dtype).requires_grad_()
    w = plan.weight.detach().float().requires_grad_()  # MoM's routing weights stay fp32
    dpacked = torch.randn(p, d, generator=gen).to(device, dtype)
    dout = torch.randn(n, d, generator=gen).to(device, dtype)
    rows = row_map(token, n)
    packed = gather_rows(x, rows, backend="triton")
    dx, = torch.autograd.grad(packed, x, dpacked)
    out = combine_rows(o, w, rows, backend="triton")
    do, dw = torch.autograd.grad(out, (o, w), dout)
    x64 = x.detach().double().requires_grad_()
    o64, w64 = o.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    dx64, = torch.autograd.grad(dispatch_naive.gather_rows(x64, token), x64, dpacked.double())
    out64 = dispatch_naive.combine_rows(o64, w64, token, n)
    do64, dw64 = torch.autograd.grad(out64, (o64, w64), dout.double())
    errors = {"gather": rel_err(packed, x64[token]), "gather_dx": rel_err(dx, dx64),
              "combine": rel_err(out, out64), "combine_do": rel_err(do, do64), "combine_dweight": rel_err(dw, dw64)}
    return errors, {"shape": {"tokens": n, "rows": p, "D": d, "memories": 4, "topk": 2, "shared": True},
                    "dtype": dname(dtype), "truth": "reference ops in float64 on the same inputs",
                    "gather_exact": bool(torch.equal(packed, x.detach()[token]))}


# --- the MoM layer -----------------------------------------------------------------------------

def check_layer(dtype, s, device, seed=0):
    cfg = s["layer"]
    spec = archspec.loads(
        f"model: {{vocab_size: 256, d_model: {cfg['d']}, max_seq_len: {cfg['t']}}}\n"
        f"components:\n  M: {{type: mom, n_heads: {cfg['n_heads']}, head_dim: {cfg['head_dim']}, "
        f"chunk_size: {cfg['chunk_size']}, n_memories: 4, topk: 2, shared_memory: true}}\nlayout: M\n")
    inst = spec.sublayers[0].members[0]
    x = torch.randn(cfg["b"], cfg["t"], cfg["d"], generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    res = {}
    for backend in ("reference", "triton"):
        torch.manual_seed(seed)
        mod = C.get("mom").build(inst.config, spec.model, backend, device).to_empty(device=device)
        torch.manual_seed(seed)
        mod.reset_parameters()
        mod = mod.to(dtype)
        xi = x.clone().requires_grad_()
        y = mod(xi)
        y.float().square().sum().backward()
        res[backend] = {"y": y, "dx": xi.grad, **{f"d:{n}": p.grad for n, p in mod.named_parameters()}}
    keys = ["y", "dx"] if dtype == BF16 else list(res["reference"])  # bf16: as the tests, y and dx
    errors = {k: rel_err(res["triton"][k], res["reference"][k]) for k in keys}
    return errors, {"shape": cfg, "dtype": dname(dtype), "truth": "the layer's reference backend, same weights"}


def check_poison(device):
    """The NaN fill of torch.empty is on, so unwritten kernel outputs cannot pass."""
    probe = torch.empty(4096, device=device)
    probe_bf16 = torch.empty(4096, device=device, dtype=BF16)
    nan = int(probe.isnan().sum() + probe_bf16.isnan().sum())
    return {"non_nan_fraction": 1 - nan / 8192}, {"note": "torch.empty under fill_uninitialized_memory"}


def plan(s: dict, device: str) -> list[tuple[str, str, float, object]]:
    """Every check as (group, name, bound, fn), in priority order: MoM's rule first, so that a run
    cut short has checked the most used kernels. A group shares its kernels' compilations."""
    out = [("poison", "poison", 0.0, lambda: check_poison(device))]
    for rule in ("gated_delta", "delta", "gla", "linear"):
        for dtype in (F32, BF16):
            out.append((rule, f"la/{rule}/{dname(dtype)}", BOUNDS["la"][dtype],
                        lambda rule=rule, dtype=dtype: check_la(rule, dtype, s, device)))
            out.append((rule, f"la_ragged/{rule}/{dname(dtype)}", BOUNDS["la"][dtype],
                        lambda rule=rule, dtype=dtype: check_la(rule, dtype, s, device, lengths=s["ragged"], seed=7)))
    for dtype in (F32, BF16):
        for n in s["norm_widths"]:
            for op in ("rmsnorm", "add_rmsnorm"):
                out.append(("norm", f"norm/{op}/{n}/{dname(dtype)}", BOUNDS["norm"][dtype],
                            lambda op=op, n=n, dtype=dtype: check_norm(op, n, dtype, s["norm_rows"], device)))
        for n, before in s["gated"]:
            out.append(("norm", f"norm/gated_rmsnorm/{n}/{dname(dtype)}", BOUNDS["norm"][dtype],
                        lambda n=n, before=before, dtype=dtype: check_norm("gated_rmsnorm", n, dtype, s["norm_rows"], device, before)))
        out.append(("dispatch", f"dispatch/{dname(dtype)}", BOUNDS["dispatch"][dtype],
                    lambda dtype=dtype: check_dispatch(dtype, s, device)))
        out.append(("layer", f"mom_layer/{dname(dtype)}", BOUNDS["layer"][dtype],
                    lambda dtype=dtype: check_layer(dtype, s, device)))
    return out


def shard_of(group: str, groups: list[str], jobs: int) -> int:
    return groups.index(group) % jobs


def run_parallel(args, checks: Checks, jobs: int, groups: list[str]) -> None:
    """`jobs` child processes, each running the groups of one shard (Triton compiles on the CPU:
    the GPU machine has 16 cores, so the ~75 kernel configurations compile in parallel); their
    records are merged into checks' JSON every second, in plan order."""
    tmp = Path(tempfile.mkdtemp(prefix="check_kernels_shards_"))
    cmd = [sys.executable, str(Path(__file__).resolve())] + (["--smoke"] if args.smoke else [])
    procs = [subprocess.Popen(cmd + ["--shard", f"{i}/{jobs}", "--out", str(tmp / str(i))]) for i in range(jobs)]
    order = {n: i for i, n in enumerate(checks.planned)}

    def merge():
        recs = []
        for i in range(jobs):
            try:
                recs += json.loads((tmp / str(i) / "check_kernels.json").read_text())["checks"]
            except (OSError, ValueError, KeyError):
                pass
        checks.data["checks"] = sorted(recs, key=lambda c: order.get(c["name"], len(order)))
        checks.write()
    while any(p.poll() is None for p in procs):
        time.sleep(1)
        merge()
    merge()
    shutil.rmtree(tmp, ignore_errors=True)
    for i, p in enumerate(procs):
        if p.returncode not in (0, 1):  # 1: a check failed (recorded); else the shard died
            checks.data["checks"].append({"name": f"shard/{i}", "bound": 0.0, "passed": False,
                                          "error": f"shard {i} of {jobs} exited {p.returncode}"})
    checks.write()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (interpreter)")
    ap.add_argument("--out", help="folder for check_kernels.json (default: benchmarks/results on a "
                                  "GPU, a temporary folder with --smoke)")
    ap.add_argument("--jobs", type=int, default=1, help="run the check groups in this many processes")
    ap.add_argument("--shard", help=argparse.SUPPRESS)  # i/n: a child of --jobs n
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("check_kernels: no CUDA device; run with --smoke for the CPU (interpreter) version", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    out = Path(args.out or (tempfile.mkdtemp(prefix="check_kernels_") if args.smoke else ROOT / "benchmarks" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    s = SIZES["smoke" if args.smoke else "gpu"]
    # fp32 references in exact fp32 (no TF32); the kernels' own precision: 'ieee' for fp32 inputs,
    # tf32 products for bf16 inputs (triton_chunk._precision)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    warnings.filterwarnings("ignore", message=".*deterministic.*")
    todo = plan(s, device)
    groups = list(dict.fromkeys(g for g, *_ in todo))
    if args.shard:
        i, n = map(int, args.shard.split("/"))
        todo = [c for c in todo if shard_of(c[0], groups, n) == i]
    checks = Checks(out / "check_kernels.json", {
        "what": "Triton kernels against the PyTorch reference (benchmarks/check_kernels.py)",
        "mode": "smoke (cpu, interpreter, tiny sizes)" if args.smoke else "cuda (real sizes)",
        "device": device, "versions": versions(), "sizes": s, "jobs": args.jobs,
        "bounds": {g: {dname(k): v for k, v in b.items()} for g, b in BOUNDS.items()},
        "precision": {"reference_fp32_matmul": "ieee fp32 (allow_tf32 False)",
                      "kernel_fp32": "ieee", "kernel_bf16": "tf32 products, fp32 accumulate"},
        "poison": "torch.use_deterministic_algorithms(warn_only) + fill_uninitialized_memory: torch.empty is NaN"},
        planned=[name for _, name, _, _ in todo])
    jobs = min(args.jobs, len(groups))
    if jobs > 1 and not args.shard:
        run_parallel(args, checks, jobs, groups)
    else:
        for _, name, bound, fn in todo:
            checks.run(name, bound, fn)
    summary = checks.data["summary"]
    print(f"check_kernels: {summary['passed']} of {summary['checks']} checks passed -> {checks.path}")
    return 0 if not summary["failed"] and not summary["not_run"] else 1


if __name__ == "__main__":
    sys.exit(main())
