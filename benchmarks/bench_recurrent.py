"""CPU forward+backward tokens/s of each fast (training) path against its recurrent form.

    /work/venv/bin/python benchmarks/bench_recurrent.py [--seq-len 2048] [--repeats 5]
        [--recurrent-repeats 2] [--mom-recurrent-seq-len 512] [--fla-dir DIR] [--no-fla]

Writes benchmarks/results/recurrent_cpu.json. One torch thread (torch.set_num_threads(1): with
2 threads, timings on the 2-core development machine are erratic). float32, batch 1.

Cases (fast path vs recurrent form, both forward + backward at the same T):
  * mamba layer, specs/mamba-130m.yaml (d_model 768, E 1536, N 16): selective_scan (chunked
    parallel scan) vs selective_scan_recurrent, swapped into the layer's forward;
  * mamba2 layer, d_model 768 with the component's defaults (E 1536, 24 heads x 64, N 128,
    1 group, chunk 256): ssd_chunked vs ssd_recurrent, swapped the same way;
  * MoM layer, specs/mom-340m.yaml's `mom` (d 1024, gated_delta, 4 heads x 256, 4 memories
    top-2 + shared) with module.form = "fast" | "recurrent". The recurrent form's backward
    keeps ~3 copies of a 1 MiB state per packed row (3T rows), about 20 GB at T = 2048: it runs
    forward+backward at --mom-recurrent-seq-len (and the chunk form there too, for a same-T
    ratio), and forward only (no_grad) at T for both forms;
  * linear-attention ops alone, each rule at H 4, K = V = 256: chunk_rule vs recurrent_rule.
Baseline: fla-core's plain PyTorch `naive_chunk_gated_delta_rule` (fla/ops/gated_delta_rule/
naive.py) on the gated_delta op's inputs, imported by file path from a side directory (never
installed into the project's environment); fetched there with `pip download fla-core --no-deps`
and `pip install --target DIR --no-deps einops` when missing.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, summary, write  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(ROOT))
import archspec  # noqa: E402
import archspec.components.mamba.module as mamba_mod  # noqa: E402

FORMS = {"chunk": "fast", "recurrent": "reference"}  # this benchmark's names -> MoM's forms
import archspec.components.mamba2.module as mamba2_mod  # noqa: E402
from archspec import components as C  # noqa: E402
from archspec.ops import linear_attention as LA  # noqa: E402
from archspec.ops.ssm import selective_scan_recurrent, ssd_recurrent  # noqa: E402

H, K = 4, 256  # mom-340m head shape (K = V)
WARMUP_SEQ_LEN = 128  # the recurrent forms warm up on a short sequence (their cost is per token)
FLA_NAIVE = Path("fla") / "ops" / "gated_delta_rule" / "naive.py"


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (b the reference), in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max()).item()


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fwd_bwd(forward, leaves: list[torch.Tensor], grad: torch.Tensor):
    """A callable running forward + backward (gradient `grad` on the output), returning the
    detached output. Gradients of the leaves are reset (to None) before each run."""
    def step():
        for t in leaves:
            t.grad = None
        out = forward()
        out.backward(grad)
        return out.detach()
    return step


def timed(fn, repeats: int) -> tuple[dict, object]:
    """Run fn `repeats` times: wall-clock and process CPU seconds of each, and the last result.
    With one torch thread the CPU time is the work done; the wall-clock time adds the waits
    for a core when other processes compete for the machine's 2 cores."""
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu}, result


def rate(times: dict, tokens: int) -> dict:
    s = summary(times["wall"])
    c = summary(times["cpu"])
    return {"seq_len": tokens, **s, "tokens_per_s": tokens / s["median_s"],
            "cpu_s": {"median_s": c["median_s"], "all_s": c["all_s"]},
            "tokens_per_cpu_s": tokens / c["median_s"]}


