"""Fuzz the front end: mutated shipped specs and random documents through load, validate,
report (every format) and diff. The only acceptable outcomes are success and a located
SpecError; anything else (another exception, a SpecError without a location) is an internal
error, printed with its input.

    python tools/fuzz_specs.py [--minutes 30] [--seed 0] [--out benchmarks/results/fuzz.json]

tests/test_fuzz.py runs the same mutations under hypothesis on every test run; this script is
the long run (inputs tried, internal errors found, per outcome counts, as JSON).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import archspec  # noqa: E402
from archspec.diff import diff, render as render_diff  # noqa: E402
from archspec.errors import SpecError  # noqa: E402
from archspec.loader import load_with_extends  # noqa: E402
from archspec.report import render  # noqa: E402

# values that have broken specs before: wrong kinds, non-finite and huge numbers, long strings,
# expressions, layout syntax
ODD_VALUES = [None, True, False, "yes", "off", -1, 0, 1, 3, 7, 2**31, 2**62, 2**63, 2**70, 10**30,
              1e300, -1e300, float("nan"), float("inf"), float("-inf"), 0.5, 2.5, 1e-300, "", "x",
              "A" * 1100, "é", "[A | F]", "(A F) x 2.5", "A x 100000", "A x 1000000",
              "${d_model} * 4", "${d_model} * 1e300", "${nope}", "${d_model} ** 100", [], {}, [1, 2],
              {"a": 1}, {"type": "mlp"}, ["A", ["A", "F"]]]
KEYS = ["type", "n_heads", "d_model", "n_memories", "n_experts", "window", "topk", "eps",
        "backend", "extends", "components", "layout", "overrides", "at", "set", "vars", "eype"]


def seeds() -> list[dict]:
    """Every shipped spec as plain data (extends merged, expressions left as written)."""
    out = []
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        out.append(copy.deepcopy(load_with_extends(path).data))
    return out


def paths(node, prefix=()):
    """Every path into a nested dict/list, the root included."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def mutate(data, rng: random.Random, types: list[str]):
    """One random change at a random place: replace, delete, rename, duplicate, retype, add."""
    data = copy.deepcopy(data)
    path = rng.choice(list(paths(data)))
    if not path:
        return rng.choice([data, [data], "text", 3, None]) if rng.random() < 0.05 else data
    parent, key = _get(data, path[:-1]), path[-1]
    op = rng.randrange(6)
    if op == 0:
        parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    elif op == 1 and isinstance(parent, dict):
        del parent[key]
    elif op == 2 and isinstance(parent, dict):
        parent[_typo(str(key), rng)] = parent.pop(key)
    elif op == 3:
        parent[key] = copy.deepcopy(rng.choice([parent[key], [parent[key]] * 3, {"x": parent[key]}]))
    elif op == 4 and isinstance(parent, dict) and key == "type":
        parent[key] = rng.choice(types)
    elif isinstance(parent, dict):
        parent[rng.choice(KEYS)] = copy.deepcopy(rng.choice(ODD_VALUES))
    else:
        parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    return data


def _typo(key: str, rng: random.Random) -> str:
    if not key:
        return "x"
    i = rng.randrange(len(key))
    return key[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz_") + key[i + 1:]


def random_document(rng: random.Random, depth: int = 0):
    """A random YAML-able value, biased towards spec-like mappings."""
    if depth > 3 or rng.random() < 0.3:
        return copy.deepcopy(rng.choice(ODD_VALUES))
    if rng.random() < 0.7:
        return {rng.choice(KEYS + ["model", "vocab_size", "max_seq_len"]): random_document(rng, depth + 1)
                for _ in range(rng.randrange(1, 5))}
    return [random_document(rng, depth + 1) for _ in range(rng.randrange(0, 4))]


def to_yaml(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def run(text: str, other: archspec.ResolvedSpec | None = None) -> str:
    """'ok' or 'spec_error'; raises AssertionError for a SpecError without locations and lets
    any other exception through (an internal error)."""
    try:
        spec = archspec.loads(text, "fuzz.yaml")
    except SpecError as e:
        assert e.problems, "a SpecError without problems"
        for p in e.problems:
            assert p.message, "a problem without a message"
        e.format()
        return "spec_error"
    rep = archspec.report(spec, seq_len=min(64, spec.model.max_seq_len))
    for fmt in ("json", "table", "markdown"):
        render(rep, fmt)
    if other is not None:
        d = diff(other, spec)
        render_diff(d, "table")
    return "ok"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    bases = seeds()
    types = sorted(archspec.components.REGISTRY)
    originals = [archspec.loads(to_yaml(b), "seed.yaml") for b in bases]
    counts = {"ok": 0, "spec_error": 0, "internal_error": 0}
    failures: dict[str, dict] = {}
    end = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    while time.monotonic() < end:
        if rng.random() < 0.85:
            i = rng.randrange(len(bases))
            data, other = bases[i], originals[i]
            for _ in range(rng.choice([1, 1, 2, 3, 5])):
                data = mutate(data, rng, types)
        else:
            data, other = random_document(rng), None
        try:
            text = to_yaml(data)
        except (yaml.YAMLError, ValueError, RecursionError):
            continue
        try:
            counts[run(text, other)] += 1
        except Exception as e:  # noqa: BLE001 - every other outcome is the finding
            counts["internal_error"] += 1
            kind = f"{type(e).__name__}: {traceback.extract_tb(e.__traceback__)[-1].name}"
            failures.setdefault(kind, {"count": 0, "example": text[:4000], "error": repr(e)[:500]})
            failures[kind]["count"] += 1
        tried = sum(counts.values())
        if tried % 500 == 0:
            print(f"{tried} inputs, {counts['internal_error']} internal errors "
                  f"({len(failures)} kinds), {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    result = {"tool": "tools/fuzz_specs.py", "seed": args.seed, "minutes": args.minutes,
              "inputs": sum(counts.values()), "outcomes": counts, "internal_error_kinds": failures,
              "seeds": [p.name for p in sorted((ROOT / "specs").glob("*.yaml"))],
              "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("inputs", "outcomes")}), f"kinds: {list(failures)}")


if __name__ == "__main__":
    main()
