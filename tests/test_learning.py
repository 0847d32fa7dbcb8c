"""Each recurrent component learns: a tiny model trained for a few hundred CPU steps on
synthetic associative recall (archspec/synthetic.py) brings its query loss well below chance,
while the same model with the mixers removed (MLPs only) cannot leave chance.

Task: 4 (key, value) pairs from 8 keys and 8 values, then the 4 keys re-asked in random order
(12 tokens). Two levels matter (nats per query):

    chance       ln 8 = 2.079   knows only that answers are values
    recall-free  1.140          knows which values occurred, not which key each followed
                                (RecallTask.recall_free_loss; accuracy 0.412)

Reaching the recall-free level already needs sequence mixing (the MLP-only control cannot see
other tokens); going below it needs keys bound to values. Every model: d_model 32, the mixer
and a SwiGLU MLP twice, init_std 0.05 (at the default 0.02 Mamba stayed at chance for 300
steps on some seeds), AdamW lr 3e-3 with 20 warm-up steps, batches of 32, clip 1, 300 steps;
held-out batch of 256. The plain linear-attention baseline is the `mom` component with rule
linear, one memory, top-1, no shared memory and no aux loss: the same d_model, heads, head_dim,
short convolutions, l2-normalised q/k and gated output norm as the MoM model, so the two differ
only in the memories (and the rule, which the single-memory gated-delta model isolates).

Measured on the 2-core test machine, seeds 0-5 (final held-out loss; accuracy):
    linear attention                        0.003-0.020; >= 0.997
    mom (gated_delta, 4 top-2 + shared)     0.005-0.101; >= 0.975
    gated_delta, 1 memory                   0.003-0.100; >= 0.967
    mamba2                                  1.133-1.211; 0.396-0.426
    mamba                                   1.181-1.274; 0.378-0.430
    MLP only                                2.083-2.096; 0.119-0.144
The linear-attention family binds keys to values within 300 steps on every seed. Mamba and
Mamba2 reach the recall-free plateau (the loss of a bag of the sequence's values) and stay on
it for a seed-dependent time before binding (trained 900 steps, seeds 0 and 1: each bound on
one seed, after ~500 (Mamba2) and ~800 (Mamba) steps; at d_model 64 Mamba2 bound within 300
steps on 3 of 5 seeds, Mamba at lr 5e-3 within 600 on 3 of 4), so for them only the mixing
is asserted here: a loss below 0.75 ln 8 = 1.56 (0.28 nats of margin over the worst seed, 0.5
under the control) and an accuracy above 0.30 (worst seed 0.378, control at most 0.144). For
the linear-attention family the bound is below the recall-free level: loss < 0.40 (4x the
worst seed, 0.74 under the recall-free 1.14, at or above which any model without binding
stays, e.g. a broken memory that still mixes) and accuracy > 0.85. The control must stay
within 5% of chance (loss > 1.975, accuracy < 0.2).
"""
from __future__ import annotations

import time

import pytest
import torch

from archspec import build, loads
from archspec.synthetic import RecallTask, train

TASK = RecallTask(n_pairs=4, n_queries=4, n_keys=8, n_values=8)
STEPS, SEED = 300, 0
TRAINING = {"batch": 32, "lr": 3e-3, "warmup": 20, "clip": 1.0}

LINEAR_ATTENTION = "{type: mom, rule: linear, n_heads: 2, head_dim: 16, n_memories: 1, topk: 1, " \
                   "shared_memory: false, aux_loss_scale: 0, chunk_size: 16}"
MIXERS = {
    "mamba": "{type: mamba, d_state: 8}",
    "mamba2": "{type: mamba2, d_state: 16, head_dim: 16}",
    "mom": "{type: mom, n_heads: 2, head_dim: 16, n_memories: 4, topk: 2, chunk_size: 16}",
    "gated_delta_1": "{type: mom, n_heads: 2, head_dim: 16, n_memories: 1, topk: 1, "
                     "shared_memory: false, aux_loss_scale: 0, chunk_size: 16}",
    "linear_attention": LINEAR_ATTENTION,
}
BINDS = {"mom", "gated_delta_1", "linear_attention"}   # bind keys to values within STEPS


