"""Triton kernels against named baselines measured in the same run: the norms against torch,
the gated-delta chunk kernel against fla, the MoM layer against fla's MomAttention.

    python benchmarks/bench_kernels.py [--out DIR] [--fla-dir benchmarks/.fla] [--quick]
    python benchmarks/bench_kernels.py --smoke      # the GPU code path on the CPU, tiny, measures nothing
    python benchmarks/bench_kernels.py --fetch-fla  # first, where pip reaches PyPI

On a CUDA device (bf16; benchmarks/gpu_check.sh runs it after check_kernels.py):
  * ceilings: a 2 GiB device-to-device copy (bytes read + written / s) and an 8192^3 bf16 matmul
    on random data (FLOP/s), measured here: the floors below divide by them (METHOD.md).
  * norms: archspec's rmsnorm, add_rmsnorm (d 2048 and 4096, 16384 rows) and gated_rmsnorm
    (MoM's 256-wide heads, Mamba2's 4096 inner width) against torch's F.rms_norm (bf16, where it
    applies) and archspec's reference; forward (no_grad) and forward + backward; bytes over time
    against the copy ceiling.
  * la_chunk: archspec's `triton_chunk_rule('gated_delta')` (the la_chunk_fwd/bwd ops) against
    fla's `chunk_gated_delta_rule` and archspec's reference `chunk_rule`, forward + backward at the
    mom-340m head shape (H 4, K = V = 256, chunk 64), (B, T) = (8, 2048) and (1, 16384). Floor:
    FLOPs = 3 x chunk_flops(...).matmul, bytes = inputs + outputs of forward and backward;
    fraction_of_floor = floor / median time.
  * mom_layer: the MoM layer (backend triton) against fla's MomAttention (which pads every memory
    to its longest group; capacity M / k makes it dropless like ours) and the reference backend.
  Timing: CUDA events per call after 3 warm-ups, 2 interleaved rounds, medians (and each round's
  median: their spread is the noise), inputs rotated over 3 fresh random sets.
  Targets (issue 6): the MoM layer >= 1.5x fla's tokens/s, the kernel >= parity.
Without CUDA (and without --smoke) the kernels run only in triton's interpreter: the script then
records the kernels' agreement with the reference at small shapes in results/kernels_cpu.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

if "--smoke" in sys.argv or not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, environment, write  # noqa: E402
from gpu_env import versions  # noqa: E402

sys.path.insert(0, str(ROOT))
import archspec  # noqa: E402
from archspec import components as C  # noqa: E402
from archspec.ops.linear_attention import KERNEL_RULES, chunk_flops, chunk_rule, triton_chunk_rule  # noqa: E402

F = torch.nn.functional
MOM_340M = {"type": "mom", "n_heads": 4, "head_dim": 256, "n_memories": 4, "topk": 2,
            "shared_memory": True, "chunk_size": 64}
D_MODEL = 1024


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# --- inputs -----------------------------------------------------------------------------------

def rule_inputs(rule, b, t, h, k, v, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x = {"q": rnd(b, t, h, k), "k": torch.nn.functional.normalize(rnd(b, t, h, k), dim=-1),
         "v": rnd(b, t, h, v),
         "g": (torch.nn.functional.logsigmoid(rnd(b, t, h)) if rule == "gated_delta" else
               torch.nn.functional.logsigmoid(rnd(b, t, h, k)) / 16 if rule == "gla" else None),
         "beta": torch.rand(b, t, h, generator=gen) if rule in ("delta", "gated_delta") else None}
    return {n: None if a is None else
            a.to(device=device, dtype=torch.float32 if n == "g" else dtype).requires_grad_()
            for n, a in x.items()}


def fwd_bwd(fn, rule, x, do):
    o, _ = fn(rule, x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"], chunk_size=64 if x["q"].shape[1] >= 64 else 16)
    names = [n for n in x if x[n] is not None]
    grads = torch.autograd.grad(o, [x[n] for n in names], do)
    return {"o": o, **{f"d{n}": g for n, g in zip(names, grads)}}


# --- CPU: correctness only ----------------------------------------------------------------------

def correctness(quick: bool) -> dict:
    out = {}
    for rule in KERNEL_RULES:
        for dtype in (torch.float32, torch.bfloat16):
            x = rule_inputs(rule, 2, 69, 2, 32, 32, dtype, "cpu")
            do = torch.randn(2, 69, 2, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
            got, want = fwd_bwd(triton_chunk_rule, rule, x, do), fwd_bwd(chunk_rule, rule, x, do)
            out[f"{rule}/{str(dtype).split('.')[-1]}"] = {n: rel_err(got[n], want[n]) for n in want}
    out["mom_layer"] = mom_layer_agreement()
    return out


def mom_layer_agreement() -> dict:
    spec = archspec.loads("model: {vocab_size: 256, d_model: 64, max_seq_len: 64}\n"
                          "components:\n  M: {type: mom, n_heads: 2, head_dim: 16, chunk_size: 16}\n"
                          "layout: M\n")
    inst = spec.sublayers[0].members[0]
    mods = {}
    for backend in ("reference", "triton"):
        torch.manual_seed(0)
        mods[backend] = C.get("mom").build(inst.config, spec.model, backend, "cpu").to_empty(device="cpu")
        torch.manual_seed(0)
        mods[backend].reset_parameters()
    x = torch.randn(2, 37, 64, generator=torch.Generator().manual_seed(2))
    res = {}
    for backend, mod in mods.items():
        xi = x.clone().requires_grad_()
        y = mod(xi)
        y.square().sum().backward()
        res[backend] = (y, xi.grad, {n: p.grad for n, p in mod.named_parameters()})
    (y_r, dx_r, dp_r), (y_t, dx_t, dp_t) = res["reference"], res["triton"]
    return {"output": rel_err(y_t, y_r), "input_grad": rel_err(dx_t, dx_r),
            "param_grad_max": max(rel_err(dp_t[n], dp_r[n]) for n in dp_r)}


# --- timing ---------------------------------------------------------------------------------------

def time_fns(fns: dict, device: str, rounds: int = 2, target_s: float = 0.2, min_reps: int = 5,
             max_reps: int = 50) -> dict:
    """Time each `fn(i)` (i picks the rotated input set). On CUDA: 3 warm-up calls (compilation,
    autotuning), then `rounds` rounds over all fns (interleaved, so drift hits every fn alike), each
    of n calls timed with CUDA events, n = target_s / (one call), in [min_reps, max_reps]; the
    median, min and max over all calls and each round's median (their spread is the noise). On the
    CPU (--smoke): one wall-clock call, no warm-up: it checks the code path and means nothing."""
    cuda = device == "cuda"
    out, reps, runs = {}, {}, {}
    for name, fn in fns.items():
        try:
            if not cuda:  # one wall-clock call
                t0 = time.perf_counter()
                fn(0)
                runs[name] = [[time.perf_counter() - t0]]
                continue
            for i in range(3):
                fn(i)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(3)
            torch.cuda.synchronize()
            reps[name] = max(min_reps, min(max_reps, int(target_s / max(time.perf_counter() - t0, 1e-6))))
            runs[name] = []
        except Exception as exc:  # noqa: BLE001 - recorded (fla has no CPU path, a baseline may OOM)
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    for _ in range(rounds if cuda else 0):
        for name, n in reps.items():
            if name in out:  # failed in an earlier round
                continue
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            try:
                for i, (start, end) in enumerate(events):
                    start.record()
                    fns[name](i)
                    end.record()
                torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001 - recorded
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                runs.pop(name)
                continue
            runs[name].append([start.elapsed_time(end) / 1e3 for start, end in events])
    for name, rs in runs.items():
        flat = [t for r in rs for t in r]
        out[name] = {"median_s": statistics.median(flat), "min_s": min(flat), "max_s": max(flat),
                     "round_medians_s": [statistics.median(r) for r in rs], "calls": len(flat),
                     "timer": "cuda events" if cuda else "wall clock (interpreter: not meaningful)"}
    return out


def rotate(make, n_sets: int) -> list:
    """n_sets fresh random input sets: timed calls cycle through them (no cache-warm reuse)."""
    return [make(seed) for seed in range(n_sets)]


def load_fla(fla_dir: str | None):
    """fla's chunk_gated_delta_rule and MomAttention, or the reason they are unavailable."""
    if fla_dir and str(Path(fla_dir).resolve()) not in sys.path:
        sys.path.insert(0, str(Path(fla_dir).resolve()))
    if importlib.util.find_spec("fla") is None:
        return None, None, "fla is not importable (unpack a fla-core wheel into --fla-dir)"
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as exc:  # noqa: BLE001 - recorded
        return None, None, f"{type(exc).__name__}: {exc}"
    try:
        # fla.layers' __init__ imports every layer, some of which need transformers: register the
        # package empty so that only fla/layers/mom.py (and its utils) are imported
        import types
        import fla
        layers = types.ModuleType("fla.layers")
        layers.__path__ = [str(Path(fla.__file__).parent / "layers")]
        sys.modules.setdefault("fla.layers", layers)
        from fla.layers.mom import MomAttention
    except Exception as exc:  # noqa: BLE001 - recorded
        return chunk_gated_delta_rule, None, f"MomAttention: {type(exc).__name__}: {exc}"
    return chunk_gated_delta_rule, MomAttention, None