@contextlib.contextmanager
def recurrent_ssm():
    """Swap the recurrent loops into the Mamba / Mamba2 layers' forward (module globals)."""
    scan, ssd = mamba_mod.selective_scan, mamba2_mod.ssd_chunked

    def ssd_loop(x, dt, A, B, C_, chunk_size, D=None, initial_state=None):
        return ssd_recurrent(x, dt, A, B, C_, D, initial_state)

    mamba_mod.selective_scan, mamba2_mod.ssd_chunked = selective_scan_recurrent, ssd_loop
    try:
        yield
    finally:
        mamba_mod.selective_scan, mamba2_mod.ssd_chunked = scan, ssd


def build_layer(spec, name: str):
    inst = next(m for sub in spec.sublayers for m in sub.members if m.name == name)
    torch.manual_seed(0)
    module = C.get(inst.type).build(inst.config, spec.model)
    module.reset_parameters()
    return module.float(), inst


def layer_step(module, t: int, d: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, t, d, generator=g).requires_grad_()
    grad = torch.randn(1, t, d, generator=g)
    return fwd_bwd(lambda: module(x), [x, *module.parameters()], grad), x


def time_pair(fast_step, slow_step, slow_warmup, t: int, repeats: int, slow_repeats: int) -> dict:
    """Fast path: one warm-up at T then `repeats`; recurrent: warm-up `slow_warmup` (short T)
    then `slow_repeats` at T. Tokens/s of each and the ratio fast / recurrent."""
    fast_step()
    fast_times, fast_out = timed(fast_step, repeats)
    load_mid = load_now()
    slow_warmup()
    slow_times, slow_out = timed(slow_step, slow_repeats)
    fast, slow = rate(fast_times, t), rate(slow_times, t)
    return {"fast": fast, "recurrent": slow,
            "ratio": fast["tokens_per_s"] / slow["tokens_per_s"],
            "ratio_cpu_time": fast["tokens_per_cpu_s"] / slow["tokens_per_cpu_s"],
            "output_max_rel_diff": rel_diff(fast_out, slow_out),
            "load_average_during": load_mid}


def bench_ssm_layer(kind: str, spec, t: int, args) -> dict:
    module, inst = build_layer(spec, "M")
    d = spec.model.d_model
    fast_step, _ = layer_step(module, t, d)
    slow_step, _ = layer_step(module, t, d)
    warm_step, _ = layer_step(module, WARMUP_SEQ_LEN, d)

    def slow():
        with recurrent_ssm():
            return slow_step()

    def warm():
        with recurrent_ssm():
            return warm_step()

    print(f"[{kind}] timing", flush=True)
    result = time_pair(fast_step, slow, warm, t, args.repeats, args.recurrent_repeats)
    cfg = {k: v for k, v in inst.config.items() if not isinstance(v, (dict, list)) or k == "dt_limit"}
    fast_name = "selective_scan (chunked parallel scan)" if kind == "mamba" else "ssd_chunked"
    slow_name = "selective_scan_recurrent" if kind == "mamba" else "ssd_recurrent"
    return {"layer": kind, "d_model": d, "config": cfg,
            "parameters": sum(p.numel() for p in module.parameters()),
            "fast_form": f"layer forward with {fast_name}",
            "recurrent_form": f"the same forward with {slow_name} (a Python loop over tokens)",
            **result}


