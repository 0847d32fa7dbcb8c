"""Time of a structural (meta-device) build of Llama-2-70B, and of load + validate.

    /work/venv/bin/python benchmarks/bench_meta_build.py [--repeats 7]

Writes benchmarks/results/bench_meta_build.json.
"""
from __future__ import annotations

import argparse
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import ROOT, environment, summary, timed, write  # noqa: E402

import archspec  # noqa: E402
from archspec.accounting import account  # noqa: E402

SPEC = ROOT / "specs" / "llama-2-70b.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    archspec.load(SPEC)  # warm-up: imports, schema compilation caches
    load_times, spec = timed(lambda: archspec.load(SPEC), args.repeats)
    archspec.build(spec, meta=True)  # warm-up
    build_times, model = timed(lambda: archspec.build(spec, meta=True), args.repeats)
    n_params = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    write("bench_meta_build", {
        "benchmark": "archspec.build(load('specs/llama-2-70b.yaml'), meta=True)",
        **environment(),
        "shapes": {"spec": "specs/llama-2-70b.yaml", "n_sublayers": len(spec.sublayers),
                   "d_model": spec.model.d_model, "parameters": n_params,
                   "parameters_match_accounting": n_params == account(spec).total().params},
        "timings": {"load_and_validate": summary(load_times), "meta_build": summary(build_times)},
        "ratio": {"value": summary(build_times)["median_s"] / summary(load_times)["median_s"],
                  "definition": "meta_build median / load_and_validate median",
                  "baseline": "load_and_validate (YAML parse + schema + semantic checks + resolve)"},
        "notes": "meta=True constructs every module on the meta device: no memory, no init. "
                 "Times are wall-clock medians after one warm-up call.",
    })


if __name__ == "__main__":
    main()