GPU_WHEELS = ["jsonschema", "jsonschema-specifications", "referencing", "rpds-py"]
GPU_PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def fla_version(fla_dir: str) -> str | None:
    for info in Path(fla_dir).glob("fla_core-*.dist-info"):
        return info.name[len("fla_core-"):-len(".dist-info")]
    return None


def fetch_fla_layers(side: Path) -> None:
    """fla-core (ops, modules) and einops as bench_recurrent.py fetches them, plus the
    flash-linear-attention wheel (fla/layers, fla/models), unpacked into `side`."""
    import subprocess
    import zipfile
    from bench_recurrent import fetch_fla
    for line in fetch_fla(side):
        print(line)
    if not (side / "fla" / "layers" / "mom.py").exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "flash-linear-attention",
                            "--no-deps", "--only-binary", ":all:", "-d", tmp], check=True)
            wheel = next(Path(tmp).glob("flash_linear_attention-*.whl"))
            zipfile.ZipFile(wheel).extractall(side)
            print(f"unpacked {wheel.name} into {side}")
    # archspec needs jsonschema, which the GPU machine's image lacks (KINDS.md's package list):
    # wheels for its Python (3.12, x86-64), installed there by gpu_check.sh without a network
    wheels = side / "wheels"
    if not list(wheels.glob("jsonschema-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp",
                        *[a for p in GPU_PLATFORMS for a in ("--platform", p)], "-d", str(wheels),
                        *GPU_WHEELS], check=True)
        print(f"downloaded {', '.join(GPU_WHEELS)} wheels into {wheels}")


