"""Triton kernels of issue 6: the chunked gated-delta kernel and the whole MoM layer, forward +
backward, against named baselines measured in the same run.

    python benchmarks/bench_kernels.py [--repeats 20] [--fla-dir benchmarks/.fla] [--quick]
    python benchmarks/bench_kernels.py --fetch-fla   # first, where pip reaches PyPI

On a CUDA device (bf16, the mom-340m layer shape: d 1024, H 4, head_dim 256, 4 memories top-2
and a shared one; (B, T) = (8, 2048) and (1, 16384)):
  * kernel: archspec's `triton_chunk_rule('gated_delta')` vs fla's `chunk_gated_delta_rule`
    (when fla imports: `--fla-dir` holds an unpacked fla-core wheel, as bench_recurrent.py
    fetches it) and vs archspec's reference `chunk_rule`; forward + backward time (CUDA events,
    median of --repeats after 3 warm-ups), tokens/s, and achieved TFLOP/s = the registered
    FLOPs of the forward and backward ops / time, against the device's dense bf16 peak.
  * layer: archspec's MoM (backend triton) vs fla's MomAttention (pads every memory to its
    longest group) vs archspec's reference backend, tokens/s forward + backward.
  Targets (issue 6): the MoM layer >= 1.5x fla's tokens/s, the kernel >= parity.
Without CUDA the kernels run only in triton's interpreter, which proves correctness and says
nothing about speed: the script then records the kernels' agreement with the reference at small
shapes (relative RMS errors, forward and every gradient) and no timing, and says so in the JSON.

Writes benchmarks/results/kernels_<cuda|cpu>.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, write  # noqa: E402

sys.path.insert(0, str(ROOT))
import archspec  # noqa: E402
from archspec import components as C  # noqa: E402
from archspec.ops.linear_attention import chunk_rule  # noqa: E402
from archspec.ops.linear_attention.fused_chunk import KERNEL_RULES, triton_chunk_rule  # noqa: E402
from archspec.ops.triton_support import FLOP_FORMULAS, install_flop_formulas  # noqa: E402

SHAPES = [(8, 2048), (1, 16384)]
MOM_340M = {"type": "mom", "n_heads": 4, "head_dim": 256, "n_memories": 4, "topk": 2,
            "shared_memory": True, "chunk_size": 64}
D_MODEL = 1024
# dense bf16 tensor-core peak (no sparsity), from NVIDIA's data sheets
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or None
    except OSError:
        return None


def versions() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    out["triton_interpret"] = os.environ.get("TRITON_INTERPRET")
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_capability"] = list(torch.cuda.get_device_capability())
    return out


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


# --- CUDA: timings -------------------------------------------------------------------------------

def device_time(fn, repeats: int, device: str) -> dict:
    """Median of `repeats` runs after 3 warm-ups: CUDA events on a GPU, wall clock otherwise
    (--smoke only: the interpreter's times mean nothing)."""
    cuda = device == "cuda"
    for _ in range(3 if cuda else 1):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if not cuda:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats}


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


def fetch_fla_layers(side: Path) -> None:
    """fla-core (ops, modules) and einops as bench_recurrent.py fetches them, plus the
    flash-linear-attention wheel (fla/layers, fla/models), unpacked into `side`."""
    import tempfile
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


def peak_flops(device: str) -> tuple[float | None, str]:
    if device != "cuda":
        return None, "no peak: not a GPU"
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak, f"{key} dense bf16 tensor-core peak (data sheet)"
    return None, f"no peak known for {name}"


