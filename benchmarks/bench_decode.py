"""Decode tokens/s against context length, batch 1 and 8, and prefill against the plain forward,
for a tiny model of each family (CPU, 1 thread, float32).

    python benchmarks/bench_decode.py [--contexts 512,4096,16384] [--batches 1,8] [--steps 64]
                                      [--repeats 3] [--prefill-repeats N] [--prefill-batch8-max 4096]
                                      [--models mamba,mom] [--out NAME]

Times are CPU seconds of this process (time.process_time; with one thread, less sensitive than
wall time to other processes on a shared machine). For each model and context L, on one random
L-token prompt: `repeats` interleaved pairs of the plain forward `model(tokens)` and
`model.prefill(tokens, state)` (the same [B, L] tokens, the same logits, plus filling the state):
prefill tokens/s and its ratio to the forward's (medians; >1: prefill faster). At batch 8 the pair
runs on 8 random prompts for L <= --prefill-batch8-max (beyond it, 8 long prefills take minutes
here: skipped). Decoding: the batch-1 prompt's state, and for batch 8 that state repeated 8 times
(model.cat_states: the same shapes and work as 8 different rows); after 2 untimed steps, `repeats`
rounds, each timing `steps` greedy steps of every (L, batch) in turn, so a slow spell of the
machine falls on every context alike. decode tokens/s = batch x steps / CPU seconds (median, min
and max over the rounds). Models: the shipped tiny specs with max_seq_len raised to fit (nothing
else changes), plus windowed variants. Expectation (issue 18): the recurrent families (mamba,
mamba2, mom) and the windows (attention with `window`, sparse_attention with `global_reads:
window`) stay flat in L; full attention's step reads L keys, so it slows as L grows. Writes
benchmarks/results/decode_cpu.json.
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


def cpu_seconds(fn) -> tuple[float, object]:
    """(CPU seconds of this process, result) of fn()."""
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def prefill_vs_forward(model, tokens, max_len: int, repeats: int) -> tuple[dict, object]:
    """`repeats` interleaved forward / prefill pairs on tokens [B, L]: medians and ranges, the
    ratio (forward seconds / prefill seconds), and the last prefill's state."""
    import torch
    fwd, pre, state = [], [], None
    with torch.no_grad():
        for _ in range(repeats):
            fwd.append(cpu_seconds(lambda: model(tokens).logits)[0])
            state = model.init_state(tokens.shape[0], max_len)
            pre.append(cpu_seconds(lambda: model.prefill(tokens, state))[0])
    n = tokens.numel()
    return {"batch": tokens.shape[0], "forward_cpu_s": fwd, "prefill_cpu_s": pre,
            "forward_tokens_per_s": n / statistics.median(fwd), "prefill_tokens_per_s": n / statistics.median(pre),
            "prefill_over_forward_speed": statistics.median(fwd) / statistics.median(pre)}, state


def decode_rounds(model, states: dict, steps: int, repeats: int) -> dict:
    """states {(L, batch): state}: `repeats` rounds, each `steps` greedy steps of every state in
    turn; {(L, batch): CPU seconds of each round}."""
    import torch
    runs = {key: [] for key in states}
    nxt = {key: torch.zeros(key[1], dtype=torch.long) for key in states}
    with torch.no_grad():
        for key, state in states.items():  # warm-up
            for _ in range(2):
                nxt[key] = model.step(nxt[key], state).argmax(-1)
        for _ in range(repeats):
            for key, state in states.items():
                def run(key=key, state=state):
                    for _ in range(steps):
                        nxt[key] = model.step(nxt[key], state).argmax(-1)
                runs[key].append(cpu_seconds(run)[0])
    return runs


def main() -> None:
    import torch
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", default="512,4096,16384")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prefill-repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--prefill-batch8-max", type=int, default=4096)
    p.add_argument("--models", default=None, help="comma-separated labels' first words (default: all)")
    p.add_argument("--out", default="decode_cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    max_len = max(contexts) + args.repeats * args.steps + 2
    prefill_repeats = args.prefill_repeats or args.repeats
    results = []
    for label, file, subs in MODELS:
        if args.models and not any(label.startswith(m) for m in args.models.split(",")):
            continue
        model = build(file, subs, max_len)
        vocab = model.embedding.weight.shape[0]
        gen = torch.Generator().manual_seed(0)
        prefill, states = [], {}
        for context in contexts:
            row, state = prefill_vs_forward(model, torch.randint(0, vocab, (1, context), generator=gen),
                                            max_len, prefill_repeats)
            prefill.append(dict(row, context=context))
            for batch in batches:
                states[(context, batch)] = state if batch == 1 else model.cat_states([state] * batch)
                if batch > 1 and context <= args.prefill_batch8_max:
                    tokens = torch.randint(0, vocab, (batch, context), generator=gen)
                    prefill.append(dict(prefill_vs_forward(model, tokens, max_len, prefill_repeats)[0], context=context))
        runs = decode_rounds(model, states, args.steps, args.repeats)
        decode = []
        for (context, batch), secs in runs.items():
            tps = [batch * args.steps / s for s in secs]
            decode.append({"context": context, "batch": batch, "steps": args.steps, "cpu_s": secs,
                           "tokens_per_s": statistics.median(tps), "tokens_per_s_min": min(tps),
                           "tokens_per_s_max": max(tps)})
        flat = {}
        for batch in batches:
            by_l = {d["context"]: d["tokens_per_s"] for d in decode if d["batch"] == batch}
            flat[f"batch_{batch}"] = by_l[contexts[-1]] / by_l[contexts[0]]
        for d in decode:
            print(f"{label:36s} L={d['context']:6d} B={d['batch']}  decode {d['tokens_per_s']:8.1f} tok/s "
                  f"[{d['tokens_per_s_min']:.1f}, {d['tokens_per_s_max']:.1f}]", flush=True)
        for r in prefill:
            print(f"{label:36s} L={r['context']:6d} B={r['batch']}  prefill {r['prefill_tokens_per_s']:9.0f} tok/s "
                  f"forward {r['forward_tokens_per_s']:9.0f} tok/s  ratio {r['prefill_over_forward_speed']:.2f}",
                  flush=True)
        results.append({"model": label, "spec": file, "substitutions": subs, "decode": decode, "prefill": prefill,
                        f"decode_{contexts[-1]}_over_{contexts[0]}": flat})
    write(args.out, {"environment": environment(), "method": __doc__.strip(), "results": results})


if __name__ == "__main__":
    main()