def ceilings(s: dict, device: str) -> dict:
    """The two ceilings METHOD.md asks to measure on the device itself: a device-to-device copy
    (bytes read + written per second) and a bf16 matrix product on random data (FLOP/s)."""
    n, m = s["copy_bytes"] // 2, s["matmul_n"]
    a = torch.randn(n, device=device, dtype=torch.bfloat16)
    b = torch.empty_like(a)
    x, y = (torch.randn(m, m, device=device, dtype=torch.bfloat16) for _ in range(2))
    t = time_fns({"copy": lambda i: b.copy_(a), "matmul": lambda i: x @ y}, device)
    out = {"copy": {**t["copy"], "bytes": 4 * n}, "matmul_bf16": {**t["matmul"], "n": m, "flops": 2 * m ** 3}}
    if "median_s" in t["copy"]:
        out["copy_bytes_per_s"] = 4 * n / t["copy"]["median_s"]
    if "median_s" in t["matmul"]:
        out["matmul_bf16_flops_per_s"] = 2 * m ** 3 / t["matmul"]["median_s"]
    return out


def with_rates(res: dict, flops: float | None, bytes_: float, ceil: dict) -> dict:
    """Add to each timing the achieved rates and its time over the floor = max(FLOPs / measured
    matmul rate, bytes / measured copy bandwidth): fraction_of_floor 1 is the best possible."""
    rate, bw = ceil.get("matmul_bf16_flops_per_s"), ceil.get("copy_bytes_per_s")
    floor = {"flops": flops, "bytes": bytes_,
             "compute_s": None if not (flops and rate) else flops / rate,
             "memory_s": None if not bw else bytes_ / bw}
    times = [v for v in (floor["compute_s"], floor["memory_s"]) if v is not None]
    floor["floor_s"] = max(times) if times else None
    floor["bound_by"] = None if len(times) < 2 else ("compute" if floor["compute_s"] >= floor["memory_s"] else "memory")
    for r in res.values():
        if isinstance(r, dict) and "median_s" in r:
            r["bytes_per_s"] = bytes_ / r["median_s"]
            if flops:
                r["tflops"] = flops / r["median_s"] / 1e12
            if floor["floor_s"]:
                r["fraction_of_floor"] = floor["floor_s"] / r["median_s"]
    res["floor"] = floor
    return res