def bench_kernel(b, t, repeats, fla_fn, layer_cfg, device) -> dict:
    h, k = layer_cfg["n_heads"], layer_cfg["head_dim"]
    c = layer_cfg["chunk_size"]
    x = rule_inputs("gated_delta", b, t, h, k, k, torch.bfloat16, device)
    do = torch.randn(b, t, h, k, device=device, dtype=torch.bfloat16)
    fns = {"archspec_triton": lambda: fwd_bwd(triton_chunk_rule, "gated_delta", x, do),
           "archspec_reference": lambda: fwd_bwd(chunk_rule, "gated_delta", x, do)}
    if fla_fn is not None:
        def fla_run():
            o, _ = fla_fn(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=k ** -0.5)
            return torch.autograd.grad(o, [x[n] for n in ("q", "k", "v", "g", "beta")], do)
        fns["fla_chunk_gated_delta_rule"] = fla_run
    out = {}
    for name, fn in fns.items():
        try:
            out[name] = device_time(fn, repeats, device)
        except Exception as exc:  # noqa: BLE001 - recorded (fla has no CPU path)
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    install_flop_formulas()
    flops = 3 * FLOP_FORMULAS["archspec::la_chunk_fwd"](
        (b * t, h, k), (b * t, h, k), (b * t, h, k), None, None, None, None, None, None,
        "gated_delta", k ** -0.5, c, b * -(-t // c), False)
    peak, peak_note = peak_flops(device)
    for r in out.values():
        if "median_s" in r:
            r["tokens_per_s"] = b * t / r["median_s"]
            r["tflops"] = flops / r["median_s"] / 1e12
            r["fraction_of_peak"] = None if peak is None else flops / r["median_s"] / peak
    out["flops_fwd_bwd"] = {"value": flops, "convention": "registered forward FLOPs x 3 (backward = 2x forward)"}
    out["peak"] = peak_note
    if "median_s" in out.get("fla_chunk_gated_delta_rule", {}):
        out["ratio_vs_fla"] = out["fla_chunk_gated_delta_rule"]["median_s"] / out["archspec_triton"]["median_s"]
    return out


def bench_layer(b, t, repeats, fla_layer, layer_cfg, d_model, device) -> dict:
    spec = archspec.loads(f"model: {{vocab_size: 256, d_model: {d_model}, max_seq_len: {t}, dtype: bfloat16}}\n"
                          f"components:\n  M: {layer_cfg}\nlayout: M\n".replace("'", '"').replace("True", "true"))
    inst = spec.sublayers[0].members[0]
    x = torch.randn(b, t, d_model, device=device, dtype=torch.bfloat16, requires_grad=True)
    out = {"parameters": {}}
    for backend in ("triton", "reference"):
        mod = C.get("mom").build(inst.config, spec.model, backend, device).to_empty(device=device)
        mod.reset_parameters()
        mod = mod.to(torch.bfloat16)
        out["parameters"]["archspec"] = sum(p.numel() for p in mod.parameters())
        out[f"archspec_{backend}"] = device_time(lambda m=mod: m(x).sum().backward(), repeats, device)
    if fla_layer is not None:
        # capacity M / k: each memory may take all T tokens, i.e. dropless like ours
        m, k = layer_cfg["n_memories"], layer_cfg["topk"]
        wanted = {"hidden_size": d_model, "num_heads": layer_cfg["n_heads"], "head_dim": layer_cfg["head_dim"],
                  "expand_v": 1, "num_memories": m, "topk": k, "capacity": m / k, "shared_mem": True,
                  "mode": "chunk", "use_output_gate": True, "use_short_conv": True, "conv_size": 4}
        params = inspect.signature(fla_layer).parameters
        try:
            layer = fla_layer(**{n: v for n, v in wanted.items() if n in params}).to(device, torch.bfloat16)
            out["parameters"]["fla"] = sum(p.numel() for p in layer.parameters())
            out["fla_MomAttention"] = device_time(lambda: layer(x)[0].sum().backward(), repeats, device)
        except Exception as exc:  # noqa: BLE001 - recorded
            out["fla_MomAttention"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    for r in out.values():
        if "median_s" in r:
            r["tokens_per_s"] = b * t / r["median_s"]
    if "median_s" in out.get("fla_MomAttention", {}):
        out["ratio_vs_fla"] = out["fla_MomAttention"]["median_s"] / out["archspec_triton"]["median_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--fla-dir", default=str(ROOT / "benchmarks" / ".fla"))
    ap.add_argument("--quick", action="store_true", help="first shape only")
    ap.add_argument("--smoke", action="store_true",
                    help="run the GPU code path on the CPU at tiny shapes (interpreter; checks the "
                         "script, measures nothing; writes nothing under results/)")
    ap.add_argument("--fetch-fla", action="store_true",
                    help="unpack the fla-core wheel (and einops) into --fla-dir and exit: run it on a "
                         "machine with network, then carry the folder to the GPU machine")
    args = ap.parse_args()
    if args.fetch_fla:
        fetch_fla_layers(Path(args.fla_dir))
        return
    data = {"benchmark": "Triton kernels (issue 6): gated-delta chunk kernel and MoM layer, fwd+bwd",
            **environment(), "versions": versions(), "git": {"commit": git_commit()}}
    if args.smoke:
        small = {"type": "mom", "n_heads": 2, "head_dim": 16, "n_memories": 4, "topk": 2,
                 "shared_memory": True, "chunk_size": 16}
        fla_fn, fla_layer, reason = load_fla(args.fla_dir)
        data.update(mode="smoke (cpu, interpreter: no figure means anything)", fla={"reason": reason},
                    kernel=bench_kernel(1, 40, 1, fla_fn, small, "cpu"),
                    layer=bench_layer(1, 40, 1, fla_layer, small, 32, "cpu"))
        print(json.dumps(data, indent=2))
        return
    if not torch.cuda.is_available():
        data["mode"] = "cpu-interpreter"
        data["note"] = ("No CUDA device: the Triton kernels ran in triton's interpreter (numpy on "
                        "the CPU). This proves correctness only; it measures nothing about speed, "
                        "so no timing is recorded. Figures are relative RMS errors against the "
                        "reference (archspec/ops/linear_attention/chunk.py), fwd and every gradient.")
        data["agreement"] = correctness(args.quick)
        write("kernels_cpu", data)
        return
    fla_fn, fla_layer, reason = load_fla(args.fla_dir)
    data["mode"] = "cuda"
    data["fla"] = {"available": fla_fn is not None, "reason": reason}
    data["shapes"] = {"layer": MOM_340M, "d_model": D_MODEL, "dtype": "bfloat16",
                      "batches": SHAPES[:1] if args.quick else SHAPES}
    data["kernel"], data["layer"] = {}, {}
    for b, t in data["shapes"]["batches"]:
        data["kernel"][f"{b}x{t}"] = bench_kernel(b, t, args.repeats, fla_fn, MOM_340M, "cuda")
        data["layer"][f"{b}x{t}"] = bench_layer(b, t, args.repeats, fla_layer, MOM_340M, D_MODEL, "cuda")
    write("kernels_cuda", data)


if __name__ == "__main__":
    main()
