"""Synthetic associative recall (MQAR-style, Arora et al. 2023, "Zoology") and a small training
loop: the learning checks of tests/test_learning.py and benchmarks/bench_recall.py.

A sequence shows `n_pairs` (key, value) pairs, then asks `n_queries` of its keys again, in a
random order; the answer to each query is the value that followed that key:

    tokens:  k1 v1 k2 v2 ... kP vP | q1 q2 ... qQ        (each q_i one of k1..kP, no repeats)
    labels:  -100 ...          -100 | v(q1) v(q2) ... v(qQ)

Keys are drawn without replacement from the key vocabulary [0, n_keys), values with replacement
from the value vocabulary [n_keys, n_keys + n_values), so the two never overlap and a value
cannot be guessed from its key: only recalling the pair from earlier in the sequence helps.
Labels follow archspec's convention (`labels[b, t]` is the target of position t, already
shifted; -100 is ignored): the label of a query position is the queried key's value, every
other position is -100. A model that has learned only the output distribution sits at the
chance loss ln(n_values) and chance accuracy 1 / n_values.

    task = RecallTask(n_pairs=8, n_queries=8, n_keys=16, n_values=16)
    tokens, labels = task.batch(32, torch.Generator().manual_seed(0))   # int64 [32, 24] each
    result = train(model, steps=300, batch=32, lr=3e-3, seed=0, task=task)
    result["final_loss"], result["accuracy"], result["losses"]

`train` runs AdamW on `model(tokens, labels=labels).loss` (the language-model loss over the
query positions plus any auxiliary loss the model adds, e.g. MoM's load balancing) and
evaluates the query loss and recall accuracy on a held-out batch drawn from a different
random stream than the training batches.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class RecallTask:
    """Shape of the associative-recall task; see the module docstring."""

    n_pairs: int = 8
    n_queries: int = 8
    n_keys: int = 16
    n_values: int = 16

    def __post_init__(self):
        if min(self.n_pairs, self.n_queries, self.n_keys, self.n_values) < 1:
            raise ValueError(f"every size of the task must be >= 1: {self}")
        if self.n_pairs > self.n_keys:
            raise ValueError(f"n_pairs={self.n_pairs} distinct keys need n_keys >= n_pairs (got {self.n_keys})")
        if self.n_queries > self.n_pairs:
            raise ValueError(f"n_queries={self.n_queries} re-asks keys without repeats: needs "
                             f"n_queries <= n_pairs={self.n_pairs}")

    @property
    def vocab_size(self) -> int:
        return self.n_keys + self.n_values

    @property
    def seq_len(self) -> int:
        return 2 * self.n_pairs + self.n_queries

    @property
    def chance_loss(self) -> float:
        """Query loss (nats) of a model that knows only that answers are uniform values."""
        return math.log(self.n_values)

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / self.n_values

    @property
    def recall_free_loss(self) -> float:
        """The least expected query loss without associative recall (exact).

        A model that remembers which values occurred in the sequence (with multiplicity) but not
        which key each followed can do no better than p(v) = count(v) / n_pairs: the queried pair
        is then uniform among the pairs. Its loss is E[-ln(c / P)], where c - 1, the number of
        other pairs sharing the answer's value, is Binomial(P - 1, 1 / n_values). Loss below
        this level means keys are being bound to their values."""
        p, r = self.n_pairs, 1.0 / self.n_values
        return sum(math.comb(p - 1, j) * r ** j * (1 - r) ** (p - 1 - j) * -math.log((j + 1) / p)
                   for j in range(p))

    @property
    def recall_free_accuracy(self) -> float:
        """Accuracy of that predictor answering its most frequent value: E[max count] / n_pairs
        for counts ~ Multinomial(n_pairs, uniform over n_values) (exact, by counting)."""
        p, n = self.n_pairs, self.n_values

        def at_most(m: int) -> int:  # sequences of p values in which no value occurs > m times
            ways = [1] + [0] * p     # ways[t]: sequences of length t over the values so far
            for _ in range(n):
                ways = [sum(math.comb(t, i) * ways[t - i] for i in range(min(m, t) + 1))
                        for t in range(p + 1)]
            return ways[p]
        expected_max = sum(n ** p - at_most(m) for m in range(p)) / n ** p
        return expected_max / p

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, labels), int64 [size, seq_len] each, drawn from `generator` (CPU)."""
        p, q = self.n_pairs, self.n_queries
        keys = torch.rand(size, self.n_keys, generator=generator).argsort(-1)[:, :p]   # distinct
        values = self.n_keys + torch.randint(0, self.n_values, (size, p), generator=generator)
        asked = torch.rand(size, p, generator=generator).argsort(-1)[:, :q]           # which pairs
        tokens = torch.empty(size, self.seq_len, dtype=torch.int64)
        tokens[:, 0:2 * p:2] = keys
        tokens[:, 1:2 * p:2] = values
        tokens[:, 2 * p:] = keys.gather(1, asked)
        labels = torch.full_like(tokens, IGNORE)
        labels[:, 2 * p:] = values.gather(1, asked)
        return tokens, labels


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(query loss in nats, recall accuracy) of `model` on one batch."""
    was_training = model.training
    model.eval()
    try:
        out = model(tokens, labels=labels)
    finally:
        model.train(was_training)
    mask = labels != IGNORE
    accuracy = (out.logits.argmax(-1)[mask] == labels[mask]).float().mean().item()
    return out.lm_loss.item(), accuracy


def train(model, steps: int, batch: int = 32, lr: float = 3e-3, seed: int = 0,
          task: RecallTask | None = None, *, weight_decay: float = 0.0, warmup: int = 0,
          eval_batch: int = 256, clip: float | None = 1.0, device: str | torch.device = "cpu") -> dict:
    """Train `model` (an archspec CausalLM, already initialised) on `task` (default
    RecallTask()) with AdamW for `steps` batches of `batch` sequences.

    The learning rate warms up linearly over `warmup` steps, then stays at `lr`; gradients are
    clipped to norm `clip` (None: no clipping). Training batches come from
    `torch.Generator().manual_seed(seed)`, the held-out batch of `eval_batch` sequences from
    seed + 1_000_003, a different stream. Returns a JSON-ready dict:
    `losses` (the query loss of every training batch), `initial_loss` and `initial_accuracy`
    (held-out, before training), `final_loss` and `accuracy` (held-out, after), `chance_loss`,
    `chance_accuracy`, `steps`, `train_s` (wall-clock seconds of the training loop).
    """
    task = RecallTask() if task is None else task
    gen = torch.Generator().manual_seed(seed)
    held_out = task.batch(eval_batch, torch.Generator().manual_seed(seed + 1_000_003))
    held_out = tuple(x.to(device) for x in held_out)
    initial_loss, initial_accuracy = evaluate(model, *held_out)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        if warmup:
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup)
        tokens, labels = (x.to(device) for x in task.batch(batch, gen))
        out = model(tokens, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(out.lm_loss.item())
    train_s = time.perf_counter() - t0
    final_loss, accuracy = evaluate(model, *held_out)
    return {"losses": losses, "initial_loss": initial_loss, "initial_accuracy": initial_accuracy,
            "final_loss": final_loss, "accuracy": accuracy, "chance_loss": task.chance_loss,
            "chance_accuracy": task.chance_accuracy, "steps": steps, "train_s": train_s}