def ratio(res: dict, base: str, name: str = "archspec_triton") -> float | None:
    """How many times faster `name` is than the baseline `base` (median over median)."""
    a, b = res.get(name, {}), res.get(base, {})
    return b["median_s"] / a["median_s"] if "median_s" in a and "median_s" in b else None


# --- benchmarks -----------------------------------------------------------------------------------

def bench_norms(s: dict, device: str, ceil: dict, n_sets: int) -> dict:
    """bf16 norms, archspec's kernels against torch (F.rms_norm on bf16, the fused native op) and
    archspec's reference (fp32 compute), forward (no_grad) and forward + backward."""
    from archspec.ops import norm as N
    rows, es, out = s["norm_rows"], 2, {}
    cases = [(f"rmsnorm/{n}", "rmsnorm", n, rows, None) for n in s["norm_widths"]]
    cases += [(f"add_rmsnorm/{n}", "add_rmsnorm", n, rows, None) for n in s["norm_widths"]]
    cases += [(f"gated_rmsnorm/{n}/{'before' if b else 'after'}", "gated", n, r, b) for n, r, b in s["gated"]]
    for key, op, n, m, before in cases:
        def make(seed, n=n, m=m):
            g = torch.Generator().manual_seed(seed)
            t = {k: torch.randn(m, n, generator=g).to(device, torch.bfloat16).requires_grad_() for k in ("x", "r", "dy")}
            t["w"] = (1 + 0.5 * torch.randn(n, generator=g)).to(device, torch.bfloat16).requires_grad_()
            return t
        sets = rotate(make, n_sets)
        if op == "rmsnorm":
            impls = {"archspec_triton": lambda t: N.rmsnorm(t["x"], t["w"], 1e-5, backend="triton"),
                     "archspec_reference": lambda t, n=n: N.rmsnorm(t["x"], t["w"], 1e-5),
                     "torch_rms_norm": lambda t, n=n: F.rms_norm(t["x"], (n,), t["w"], 1e-5)}
            wrt, fwd_b, bwd_b = ("x", "w"), 2, 3      # x, y | dy, x, dx  (rows of n elements)
        elif op == "add_rmsnorm":
            impls = {"archspec_triton": lambda t: N.add_rmsnorm(t["x"], t["r"], t["w"], 1e-5, backend="triton")[0],
                     "archspec_reference": lambda t: N.add_rmsnorm(t["x"], t["r"], t["w"], 1e-5)[0],
                     "torch_rms_norm": lambda t, n=n: F.rms_norm(t["x"] + t["r"], (n,), t["w"], 1e-5)}
            wrt, fwd_b, bwd_b = ("x", "r", "w"), 4, 3  # x, r, y, h | dy, h, dx
        else:
            impls = {"archspec_triton": lambda t, b=before: N.gated_rmsnorm(t["x"], t["r"], t["w"], 1e-5, b, backend="triton"),
                     "archspec_reference": lambda t, b=before: N.gated_rmsnorm(t["x"], t["r"], t["w"], 1e-5, b)}
            wrt, fwd_b, bwd_b = ("x", "r", "w"), 3, 5  # x, z, y | dy, x, z, dx, dz
        res = {"shape": {"rows": m, "n": n}, "dtype": "bfloat16"}
        for mode, elems in (("fwd", fwd_b), ("fwd_bwd", fwd_b + bwd_b)):
            def fns_for(f, mode=mode):
                if mode == "fwd":
                    def run(i):
                        with torch.no_grad():
                            return f(sets[i % n_sets])
                else:
                    def run(i):
                        t = sets[i % n_sets]
                        return torch.autograd.grad(f(t), [t[k] for k in wrt], t["dy"])
                return run
            r = time_fns({name: fns_for(f) for name, f in impls.items()}, device)
            r = with_rates(r, None, elems * m * n * es, ceil)
            r["speedup_vs_reference"] = ratio(r, "archspec_reference")
            r["speedup_vs_torch_rms_norm"] = ratio(r, "torch_rms_norm")
            res[mode] = r
        out[key] = res
        del sets
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def la_bytes(b: int, t: int, h: int, k: int, v: int) -> int:
    """Fewest bytes of gated_delta forward + backward in bf16 (g fp32): forward reads q, k, v, g,
    beta and writes o; backward reads them and do, writes dq, dk, dv, dg, dbeta."""
    inputs = b * t * h * ((2 * k + v) * 2 + 4 + 2)  # q, k, v bf16; g fp32, beta bf16
    o = b * t * h * v * 2
    return (inputs + o) + (inputs + o + inputs)  # forward | backward (inputs, do; the gradients)


