"""The emitted model works under torch.compile as one graph (no graph breaks), forward and
backward. `eager` / `aot_eager` backends trace with dynamo (and AOTAutograd) without generating
code, so this checks traceability quickly; it says nothing about inductor's speed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo

import archspec

SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["tiny", "tiny-parallel", "tiny-rules"])
def test_forward_traces_as_one_graph(name):
    model = archspec.build(archspec.load(SPECS / f"{name}.yaml"), seed=0)
    tokens = torch.randint(0, 256, (2, 48))  # 48 > the 32-token window of tiny-rules: mask path
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # raises on any graph break
    out, ref = compiled(tokens, labels=tokens), model(tokens, labels=tokens)
    # same ops in the same order on the same inputs: identical results
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.loss, ref.loss)


def test_backward_under_aot_autograd_matches_eager():
    model = archspec.build(archspec.load(SPECS / "tiny.yaml"), seed=0)
    tokens = torch.randint(0, 256, (2, 32))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(tokens, labels=tokens).loss.backward()
    compiled_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(tokens, labels=tokens).loss.backward()
    for name, p in model.named_parameters():
        # AOTAutograd replays the same aten ops; measured max difference is exactly 0. 1e-6
        # absolute allows for a reordered reduction in a future torch without hiding a wrong grad
        # (gradients here are ~1e-2 to 1e-4).
        assert torch.allclose(compiled_grads[name], p.grad, rtol=0, atol=1e-6), name


# --- decoding: model.step under torch.compile(fullgraph=True) ----------------------------------

SMALL = sorted(p.name for p in SPECS.glob("*.yaml") if archspec.load(p).model.d_model <= 512)


def decode_both(model, step, t: int = 40, prompt: int = 4):
    """(compiled logits, eager logits) [steps, B, V] over the same tokens from two equal states."""
    tokens = torch.randint(0, model.spec.model.vocab_size, (2, t), generator=torch.Generator().manual_seed(0))
    outs = ([], [])
    with torch.no_grad():
        states = [model.init_state(2, t), model.init_state(2, t)]
        for state in states:
            model.prefill(tokens[:, :prompt], state)
        for i in range(prompt, t):
            outs[0].append(step(tokens[:, i], states[0]))
            outs[1].append(model.step(tokens[:, i], states[1]))
    return torch.stack(outs[0]), torch.stack(outs[1])


@pytest.mark.slow  # dynamo traces every component's step: ~1-17 s a spec on one CPU thread
@pytest.mark.parametrize("name", SMALL)
def test_step_traces_as_one_graph(name):
    """torch.compile(model.step, fullgraph=True) (raises on any graph break) over 36 steps: at
    most three graphs, not one per token (dynamo specialises the first position, then makes the
    position a symbol; moe's chunk router adds one: it branches on a chunk's first token), and
    the very logits of eager steps (the same ops in order)."""
    from torch._dynamo.utils import counters
    model = archspec.build(archspec.load(SPECS / name), dtype="float32", seed=0).eval()
    counters.clear()
    compiled, eager = decode_both(model, torch.compile(model.step, backend="eager", fullgraph=True))
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
    assert torch.equal(compiled, eager)


def ragged_state(model, lengths: list[int], max_len: int):
    """One state of rows prefilled alone over prompts of `lengths`, merged (rows at their own
    positions), and the tokens [B, max_len]."""
    tokens = torch.randint(0, model.spec.model.vocab_size, (len(lengths), max_len),
                           generator=torch.Generator().manual_seed(1))
    parts = [model.init_state(1, max_len) for _ in lengths]
    with torch.no_grad():
        for r, (n, part) in enumerate(zip(lengths, parts)):
            model.prefill(tokens[r:r + 1, :n], part)
    return model.cat_states(parts), tokens


@pytest.mark.slow  # as above: dynamo traces every component's step
@pytest.mark.parametrize("name", ["tiny.yaml", "sparse-tiny.yaml", "moe-tiny.yaml", "hydra-tiny.yaml"])
def test_step_of_rows_at_their_own_positions_traces_as_one_graph(name):
    """The ragged path (generate's merged state, per-row positions): compiled with
    fullgraph=True, at most three graphs over 20 steps, the very logits of eager steps."""
    from torch._dynamo.utils import counters
    model = archspec.build(archspec.load(SPECS / name), dtype="float32", seed=0).eval()
    lengths = [9, 2, 5]
    states = [ragged_state(model, lengths, 40)[0] for _ in range(2)]
    _, tokens = ragged_state(model, lengths, 40)
    counters.clear()
    step = torch.compile(model.step, backend="eager", fullgraph=True)
    outs = ([], [])
    with torch.no_grad():
        for i in range(20):
            t = torch.stack([tokens[r, n + i] for r, n in enumerate(lengths)])
            outs[0].append(step(t, states[0]))
            outs[1].append(model.step(t, states[1]))
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
    assert torch.equal(torch.stack(outs[0]), torch.stack(outs[1]))


@pytest.mark.slow  # inductor generates and builds C++ for the step: ~20-60 s a spec
@pytest.mark.parametrize("name", ["tiny.yaml", "mamba-tiny.yaml"])
def test_step_compiles_with_inductor_on_cpu(name):
    """Inductor's kernels reorder float sums: fp32 logits within 1e-5 of their scale (the
    decode-vs-forward bound of tests/test_generate.py, which inductor's rounding sits far under)."""
    model = archspec.build(archspec.load(SPECS / name), dtype="float32", seed=0).eval()
    compiled, eager = decode_both(model, torch.compile(model.step, fullgraph=True), t=12)
    assert ((compiled - eager).abs().max() / eager.abs().max()).item() < 1e-5