def recall_spec(mixer: str | None, d_model: int = 32):
    """(X F) x 2 with X = `mixer`, or F x 4 (the MLP-only control) when mixer is None."""
    components = f"  F: {{type: mlp, activation: swiglu, d_ff: {2 * d_model}}}\n"
    layout = "F x 4"
    if mixer is not None:
        components = f"  X: {mixer}\n" + components
        layout = "(X F) x 2"
    return loads(f"model: {{name: recall, vocab_size: {TASK.vocab_size}, d_model: {d_model}, "
                 f"max_seq_len: {TASK.seq_len}, init_std: 0.05, tie_embeddings: true, "
                 f"norm: {{type: rmsnorm}}}}\ncomponents:\n{components}layout: \"{layout}\"\n")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def run(mixer: str | None) -> dict:
    model = build(recall_spec(mixer), seed=SEED)
    t0 = time.perf_counter()
    result = train(model, STEPS, seed=SEED, task=TASK, **TRAINING)
    result["wall_s"] = time.perf_counter() - t0
    return result


def test_task_batches_and_levels():
    """Batches hold what the task says, and the levels the thresholds are stated against
    (exact) agree with a Monte Carlo estimate of the recall-free predictor."""
    task = RecallTask(n_pairs=6, n_queries=4, n_keys=10, n_values=5)
    tokens, labels = task.batch(512, torch.Generator().manual_seed(0))
    assert tokens.shape == labels.shape == (512, task.seq_len)
    keys, values, queries = tokens[:, 0:12:2], tokens[:, 1:12:2], tokens[:, 12:]
    assert (keys < 10).all() and (values >= 10).all() and (values < 15).all()
    assert all(len(set(row.tolist())) == 6 for row in keys)          # distinct keys
    assert all(len(set(row.tolist())) == 4 for row in queries)       # no key asked twice
    assert (labels[:, :12] == -100).all()
    where = (queries[:, :, None] == keys[:, None, :]).float().argmax(-1)  # pair of each query
    assert (queries == keys.gather(1, where)).all()
    assert (labels[:, 12:] == values.gather(1, where)).all()
    # recall-free predictor: p(v) = count of v among the pair values / n_pairs
    counts = (values[:, None, :] == labels[:, 12:, None]).sum(-1).float()
    assert -(counts / 6).log().mean().item() == pytest.approx(task.recall_free_loss, abs=0.03)
    top = (values[:, :, None] == values[:, None, :]).sum(-1).max(-1).values.float() / 6
    assert top.mean().item() == pytest.approx(task.recall_free_accuracy, abs=0.02)
    assert TASK.chance_loss == pytest.approx(2.0794, abs=1e-4)
    assert TASK.recall_free_loss == pytest.approx(1.1395, abs=1e-4)
    assert TASK.recall_free_accuracy == pytest.approx(0.4121, abs=1e-4)


@pytest.mark.parametrize("kind", list(MIXERS))
def test_component_learns_associative_recall(kind):
    r = run(MIXERS[kind])
    msg = (f"{kind}: loss {r['initial_loss']:.3f} -> {r['final_loss']:.3f}, accuracy "
           f"{r['accuracy']:.3f} (chance {TASK.chance_loss:.3f} / {TASK.chance_accuracy:.3f}, "
           f"recall-free {TASK.recall_free_loss:.3f} / {TASK.recall_free_accuracy:.3f}), "
           f"{r['wall_s']:.1f} s")
    assert r["initial_loss"] > TASK.chance_loss, msg          # untrained: at or above chance
    assert r["final_loss"] < 0.75 * TASK.chance_loss, msg     # it mixes the sequence
    assert r["accuracy"] > 0.30, msg
    if kind in BINDS:                                         # and binds keys to values
        assert r["final_loss"] < 0.40, msg
        assert r["accuracy"] > 0.85, msg


def test_mlp_only_control_stays_at_chance():
    """Without a mixer no token sees another: the thresholds above cannot be met by the MLPs,
    the embeddings or the training loop alone."""
    r = run(None)
    assert r["final_loss"] > 0.95 * TASK.chance_loss, r["final_loss"]
    assert r["accuracy"] < 0.2, r["accuracy"]
