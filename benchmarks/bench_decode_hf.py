"""archspec's generation against transformers' `generate` on the same tiny Llama and Mamba weights
(CPU, 1 thread, float32, greedy).

    python benchmarks/bench_decode_hf.py [--prompt 32] [--new 64] [--batches 1,8] [--repeats 5]

transformers is an optional extra (`pip install archspec[hf]`); the core never imports it, only
this script does. For each family: a transformers model with random weights (LlamaConfig /
MambaConfig), saved and imported with `archspec.from_hf` (its spec and weights). Checks first, before any
timing: the forward's logits agree (fp32, max |difference| <= 1e-5 of the largest |logit|: the
two compute the same math in different op orders, rounding ~1e-7 of it; a wrong weight or norm
eps gives 1e-3 or more), and both generate the same greedy tokens. Then `repeats` rounds, each
timing (CPU seconds of this process: time.process_time) one `model.generate(ids,
max_new_tokens=N, do_sample=False)` of transformers and one `archspec.generate(model, prompts, N)`
on the same random prompts, alternating which goes first; tokens/s = batch x N / seconds
(median, min, max); ratio = archspec tokens/s / transformers tokens/s. Both times include the
prompt's prefill and the per-token selection loop (a whole `generate` call each).
Writes benchmarks/results/decode_hf.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write  # noqa: E402

D_MODEL, LAYERS, VOCAB, HEADS, KV_HEADS, D_FF = 64, 4, 256, 4, 2, 192
LOGIT_TOL = 1e-5  # normwise, fp32 (module docstring)

def build_pair(family: str):
    import torch
    import transformers
    import archspec
    torch.manual_seed(0)
    if family == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=4096,
            rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
        hf = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.MambaConfig(
            vocab_size=VOCAB, hidden_size=D_MODEL, state_size=16, num_hidden_layers=LAYERS, expand=2,
            conv_kernel=4, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5,
            tie_word_embeddings=True)
        hf = transformers.MambaForCausalLM(cfg)
    hf = hf.float().eval()
    hf.generation_config.eos_token_id = None  # every row generates exactly N tokens
    hf.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as saved:  # archspec's importer: config.json -> spec, weights
        hf.save_pretrained(saved)
        model, _ = archspec.from_hf(saved, dtype="float32")
    return hf, model.eval()


def check_agreement(hf, model, prompts) -> dict:
    """The forward's logits and the greedy tokens agree (module docstring); the measured error."""
    import torch
    import archspec
    with torch.no_grad():
        ours, theirs = model(prompts).logits.double(), hf(prompts).logits.double()
    err = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert err <= LOGIT_TOL, f"logits differ by {err:.3g} of their scale"
    new = 16
    with torch.no_grad():
        hf_tokens = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                                do_sample=False)[:, prompts.shape[1]:].tolist()
    assert archspec.generate(model, prompts.tolist(), new) == hf_tokens, "greedy tokens differ"
    return {"logits_max_err_over_scale": err, "logit_tolerance": LOGIT_TOL, "greedy_tokens_equal_over": new}


def time_both(hf, model, prompts, new: int, repeats: int) -> dict:
    import torch
    import archspec
    mask = torch.ones_like(prompts)
    rows = prompts.tolist()
    runs = {"transformers": [], "archspec": []}

    def run_hf():
        hf.generate(prompts, attention_mask=mask, max_new_tokens=new, do_sample=False)

    def run_ours():
        archspec.generate(model, rows, new)

    with torch.no_grad():
        run_hf(), run_ours()  # warm-up
        for r in range(repeats):
            order = [("transformers", run_hf), ("archspec", run_ours)]
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                t0 = time.process_time()
                fn()
                runs[name].append(time.process_time() - t0)
    b = prompts.shape[0]
    out = {}
    for name, secs in runs.items():
        tps = [b * new / s for s in secs]
        out[name] = {"cpu_s": secs, "tokens_per_s": statistics.median(tps), "tokens_per_s_min": min(tps),
                     "tokens_per_s_max": max(tps)}
    out["archspec_over_transformers"] = out["archspec"]["tokens_per_s"] / out["transformers"]["tokens_per_s"]
    return out


def main() -> None:
    import torch
    import transformers
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--families", default="llama,mamba")
    p.add_argument("--out", default="decode_hf")
    args = p.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    results = []
    for family in args.families.split(","):
        hf, model = build_pair(family)
        gen = torch.Generator().manual_seed(1)
        check = check_agreement(hf, model, torch.randint(0, VOCAB, (2, args.prompt), generator=gen))
        print(f"{family}: logits agree to {check['logits_max_err_over_scale']:.2e} of their scale; "
              f"greedy tokens equal", flush=True)
        for batch in [int(b) for b in args.batches.split(",")]:
            prompts = torch.randint(0, VOCAB, (batch, args.prompt), generator=gen)
            row = time_both(hf, model, prompts, args.new, args.repeats)
            results.append({"family": family, "batch": batch, "prompt": args.prompt, "new_tokens": args.new,
                            **check, **row})
            print(f"{family:6s} B={batch}  transformers {row['transformers']['tokens_per_s']:7.1f} tok/s "
                  f"[{row['transformers']['tokens_per_s_min']:.1f}, {row['transformers']['tokens_per_s_max']:.1f}]  "
                  f"archspec {row['archspec']['tokens_per_s']:7.1f} tok/s "
                  f"[{row['archspec']['tokens_per_s_min']:.1f}, {row['archspec']['tokens_per_s_max']:.1f}]  "
                  f"ratio {row['archspec_over_transformers']:.2f}", flush=True)
    env = dict(environment(), transformers=transformers.__version__)
    write(args.out, {"environment": env, "method": __doc__.strip(),
                     "model": {"d_model": D_MODEL, "layers": LAYERS, "vocab": VOCAB, "heads": HEADS,
                               "kv_heads": KV_HEADS, "d_ff": D_FF}, "results": results})


if __name__ == "__main__":
    main()