def bench_mom(spec, t: int, args) -> dict:
    module, inst = build_layer(spec, "mom")
    d = spec.model.d_model
    t_slow = min(args.mom_recurrent_seq_len, t)
    out = {"layer": "mom", "d_model": d,
           "config": {k: inst.config[k] for k in ("rule", "n_heads", "head_dim", "head_v_dim",
                                                  "n_memories", "topk", "shared_memory",
                                                  "capacity_factor", "chunk_size", "d_conv")},
           "parameters": sum(p.numel() for p in module.parameters()),
           "fast_form": 'module.form = "fast" (chunk_rule over the packed memories)',
           "recurrent_form": 'module.form = "recurrent" (recurrent_rule: a token loop per '
                             "(memory, sequence) group, 3T packed rows in all)"}

    def with_form(step, form):
        def run():
            module.form = FORMS[form]
            try:
                return step()
            finally:
                module.form = "fast"
        return run

    print("[mom] forward+backward, chunk at T", flush=True)
    chunk_step, _ = layer_step(module, t, d)
    with_form(chunk_step, "chunk")()
    chunk_times, _ = timed(with_form(chunk_step, "chunk"), args.repeats)
    del chunk_step
    print(f"[mom] forward+backward at T = {t_slow}, both forms", flush=True)
    short_fast, _ = layer_step(module, t_slow, d)
    short_slow, _ = layer_step(module, t_slow, d)
    warm, _ = layer_step(module, WARMUP_SEQ_LEN, d)
    same_t = time_pair(with_form(short_fast, "chunk"), with_form(short_slow, "recurrent"),
                       with_form(warm, "recurrent"), t_slow, args.repeats, args.recurrent_repeats)
    del short_fast, short_slow, warm
    gc.collect()
    chunk = rate(chunk_times, t)
    out["fwd_bwd"] = {
        "chunk_at_T": chunk,
        f"at_T_{t_slow}": same_t,
        "ratio_chunk_at_T_over_recurrent_at_short_T": chunk["tokens_per_s"]
        / same_t["recurrent"]["tokens_per_s"],
        "ratio_cpu_time_chunk_at_T_over_recurrent_at_short_T": chunk["tokens_per_cpu_s"]
        / same_t["recurrent"]["tokens_per_cpu_s"],
        "why_short_T": f"the recurrent form's autograd graph keeps ~3 copies of the 1 MiB "
                       f"[{H}, {K}, {K}] float32 state per packed row (3T rows: 2 routed + 1 "
                       "shared per token): ~3.4 MB per row measured at T = 256, ~21 GB at "
                       "T = 2048, more than this 23 GB machine can spare; its cost per token "
                       "does not depend on T (one identical step per row)",
    }

    print("[mom] forward only (no_grad) at T, both forms", flush=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, t, d, generator=g)
    x_warm = torch.randn(1, WARMUP_SEQ_LEN, d, generator=g)

    def fwd(form, inp):
        def run():
            module.form = FORMS[form]
            try:
                with torch.no_grad():
                    return module(inp)
            finally:
                module.form = "fast"
        return run

    fwd("chunk", x)()
    fwd("recurrent", x_warm)()
    fast_times, fast_out = timed(fwd("chunk", x), args.repeats)
    slow_times, slow_out = timed(fwd("recurrent", x), args.recurrent_repeats)
    fast, slow = rate(fast_times, t), rate(slow_times, t)
    out["forward_only"] = {"chunk": fast, "recurrent": slow,
                           "ratio": fast["tokens_per_s"] / slow["tokens_per_s"],
                           "ratio_cpu_time": fast["tokens_per_cpu_s"] / slow["tokens_per_cpu_s"],
                           "output_max_rel_diff": rel_diff(fast_out, slow_out),
                           "load_average_during": load_now()}
    return out


def op_inputs(rule: str, t: int, seed: int = 3) -> dict:
    """q, k l2-normalised per head (as MoM / GatedDeltaNet feed them); v ~ N(0, 1);
    beta = sigmoid(N(0, 1)); gated_delta g = -A dt with A ~ U(1, 16) per head and dt
    log-uniform in [1e-3, 1e-1] (MoM's initial range: g in about [-1.6, 0] per token);
    gla g = logsigmoid(N(0, 1)) / 16 (MoM's GLA gate). All leaves of the autograd graph."""
    gen = torch.Generator().manual_seed(seed)
    n = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    q = F.normalize(n(1, t, H, K), dim=-1).requires_grad_()
    k = F.normalize(n(1, t, H, K), dim=-1).requires_grad_()
    v = n(1, t, H, K).requires_grad_()
    g = beta = None
    if rule == "gated_delta":
        a = 1 + 15 * torch.rand(H, generator=gen)
        dt = torch.exp(math.log(1e-3) + torch.rand(1, t, H, generator=gen) * math.log(100))
        g = (-a * dt).requires_grad_()
    elif rule == "gla":
        g = (F.logsigmoid(n(1, t, H, K)) / 16).requires_grad_()
    if rule in ("gated_delta", "delta"):
        beta = torch.sigmoid(n(1, t, H)).requires_grad_()
    return {"q": q, "k": k, "v": v, "g": g, "beta": beta, "grad": n(1, t, H, K)}


