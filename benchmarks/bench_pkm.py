"""CPU time and peak memory of the product-key lookup against scoring every memory slot.

    /work/venv/bin/python benchmarks/bench_pkm.py [--seq-len 2048] [--repeats 5]
        [--dense-repeats 2] [--chunk 128] [--flat-seq-len 128]

Writes benchmarks/results/pkm_cpu.json. One torch thread, float32, one sequence of T tokens.
Shapes (XLM's PKM defaults): n_keys 512 (262,144 slots), 4 heads, k_dim 256, knn 32; values
v_dim 256. Inputs: queries q [T, 4, 256] ~ N(0, 1) (as after XLM's query batchnorm), sub-keys
U(+-1/sqrt(128)), values N(0, 1/sqrt(256)); all fixed by seeds.

Methods, each from (q, sub-keys, value table) to the memory read m [T, v] = sum over heads and
the knn best slots of softmax(score) * value (forward), and from dm back to dq, dkeys, dvalues
(forward + backward):
  * product: archspec.ops.pkm.product_topk (2 x 512 sub-key scores per head, top-32 of each,
    32^2 candidate sums, top-32) + softmax + read_values (F.embedding_bag): what pkm runs.
  * all_slots (baseline): full_topk, every one of the 262,144 slots scored as s1_i + s2_j and
    the top 32 taken, + the same softmax and read; in chunks of --chunk tokens (scoring all
    2048 tokens at once would hold a [4, 2048, 262144] float32 score tensor, 8 GiB).
  * flat (forward only, at --flat-seq-len tokens, in chunks of 32): a memory without product
    keys: q against the 262,144 materialised product keys [k1_i ; k2_j] (a [4, 262144, 256]
    table, 1 GiB, built once outside the timing) by matmul, top 32, same softmax and read.
  * product.fwd_bwd_frozen_values: the product method's forward + backward with the value table
    frozen: the lookup's own backward, without zero-filling the table's dense gradient
    ([262144, 256] float32, 256 MiB), which both methods pay in fwd_bwd and which dominates the
    product method's time there.
ratio.* = baseline median / product median (per token for flat). Agreement: product and
all_slots select the same slots and their outputs' largest difference is recorded.

Each (method, pass) runs in a fresh child process: a warm-up run, the timed runs (median), then
one more run for peak memory: glibc's mmap threshold set to 64 KiB (mallopt; large buffers come
from mmap and go back on free), free heap pages returned (malloc_trim), the kernel's peak-RSS
mark reset (/proc/self/clear_refs); peak_extra_bytes is the peak RSS during that run minus the
RSS before it: what the method allocates beyond its inputs (the table's gradient included).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, summary, timed, write  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(ROOT))
from archspec.ops import pkm as PK  # noqa: E402

H, K, N_KEYS, KNN, V = 4, 256, 512, 32, 256
FLAT_CHUNK = 32
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def inputs(seq_len: int, grad: bool):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(seq_len, H, K, generator=g)
    bound = (K // 2) ** -0.5
    keys = (torch.rand(H, 2, N_KEYS, K // 2, generator=g) * 2 - 1) * bound
    table = torch.randn(N_KEYS * N_KEYS, V, generator=g) * V ** -0.5
    dm = torch.randn(seq_len, V, generator=g)
    for t in (q, keys, table):
        t.requires_grad_(grad)
    return q, keys, table, dm


def read(scores, slots, table):
    n = scores.shape[0]
    w = torch.softmax(scores, dim=-1)
    return PK.read_values(slots.reshape(n, -1), w.reshape(n, -1), table)


def product(q, keys, table, chunk):
    return read(*PK.product_topk(q, keys, KNN), table)


def all_slots(q, keys, table, chunk):
    return torch.cat([read(*PK.full_topk(q[i:i + chunk], keys, KNN), table)
                      for i in range(0, q.shape[0], chunk)])


def flat(q, flat_keys, table, chunk):
    out = []
    for i in range(0, q.shape[0], chunk):
        scores = torch.matmul(q[i:i + chunk].transpose(0, 1), flat_keys.transpose(-1, -2))  # [H, c, n^2]
        best, slots = scores.topk(KNN, dim=-1)
        out.append(read(best.permute(1, 0, 2), slots.permute(1, 0, 2), table))
    return torch.cat(out)


def materialised_keys(keys):
    """The [H, n^2, K] key table of a flat memory with the same scores (slot i n + j)."""
    with torch.no_grad():
        return torch.cat(
            [keys[:, 0, :, None, :].expand(H, N_KEYS, N_KEYS, K // 2),
             keys[:, 1, None, :, :].expand(H, N_KEYS, N_KEYS, K // 2)], dim=-1).reshape(H, -1, K)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def child(method: str, passes: str, seq_len: int, chunk: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backward = passes in ("fwd_bwd", "fwd_bwd_frozen_values")
    q, keys, table, dm = inputs(seq_len, backward)
    if passes == "fwd_bwd_frozen_values":  # the lookup's own backward, without the table's gradient
        table.requires_grad_(False)
    fn = {"product": product, "all_slots": all_slots, "flat": flat}[method]
    second = keys
    if method == "flat":
        second = materialised_keys(keys)

    def clear():
        for t in (q, keys, table):
            t.grad = None

    def run():
        if backward:
            clear()
            out = fn(q, second, table, chunk)
            out.backward(dm)
            return out.detach()
        with torch.no_grad():
            return fn(q, second, table, chunk)

    run()  # warm-up
    times, _ = timed(run, repeats)  # glibc's default allocator settings
    # peak memory of one more run: large buffers from mmap, returned on free; free heap pages
    # given back, the run's own gradients dropped; then the peak-RSS mark is reset
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    clear()
    gc.collect()
    libc.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib("VmRSS")
    run()
    peak_extra = (rss_kib("VmHWM") - before) * 1024
    return {"timing": summary(times), "peak_extra_bytes": peak_extra,
            "rss_before_bytes": before * 1024}


def spawn(method: str, passes: str, seq_len: int, chunk: int, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", method, passes, str(seq_len), str(chunk), str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{method:9s} {passes:7s} T={seq_len}: median {result['timing']['median_s']:.3f} s, "
          f"peak +{result['peak_extra_bytes'] / 2**20:.0f} MiB", file=sys.stderr)
    return result


def agreement(seq_len: int, chunk: int) -> dict:
    torch.set_num_threads(1)
    q, keys, table, _ = inputs(seq_len, False)
    with torch.no_grad():
        fast_s, fast_i = PK.product_topk(q, keys, KNN)
        full = [PK.full_topk(q[i:i + chunk], keys, KNN) for i in range(0, seq_len, chunk)]
        full_s, full_i = torch.cat([s for s, _ in full]), torch.cat([i for _, i in full])
        a, b = product(q, keys, table, chunk), all_slots(q, keys, table, chunk)
    return {"same_slots": bool(torch.equal(fast_i, full_i)),
            "same_scores": bool(torch.equal(fast_s, full_s)),
            "max_abs_output_diff": (a - b).abs().max().item(),
            "max_abs_output": b.abs().max().item()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, passes, seq_len, chunk, repeats = sys.argv[2:7]
        print(json.dumps(child(method, passes, int(seq_len), int(chunk), int(repeats))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dense-repeats", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--flat-seq-len", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t = args.seq_len
    env = environment()  # before the runs: the load average the runs start under
    results = {}
    for passes in ("forward", "fwd_bwd"):
        results[f"product.{passes}"] = spawn("product", passes, t, args.chunk, args.repeats)
        results[f"all_slots.{passes}"] = spawn("all_slots", passes, t, args.chunk, args.dense_repeats)
    results["product.fwd_bwd_frozen_values"] = spawn("product", "fwd_bwd_frozen_values", t, args.chunk,
                                                     args.repeats)
    results["flat.forward"] = spawn("flat", "forward", args.flat_seq_len, FLAT_CHUNK, args.dense_repeats)
    med = {k: r["timing"]["median_s"] for k, r in results.items()}
    per_token = {k: med[k] / (args.flat_seq_len if k.startswith("flat") else t) for k in med}
    flops = {  # per token, forward (archspec.ops.pkm docstring; a comparison counts 1)
        "product": {"matmul": 2 * H * N_KEYS * K,
                    "other_lookup": H * (2 * N_KEYS + 2 * KNN * KNN)},
        "all_slots": {"matmul": 2 * H * N_KEYS * K, "other_lookup": H * 2 * N_KEYS * N_KEYS},
        "flat": {"matmul": 2 * H * N_KEYS * N_KEYS * K, "other_lookup": H * N_KEYS * N_KEYS},
        "value_read_all_methods": H * KNN * V + (H * KNN - 1) * V,
    }
    data = {
        "benchmark": "pkm lookup: product keys vs scoring every slot",
        "environment": env,
        "load_average_after_1_5_15min": [round(x, 2) for x in os.getloadavg()],
        "shapes": {"seq_len": t, "heads": H, "k_dim": K, "n_keys": N_KEYS, "slots": N_KEYS ** 2,
                   "knn": KNN, "v_dim": V, "dtype": "float32", "all_slots_chunk_tokens": args.chunk,
                   "flat_seq_len": args.flat_seq_len, "flat_chunk_tokens": FLAT_CHUNK},
        "results": results,
        "per_token_median_s": per_token,
        "ratio": {
            "baseline": "all_slots (every slot scored, exact top-k), same T",
            "all_slots_over_product_forward": med["all_slots.forward"] / med["product.forward"],
            "all_slots_over_product_fwd_bwd": med["all_slots.fwd_bwd"] / med["product.fwd_bwd"],
            "flat_over_product_forward_per_token": per_token["flat.forward"] / per_token["product.forward"],
            "peak_all_slots_over_product_forward": (results["all_slots.forward"]["peak_extra_bytes"]
                                                    / max(1, results["product.forward"]["peak_extra_bytes"])),
            "peak_all_slots_over_product_fwd_bwd": (results["all_slots.fwd_bwd"]["peak_extra_bytes"]
                                                    / max(1, results["product.fwd_bwd"]["peak_extra_bytes"])),
        },
        "flops_per_token": flops,
        "agreement": agreement(t, args.chunk),
    }
    write("pkm_cpu", data)


if __name__ == "__main__":
    main()
