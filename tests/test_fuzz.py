"""Property: mutated shipped specs and random documents, through load, validate, report (every
format) and diff, end in success or a located SpecError, never an internal error (the mutations
of tools/fuzz_specs.py, whose long run reports its figures as JSON)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import fuzz_specs as F  # noqa: E402

BASES = F.seeds()
TYPES = sorted(archspec.components.REGISTRY)
ORIGINALS = [archspec.loads(F.to_yaml(b), "seed.yaml") for b in BASES]
# enough examples to meet every mutation kind on every seed spec within ~15 s; the long run is
# tools/fuzz_specs.py
FAST = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.integers(0, len(BASES) - 1), st.randoms(use_true_random=False), st.integers(1, 4))
def test_mutated_specs_succeed_or_fail_with_located_errors(index, rng, n_mutations):
    data = BASES[index]
    for _ in range(n_mutations):
        data = F.mutate(data, rng, TYPES)
    assert F.run(F.to_yaml(data), ORIGINALS[index]) in ("ok", "spec_error")


@FAST
@given(st.randoms(use_true_random=False))
def test_random_documents_fail_with_located_errors(rng):
    assert F.run(F.to_yaml(F.random_document(rng))) in ("ok", "spec_error")


@pytest.mark.parametrize("index", range(len(BASES)))
def test_every_seed_spec_passes_unchanged(index):
    """The seeds themselves are valid: a mutation is what makes an input bad."""
    assert F.run(F.to_yaml(BASES[index]), ORIGINALS[index]) == "ok"
