"""Associative recall (MQAR-style): MoM against plain linear attention, a single gated-delta
memory (GatedDeltaNet-like), Mamba and Mamba2, same tiny model around each mixer, 3 seeds.

    /work/venv/bin/python benchmarks/bench_recall.py [--steps 1200] [--seeds 0,1,2]
        [--settings head_dim_16,head_dim_8] [--models mom,linear_attention,...]

Writes benchmarks/results/recall.json (rewritten after every run, `complete` false until the
last). One torch thread, float32, CPU.

Task (archspec/synthetic.py): 16 (key, value) pairs from 32 keys and 32 values, then the 16 keys
re-asked in random order (48 tokens); the loss and accuracy are over the 16 answers. Chance
ln 32 = 3.466 nats; the recall-free level (values remembered, keys not bound to them) 2.475
nats, accuracy 0.150.

Model around every mixer X: d_model 64, layout (X F) x 2 with F a SwiGLU MLP (d_ff 128), tied
embeddings, RMSNorm, init_std 0.05. Training: AdamW lr 3e-3 (20 warm-up steps, then constant),
no weight decay, gradient clip 1, batches of 32, --steps steps; evaluation on a held-out batch
of 256 (another random stream).

Mixers (all `mom` variants: 2 heads, chunk 16, the same q/k/v projections, short convolutions,
l2-normalised q/k and gated output norm; they differ only in rule and memories):
  mom               gated_delta, 4 memories top-2 + a shared one (MoM's default form)
  mom_linear        rule linear, 4 memories top-2 + shared (MoM over plain linear attention)
  gated_delta_1     gated_delta, 1 memory, no shared memory, no aux loss (GatedDeltaNet-like)
  linear_attention  rule linear, 1 memory, no shared memory, no aux loss
  mamba             d_state 8, expand 2 (E 128)
  mamba2            d_state 16, head_dim 16 (8 heads), 1 group
Settings: head_dim_16 (2 x 16: the state of one memory per layer, 2 x 16 x 16, has room for 16
pairs) runs all six; head_dim_8 (2 x 8: one memory's state is too small for 16 pairs, the case
MoM's extra memories are meant for) runs the four `mom` variants (the SSMs do not change).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, environment, write  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(ROOT))
import archspec  # noqa: E402
from archspec.synthetic import RecallTask, train  # noqa: E402

TASK = RecallTask(n_pairs=16, n_queries=16, n_keys=32, n_values=32)
D_MODEL = 64
TRAINING = {"batch": 32, "lr": 3e-3, "warmup": 20, "clip": 1.0, "weight_decay": 0.0, "eval_batch": 256}
CURVE_EVERY = 100   # the curve in the JSON: mean training query loss over each 100 steps
RECALL_WINDOW = 50  # steps_to_recall: first step whose trailing 50-step mean is below recall-free


def mom(rule: str, memories: int, head_dim: int) -> str:
    if memories == 1:
        return (f"{{type: mom, rule: {rule}, n_heads: 2, head_dim: {head_dim}, n_memories: 1, topk: 1, "
                "shared_memory: false, aux_loss_scale: 0, chunk_size: 16}")
    return (f"{{type: mom, rule: {rule}, n_heads: 2, head_dim: {head_dim}, n_memories: {memories}, "
            "topk: 2, shared_memory: true, chunk_size: 16}")


def mixers(head_dim: int) -> dict[str, str]:
    return {"mom": mom("gated_delta", 4, head_dim), "mom_linear": mom("linear", 4, head_dim),
            "gated_delta_1": mom("gated_delta", 1, head_dim), "linear_attention": mom("linear", 1, head_dim),
            "mamba": "{type: mamba, d_state: 8}", "mamba2": "{type: mamba2, d_state: 16, head_dim: 16}"}


SETTINGS = {
    "head_dim_16": {"head_dim": 16, "models": ["mom", "mom_linear", "gated_delta_1", "linear_attention",
                                                "mamba", "mamba2"]},
    "head_dim_8": {"head_dim": 8, "models": ["mom", "mom_linear", "gated_delta_1", "linear_attention"]},
}


def spec_text(mixer: str) -> str:
    return (f"model: {{name: recall, vocab_size: {TASK.vocab_size}, d_model: {D_MODEL}, "
            f"max_seq_len: {TASK.seq_len}, init_std: 0.05, tie_embeddings: true, norm: {{type: rmsnorm}}}}\n"
            f"components:\n  X: {mixer}\n  F: {{type: mlp, activation: swiglu, d_ff: {2 * D_MODEL}}}\n"
            "layout: \"(X F) x 2\"\n")


def steps_to_recall(losses: list[float]) -> int | None:
    level = TASK.recall_free_loss
    window = sum(losses[:RECALL_WINDOW])
    for i in range(RECALL_WINDOW, len(losses) + 1):
        if window / RECALL_WINDOW < level:
            return i
        if i < len(losses):
            window += losses[i] - losses[i - RECALL_WINDOW]
    return None


def run_one(text: str, steps: int, seed: int) -> dict:
    model = archspec.build(archspec.loads(text), seed=seed)
    t0 = time.perf_counter()
    r = train(model, steps, seed=seed, task=TASK, **TRAINING)
    wall = time.perf_counter() - t0
    losses = r.pop("losses")
    return {"seed": seed, **{k: r[k] for k in ("initial_loss", "final_loss", "accuracy", "train_s")},
            "wall_s": wall, "s_per_step": r["train_s"] / steps, "steps_to_recall": steps_to_recall(losses),
            "curve": [round(statistics.fmean(losses[i:i + CURVE_EVERY]), 4)
                      for i in range(0, len(losses), CURVE_EVERY)],
            "load_average_1min_after": os.getloadavg()[0]}


def describe(text: str) -> dict:
    spec = archspec.loads(text)
    totals = archspec.report(spec, seq_len=TASK.seq_len)["totals"]
    return {"mixer": text.split("X: ", 1)[1].split("\n", 1)[0], "params": totals["params"],
            "active_params": totals["active_params"],
            "inference_state_bytes_per_sequence": totals["inference_state_bytes_per_sequence"],
            "forward_flops_per_token": totals["forward_flops_per_token"]}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in ("final_loss", "accuracy", "train_s", "s_per_step"):
        vals = [r[key] for r in runs]
        out[key] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
    reached = [r["steps_to_recall"] for r in runs]
    out["steps_to_recall"] = reached
    return out


def compare(models: dict, a: str, b: str) -> dict | None:
    """Per seed: a's final loss minus b's (negative: a better)."""
    if a not in models or b not in models:
        return None
    ra, rb = {r["seed"]: r for r in models[a]["runs"]}, {r["seed"]: r for r in models[b]["runs"]}
    seeds = sorted(set(ra) & set(rb))
    diff = [ra[s]["final_loss"] - rb[s]["final_loss"] for s in seeds]
    acc = [ra[s]["accuracy"] - rb[s]["accuracy"] for s in seeds]
    return {"seeds": seeds, "final_loss_difference": diff, "accuracy_difference": acc,
            f"{a}_better_on_seeds": sum(d < 0 for d in diff)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--models", default=None, help="comma-separated subset of each setting's models")
    ap.add_argument("--name", default="recall", help="results/<name>.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = None if args.models is None else set(args.models.split(","))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    data = {"benchmark": "associative recall (MQAR-style): MoM vs linear attention, gated delta, Mamba, Mamba2",
            **environment(), "git": {"commit": commit}, "complete": False,
            "command": "python benchmarks/bench_recall.py " + " ".join(sys.argv[1:]),
            "task": {"n_pairs": TASK.n_pairs, "n_queries": TASK.n_queries, "n_keys": TASK.n_keys,
                     "n_values": TASK.n_values, "seq_len": TASK.seq_len, "vocab_size": TASK.vocab_size,
                     "chance_loss": TASK.chance_loss, "chance_accuracy": TASK.chance_accuracy,
                     "recall_free_loss": TASK.recall_free_loss,
                     "recall_free_accuracy": TASK.recall_free_accuracy},
            "shapes": {"d_model": D_MODEL, "layout": "(X F) x 2", "d_ff": 2 * D_MODEL, "dtype": "float32",
                       "batch": TRAINING["batch"], "seq_len": TASK.seq_len},
            "training": {**TRAINING, "steps": args.steps, "seeds": seeds, "optimizer": "AdamW",
                         "schedule": "linear warm-up then constant", "curve_every": CURVE_EVERY,
                         "steps_to_recall": f"first step whose trailing {RECALL_WINDOW}-step mean training "
                                            "query loss is below recall_free_loss (null: never)"},
            "settings": {}}
    for name in args.settings.split(","):
        setting = SETTINGS[name]
        texts = {m: spec_text(t) for m, t in mixers(setting["head_dim"]).items()
                 if m in setting["models"] and (wanted is None or m in wanted)}
        models = {m: {**describe(t), "runs": []} for m, t in texts.items()}
        data["settings"][name] = {"head_dim": setting["head_dim"], "models": models}
        for seed in seeds:
            for m, text in texts.items():
                r = run_one(text, args.steps, seed)
                models[m]["runs"].append(r)
                models[m]["summary"] = summarise(models[m]["runs"])
                print(f"{name} {m} seed {seed}: loss {r['final_loss']:.3f} acc {r['accuracy']:.3f} "
                      f"recall@{r['steps_to_recall']} {r['train_s']:.0f} s", file=sys.stderr, flush=True)
                data["settings"][name]["comparisons"] = {
                    "mom_vs_linear_attention": compare(models, "mom", "linear_attention"),
                    "mom_linear_vs_linear_attention": compare(models, "mom_linear", "linear_attention"),
                    "mom_vs_gated_delta_1": compare(models, "mom", "gated_delta_1")}
                data["load_average_1_5_15min_at_end"] = list(os.getloadavg())
                write(args.name, data)
    data["complete"] = True
    write(args.name, data)


if __name__ == "__main__":
    main()