def op_step(fn, rule: str, inp: dict):
    leaves = [x for x in (inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"]) if x is not None]
    return fwd_bwd(lambda: fn(rule, inp["q"], inp["k"], inp["v"], g=inp["g"], beta=inp["beta"])[0],
                   leaves, inp["grad"])


def bench_op(rule: str, t: int, args) -> dict:
    print(f"[op {rule}] timing", flush=True)
    inp = op_inputs(rule, t)
    warm = op_inputs(rule, WARMUP_SEQ_LEN)
    res = time_pair(op_step(LA.chunk_rule, rule, inp), op_step(LA.recurrent_rule, rule, inp),
                    op_step(LA.recurrent_rule, rule, warm), t, args.repeats, args.recurrent_repeats)
    gc.collect()
    return {"rule": rule, "heads": H, "k_dim": K, "v_dim": K, "chunk_size": 64,
            "fast_form": "chunk_rule (chunk_size 64)", "recurrent_form": "recurrent_rule", **res}


# --- fla-core's naive chunk gated delta rule ---------------------------------------------------

def _pip(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *argv], check=True, capture_output=True, text=True)


def fetch_fla(side: Path) -> list[str]:
    """Make sure `side` holds fla (unpacked wheel, no dependencies) and einops. Returns what was
    done. Nothing is installed into the running environment."""
    done = []
    if not (side / FLA_NAIVE).exists():
        side.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            _pip("download", "fla-core", "--no-deps", "--only-binary", ":all:", "-d", tmp)
            wheels = list(Path(tmp).glob("fla_core-*.whl"))
            if not wheels:
                raise RuntimeError("pip download fla-core gave no wheel")
            zipfile.ZipFile(wheels[0]).extractall(side)
            done.append(f"unpacked {wheels[0].name} into {side}")
    if not list(side.glob("einops-*.dist-info")) and importlib.util.find_spec("einops") is None:
        _pip("install", "--target", str(side), "--no-deps", "einops")
        done.append(f"pip install --target {side} --no-deps einops")
    return done


def dist_version(side: Path, name: str) -> str | None:
    for info in side.glob(f"{name}-*.dist-info"):
        return info.name[len(name) + 1:-len(".dist-info")]
    return None


def load_fla_naive(side: Path):
    """Import fla/ops/gated_delta_rule/naive.py by file path (not the fla package, whose
    __init__ needs triton); `side` goes on sys.path only for its einops import."""
    if str(side) not in sys.path:
        sys.path.append(str(side))
    spec = importlib.util.spec_from_file_location("fla_naive_gated_delta_rule", side / FLA_NAIVE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.naive_chunk_gated_delta_rule


def bench_fla(t: int, args, archspec_chunk: dict) -> dict:
    side = Path(args.fla_dir).resolve()
    out = {"package": "fla-core", "function": "fla.ops.gated_delta_rule.naive."
           "naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64)", "side_dir": str(side)}
    try:
        out["setup"] = fetch_fla(side)
        naive = load_fla_naive(side)
        out["fla_core_version"] = dist_version(side, "fla_core")
        out["einops_version"] = dist_version(side, "einops")
    except Exception as exc:  # noqa: BLE001 - recorded, the rest of the benchmark stands
        out.update(available=False, reason=f"{type(exc).__name__}: {exc}"[:2000])
        return out
    out["available"] = True
    out["conventions"] = ("same as archspec's: inputs [B, T, H, K], g the per-token log decay "
                          "[B, T, H], beta [B, T, H], scale K^-0.5 applied to q, q and k used "
                          "as given (l2-normalised before the call, outside the timed region); "
                          "it computes in float32 and returns o as a [B, T, H, V] view")
    print("[fla naive chunk gated_delta] timing", flush=True)
    inp = op_inputs("gated_delta", t)
    fla_fn = lambda rule, q, k, v, g, beta: naive(q, k, v, g, beta, chunk_size=64)  # noqa: E731
    ours_fn = lambda rule, q, k, v, g, beta: LA.chunk_rule(rule, q, k, v, g=g, beta=beta)  # noqa: E731
    fla_step = op_step(fla_fn, "gated_delta", inp)
    fla_step()
    times, fla_out = timed(fla_step, args.repeats)
    fla = rate(times, t)
    out["fla_naive_chunk"] = fla
    out["archspec_chunk_rule"] = {"tokens_per_s": archspec_chunk["tokens_per_s"],
                                  "median_s": archspec_chunk["median_s"],
                                  "tokens_per_cpu_s": archspec_chunk["tokens_per_cpu_s"],
                                  "from": "ops.gated_delta.fast (same inputs, same run)"}
    def forward_only(fn):
        def run():
            with torch.no_grad():
                return fn("gated_delta", inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"])[0]
        return run

    fwd = {}
    for name, fn in (("fla_naive_chunk", fla_fn), ("archspec_chunk_rule", ours_fn)):
        forward_only(fn)()
        fwd[name] = rate(timed(forward_only(fn), args.repeats)[0], t)
    fwd["ratio"] = fwd["archspec_chunk_rule"]["tokens_per_s"] / fwd["fla_naive_chunk"]["tokens_per_s"]
    fwd["ratio_cpu_time"] = (fwd["archspec_chunk_rule"]["tokens_per_cpu_s"]
                             / fwd["fla_naive_chunk"]["tokens_per_cpu_s"])
    out["forward_only"] = fwd
    out["ratio"] = {"value": archspec_chunk["tokens_per_s"] / fla["tokens_per_s"],
                    "cpu_time": archspec_chunk["tokens_per_cpu_s"] / fla["tokens_per_cpu_s"],
                    "definition": "archspec chunk_rule tokens/s / fla naive_chunk_gated_delta_rule "
                                  "tokens/s, forward+backward"}
    # agreement: outputs and every input gradient, one untimed pass of each
    leaves = ("q", "k", "v", "g", "beta")
    grads = {}
    for name, fn in (("fla", fla_fn), ("archspec", ours_fn)):
        o = op_step(fn, "gated_delta", inp)()
        grads[name] = (o, [inp[x].grad.clone() for x in leaves])
    (o_fla, g_fla), (o_ours, g_ours) = grads["fla"], grads["archspec"]
    with torch.no_grad():
        ref = LA.recurrent_rule("gated_delta", *(inp[x].double() for x in ("q", "k", "v")),
                                g=inp["g"].double(), beta=inp["beta"].double())[0]
    out["agreement"] = {
        "definition": "max |a - b| / max |b|",
        "output_archspec_vs_fla": rel_diff(o_ours, o_fla),
        "grads_archspec_vs_fla": {x: rel_diff(a, b) for x, a, b in zip(leaves, g_ours, g_fla)},
        "output_archspec_vs_float64_recurrent": rel_diff(o_ours, ref),
        "output_fla_vs_float64_recurrent": rel_diff(o_fla, ref),
    }
    return out


def git_state() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return None
    used = ["archspec/components/mamba.py", "archspec/components/mamba2.py",
            "archspec/components/mom.py", "archspec/ops/linear_attention", "archspec/ops/ssm"]
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_changes_in_benchmarked_code": git("status", "--porcelain", "--", *used),
            "benchmarked_code": used}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3, help="fast paths (after one warm-up)")
    ap.add_argument("--recurrent-repeats", type=int, default=2,
                    help="recurrent forms (after a warm-up at T = %d)" % WARMUP_SEQ_LEN)
    ap.add_argument("--mom-recurrent-seq-len", type=int, default=512)
    ap.add_argument("--fla-dir", default=str(ROOT.parent / "archspec-bench-fla"),
                    help="side directory for fla-core and einops (outside the repository)")
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--only", nargs="*", default=None,
                    help="subset of: mamba mamba2 mom ops fla (default all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    only = set(args.only or ["mamba", "mamba2", "mom", "ops", "fla"])
    t = args.seq_len
    env = environment()
    started = time.perf_counter()
    layers, ops = {}, {}
    if "mamba" in only:
        layers["mamba"] = bench_ssm_layer("mamba", archspec.load(ROOT / "specs" / "mamba-130m.yaml"), t, args)
    if "mamba2" in only:
        spec = archspec.loads("model: {vocab_size: 256, d_model: 768, max_seq_len: %d}\n"
                              "components:\n  M: {type: mamba2}\nlayout: M\n" % t)
        layers["mamba2"] = bench_ssm_layer("mamba2", spec, t, args)
    if "mom" in only:
        layers["mom"] = bench_mom(archspec.load(ROOT / "specs" / "mom-340m.yaml"), t, args)
    if "ops" in only or "fla" in only:
        for rule in (LA.RULES if "ops" in only else ("gated_delta",)):
            ops[rule] = bench_op(rule, t, args)
    t_mom = min(args.mom_recurrent_seq_len, t)
    fla = None
    if "fla" in only and not args.no_fla:
        fla = bench_fla(t, args, ops["gated_delta"]["fast"])
    write("recurrent_cpu", {
        "benchmark": "forward+backward tokens/s, fast (training) path vs recurrent form",
        **env,
        "load_average_1_5_15min_at_end": list(os.getloadavg()),
        "git": git_state(),
        "shapes": {"batch": 1, "seq_len": t, "dtype": "float32",
                   "mom_recurrent_fwd_bwd_seq_len": min(args.mom_recurrent_seq_len, t),
                   "op_heads": H, "op_k_dim": K, "op_v_dim": K},
        "repeats": {"fast": args.repeats, "recurrent": args.recurrent_repeats,
                    "warmup": f"one full run of each fast path; each recurrent form one run at "
                              f"T = {WARMUP_SEQ_LEN}"},
        "layers": layers,
        "ops": ops,
        "fla_baseline": fla if fla is not None else {"available": False, "reason": "not run (--no-fla or --only)"},
        "ratio": {"definition": "fast tokens/s / recurrent tokens/s (forward+backward, same T); "
                                "> 1: the fast path is faster",
                  "baseline": "the recurrent form of the same layer / op, measured in the same run",
                  **{(f"layer.{k}" if "ratio" in v else f"layer.{k} (at T = {t_mom})"):
                     (v["ratio"] if "ratio" in v else v["fwd_bwd"][f"at_T_{t_mom}"]["ratio"])
                     for k, v in layers.items()},
                  **{f"op.{k}": v["ratio"] for k, v in ops.items()}},
        "total_wall_s": time.perf_counter() - started,
        "notes": "torch.set_num_threads(1). Tokens/s = B T / median wall-clock time of forward + "
                 "backward (gradient of a fixed random cotangent on the output; input and "
                 "parameter gradients reset to None before each run); tokens_per_cpu_s and "
                 "ratio_cpu_time use the median process CPU time instead, less sensitive to "
                 "other processes competing for the 2 cores (see the load averages). "
                 "output_max_rel_diff: max |fast - recurrent| / max |recurrent| of the last "
                 "timed outputs.",
    })


if __name__ == "__main__":
    main()
