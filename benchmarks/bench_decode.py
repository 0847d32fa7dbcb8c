"""Decode tokens/s against context length for a tiny model of each family (CPU, 1 thread).

    python benchmarks/bench_decode.py [--contexts 512,4096,16384] [--steps 64] [--repeats 3] [--batch 1]

For each model and context L: a random prompt of L tokens is prefilled (timed: prefill
tokens/s), then after 2 untimed steps, `repeats` runs of `steps` decoding steps are timed:
decode tokens/s = batch x steps / seconds, the median run (the machine is shared: see the
load average recorded with the results). Models: the shipped tiny specs with max_seq_len raised to fit L + steps
(nothing else changes), plus two windowed variants of tiny.yaml's attention. Expectation: the
recurrent families (mamba, mamba2, mom) and the windows (attention with `window`, sparse_attention
with `global_reads: window`) stay flat in L; full attention's step reads L keys, so it slows
as L grows. Writes benchmarks/results/decode_cpu.json.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, write  # noqa: E402

SPECS = ROOT / "specs"
# (label, spec file, text substitutions applied before loading)
MODELS = [
    ("attention (tiny)", "tiny.yaml", []),
    ("attention window 256", "tiny.yaml", [("n_kv_heads: 2}", "n_kv_heads: 2, window: 256}")]),
    # a global token every 32 positions stays readable by every later one: L / 32 more keys
    ("sparse window 256 + global every 32", "sparse-tiny.yaml",
     [("window: 16,", "window: 256,"), ('layout: "W F S F"', 'layout: "W F W F"')]),
    ("sparse window 256 + 1 sink", "sparse-tiny.yaml",
     [("window: 16,", "window: 256,"), ("global_every: 32, ", ""), ('layout: "W F S F"', 'layout: "W F W F"')]),
    ("mamba", "mamba-tiny.yaml", []),
    ("mamba2", "mamba2-tiny.yaml", []),
    ("mom", "mom-tiny.yaml", []),
]


def build(file: str, subs: list, max_len: int):
    """The spec with max_seq_len = max_len (and the substitutions), built in float32."""
    import archspec
    text = (SPECS / file).read_text()
    for old, new in subs:
        assert old in text, (file, old)
        text = text.replace(old, new)
    text = re.sub(r"max_seq_len: \d+", f"max_seq_len: {max_len}", text)
    return archspec.build(archspec.loads(text), dtype="float32", seed=0).eval()


def measure(model, context: int, steps: int, repeats: int, batch: int) -> dict:
    """Prefill of `context` tokens, then `repeats` timed runs of `steps` steps."""
    import torch
    vocab = model.embedding.weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, context), generator=gen)
    with torch.no_grad():
        state = model.init_state(batch, context + repeats * steps + 2)
        t0 = time.perf_counter()
        logits = model.prefill(tokens, state)[:, -1]
        prefill_s = time.perf_counter() - t0
        nxt = logits.argmax(-1)
        for _ in range(2):  # warm-up
            nxt = model.step(nxt, state).argmax(-1)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                nxt = model.step(nxt, state).argmax(-1)
            runs.append(time.perf_counter() - t0)
    step_s = statistics.median(runs)
    return {"context": context, "batch": batch, "prefill_s": prefill_s,
            "prefill_tokens_per_s": batch * context / prefill_s, "decode_runs_s": runs,
            "decode_steps": steps, "decode_tokens_per_s": batch * steps / step_s}


def main() -> None:
    import torch
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", default="512,4096,16384")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default="decode_cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    contexts = [int(c) for c in args.contexts.split(",")]
    results = []
    for label, file, subs in MODELS:
        model = build(file, subs, max(contexts) + args.repeats * args.steps + 2)
        rows = []
        for context in contexts:
            row = measure(model, context, args.steps, args.repeats, args.batch)
            rows.append(row)
            print(f"{label:36s} L={context:6d}  prefill {row['prefill_tokens_per_s']:9.0f} tok/s  "
                  f"decode {row['decode_tokens_per_s']:7.1f} tok/s", flush=True)
        first, last = rows[0]["decode_tokens_per_s"], rows[-1]["decode_tokens_per_s"]
        results.append({"model": label, "spec": file, "substitutions": subs, "rows": rows,
                        f"decode_ratio_{contexts[-1]}_to_{contexts[0]}": last / first})
    write(args.out, {"environment": environment(), "method": __doc__.strip(), "results": results})


if __name__ == "__main__":
    main()