def bench_la(b: int, t: int, s: dict, device: str, fla_fn, ceil: dict, n_sets: int) -> dict:
    """gated_delta forward + backward, bf16: archspec's kernels (triton_chunk_rule, the
    la_chunk_fwd/bwd ops) against fla's chunk_gated_delta_rule and archspec's reference chunk_rule."""
    h, k, c = s["la"]["h"], s["la"]["k"], s["la"]["c"]

    def make(seed):
        x = rule_inputs("gated_delta", b, t, h, k, k, torch.bfloat16, device, seed=seed)
        x["do"] = torch.randn(b, t, h, k, generator=torch.Generator().manual_seed(seed + 100)).to(device, torch.bfloat16)
        return x
    sets = rotate(make, n_sets)
    names = ("q", "k", "v", "g", "beta")

    def ours(fn):
        def run(i):
            x = sets[i % n_sets]
            o, _ = fn("gated_delta", x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"], chunk_size=c)
            return torch.autograd.grad(o, [x[n] for n in names], x["do"])
        return run
    fns = {"archspec_triton": ours(triton_chunk_rule), "archspec_reference": ours(chunk_rule)}
    if fla_fn is not None:
        def fla_run(i):
            x = sets[i % n_sets]
            o, _ = fla_fn(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=k ** -0.5)
            return torch.autograd.grad(o, [x[n] for n in names], x["do"])
        fns["fla_chunk_gated_delta_rule"] = fla_run
    res = time_fns(fns, device)
    flops = 3 * chunk_flops("gated_delta", [t] * b, h, k, k, c).matmul
    res = with_rates(res, flops, la_bytes(b, t, h, k, k), ceil)
    res["floor"]["flops_convention"] = "3 x chunk_flops(...).matmul (the backward op counts 2x the forward)"
    res["shape"] = {"B": b, "T": t, "H": h, "K": k, "V": k, "chunk": c, "dtype": "bfloat16", "rule": "gated_delta"}
    res["tokens_per_s"] = {n: b * t / r["median_s"] for n, r in res.items() if isinstance(r, dict) and "median_s" in r}
    res["speedup_vs_fla"] = ratio(res, "fla_chunk_gated_delta_rule")
    res["speedup_vs_reference"] = ratio(res, "archspec_reference")
    return res


def bench_layer(b: int, t: int, s: dict, device: str, fla_layer, n_sets: int) -> dict:
    """The MoM layer forward + backward, bf16: archspec (backend triton) against fla's MomAttention
    (dropless capacity M / k) and archspec's reference backend, same input sets."""
    cfg, d = s["layer"], s["layer"]["d_model"]
    mom = {k: v for k, v in cfg.items() if k != "d_model"}
    spec = archspec.loads(f"model: {{vocab_size: 256, d_model: {d}, max_seq_len: {t}, dtype: bfloat16}}\n"
                          f"components:\n  M: {json.dumps(mom)}\nlayout: M\n")
    inst = spec.sublayers[0].members[0]
    sets = rotate(lambda seed: torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed))
                  .to(device, torch.bfloat16).requires_grad_(), n_sets)
    fns, params = {}, {}
    for backend in ("triton", "reference"):
        mod = C.get("mom").build(inst.config, spec.model, backend, device).to_empty(device=device)
        mod.reset_parameters()
        mod = mod.to(torch.bfloat16)
        params["archspec"] = sum(p.numel() for p in mod.parameters())
        fns[f"archspec_{backend}"] = lambda i, m=mod: m(sets[i % n_sets]).sum().backward()
    if fla_layer is not None:
        m, k = cfg["n_memories"], cfg["topk"]
        wanted = {"hidden_size": d, "num_heads": cfg["n_heads"], "head_dim": cfg["head_dim"], "expand_v": 1,
                  "num_memories": m, "topk": k, "capacity": m / k, "shared_mem": True, "mode": "chunk",
                  "use_output_gate": True, "use_short_conv": True, "conv_size": 4}
        try:
            accepted = inspect.signature(fla_layer).parameters
            layer = fla_layer(**{n: v for n, v in wanted.items() if n in accepted}).to(device, torch.bfloat16)
            params["fla"] = sum(p.numel() for p in layer.parameters())
            fns["fla_MomAttention"] = lambda i: layer(sets[i % n_sets])[0].sum().backward()
        except Exception as exc:  # noqa: BLE001 - recorded
            params["fla_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    res = time_fns(fns, device)
    # matmul FLOPs of forward + backward (3x the forward) from the component's accounting, with
    # balanced routing (the measured routing pads its groups' last chunks a little differently)
    from archspec.components.base import FlopConvention
    flops = 3 * b * C.get("mom").flops(inst.config, spec.model, t, FlopConvention()).matmul
    for r in res.values():
        if "median_s" in r:
            r["tflops"] = flops / r["median_s"] / 1e12
    res["flops_fwd_bwd"] = {"value": flops, "convention": "3 x the accounting's forward matmul FLOPs, "
                            "balanced routing (MoM.flops)"}
    res["parameters"] = params
    res["shape"] = {"B": b, "T": t, "d_model": d, **mom, "dtype": "bfloat16"}
    res["tokens_per_s"] = {n: b * t / r["median_s"] for n, r in res.items() if isinstance(r, dict) and "median_s" in r}
    res["speedup_vs_fla"] = ratio(res, "fla_MomAttention")
    res["speedup_vs_reference"] = ratio(res, "archspec_reference")
    return res


SIZES = {
    "gpu": {"copy_bytes": 2 << 30, "matmul_n": 8192,
            "norm_rows": 16384, "norm_widths": [2048, 4096],          # B T = 8 x 2048 tokens
            "gated": [(256, 16384 * 4, True), (4096, 16384, False)],  # MoM's 4 heads of 256; hydra's Mamba2
            "la": {"h": 4, "k": 256, "c": 64}, "batches": [(8, 2048), (1, 16384)],
            "layer": {**MOM_340M, "d_model": D_MODEL}, "sets": 3},
    "smoke": {"copy_bytes": 1 << 20, "matmul_n": 64, "norm_rows": 8, "norm_widths": [48],
              "gated": [(16, 8, True)], "la": {"h": 1, "k": 16, "c": 16}, "batches": [(1, 20)],
              "layer": {"type": "mom", "n_heads": 1, "head_dim": 16, "n_memories": 4, "topk": 2,
                        "shared_memory": True, "chunk_size": 16, "d_model": 16}, "sets": 2},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fla-dir", default=str(ROOT / "benchmarks" / ".fla"))
    ap.add_argument("--quick", action="store_true", help="first (B, T) only")
    ap.add_argument("--out", help="folder for bench_kernels.json (default: results/kernels_cuda.json on a "
                                  "GPU; a temporary folder with --smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="the GPU code path on the CPU at tiny shapes (interpreter; checks the script, "
                         "measures nothing; never writes under results/)")
    ap.add_argument("--fetch-fla", action="store_true",
                    help="unpack the fla-core wheel (and einops) into --fla-dir and exit: run it on a "
                         "machine with network, then carry the folder to the GPU machine")
    args = ap.parse_args()
    if args.fetch_fla:
        fetch_fla_layers(Path(args.fla_dir))
        return 0
    cuda = torch.cuda.is_available() and not args.smoke
    data = {"benchmark": "Triton kernels: norms, gated-delta chunk kernel, MoM layer; fwd and fwd+bwd",
            **environment(), "versions": versions()}
    if not cuda and not args.smoke:
        data["mode"] = "cpu-interpreter"
        data["note"] = ("No CUDA device: the Triton kernels ran in triton's interpreter (numpy on "
                        "the CPU). This proves correctness only; it measures nothing about speed, "
                        "so no timing is recorded. Figures are relative RMS errors against the "
                        "reference (archspec/ops/linear_attention/chunk.py), fwd and every gradient.")
        data["agreement"] = correctness(args.quick)
        write("kernels_cpu", data)
        return 0
    if args.out:
        path = Path(args.out) / "bench_kernels.json"
    elif args.smoke:
        path = Path(tempfile.mkdtemp(prefix="bench_kernels_")) / "bench_kernels.json"
    else:
        path = RESULTS / "kernels_cuda.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cuda else "cpu"
    s = SIZES["gpu" if cuda else "smoke"]
    fla_fn, fla_layer, reason = load_fla(args.fla_dir)
    data.update(mode="cuda" if cuda else "smoke (cpu, interpreter: no figure means anything)",
                fla={"available": fla_fn is not None, "layer_available": fla_layer is not None,
                     "reason": reason, "dir": args.fla_dir, "version": fla_version(args.fla_dir)},
                sizes=s)
    errors = []

    def section(name, fn):
        t0 = time.perf_counter()
        try:
            data[name] = fn()
        except Exception as exc:  # noqa: BLE001 - recorded; the run goes on and exits 1
            data[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-3000:]}
            errors.append(name)
        print(f"bench_kernels: {name} done in {time.perf_counter() - t0:.1f}s", flush=True)
        if cuda:
            torch.cuda.empty_cache()
        data["errors"] = errors
        path.write_text(json.dumps(data, indent=2) + "\n")

    section("ceilings", lambda: ceilings(s, device))
    ceil = data["ceilings"] if "error" not in data["ceilings"] else {}
    batches = s["batches"][:1] if args.quick else s["batches"]
    section("la_chunk", lambda: {f"{b}x{t}": bench_la(b, t, s, device, fla_fn, ceil, s["sets"]) for b, t in batches})
    section("mom_layer", lambda: {f"{b}x{t}": bench_layer(b, t, s, device, fla_layer, s["sets"]) for b, t in batches})
    section("norms", lambda: bench_norms(s, device, ceil, s["sets"]))
    print(f"bench_kernels: wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

