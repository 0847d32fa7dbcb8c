"""A training run's settings (TrainConfig: the fields are `archspec train`'s flags) and their
checks. No torch import: `archspec --help` and the CLI parser read the defaults from here."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TrainError
from .schedule import SCHEDULES

DTYPES = ("bf16", "fp32")


@dataclass
class TrainConfig:
    """A run's settings; each is the `archspec train` flag of the same name (`--batch-size`)."""

    data: list[str]
    out: str = "runs/train"
    steps: int = 1000
    batch_size: int = 8  # sequences per optimizer step, over all ranks and micro-batches
    seq_len: int | None = None  # default: min(256, the model's max_seq_len)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 100
    schedule: str = "cosine"
    grad_accum: int = 1
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    dtype: str = "fp32"
    device: str | None = None  # default: cuda when available, else cpu
    compile: bool = False
    activation_checkpointing: bool = False  # per sublayer (distributed runs and single-process ones)
    checkpoint_every: int = 0  # 0: at the end only
    keep_checkpoints: int = 2
    eval_fraction: float = 0.05
    eval_every: int = 0  # 0: at each checkpoint and at the end
    eval_sequences: int = 64
    tokenizer: str | None = None
    seed: int = 0
    resume: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    out: Path
    step: int  # the last step run
    losses: list[float] = field(default_factory=list)  # this call's per-step training losses
    eval_loss: float | None = None


# settings that change which batches a step sees: a resume with other values is no exact continuation
ORDER_SETTINGS = ("batch_size", "seq_len", "seed", "data", "eval_fraction", "tokenizer")


def check_config(cfg: TrainConfig, world: int = 1) -> None:
    """A TrainError naming the flag of the first setting out of range (`world`: processes)."""
    def need(ok: bool, flag: str, what: str) -> None:
        if not ok:
            raise TrainError(f"{flag}: {what}")
    need(isinstance(cfg.data, (list, tuple)) and len(cfg.data) > 0, "--data", "give one or more data files")
    for name in ("steps", "batch_size", "grad_accum", "keep_checkpoints", "eval_sequences"):
        v = getattr(cfg, name)
        need(isinstance(v, int) and v >= 1, f"--{name.replace('_', '-')}", f"must be an integer >= 1, got {v!r}")
    for name in ("warmup", "checkpoint_every", "eval_every"):
        v = getattr(cfg, name)
        need(isinstance(v, int) and v >= 0, f"--{name.replace('_', '-')}", f"must be an integer >= 0, got {v!r}")
    need(cfg.seq_len is None or (isinstance(cfg.seq_len, int) and cfg.seq_len >= 1), "--seq-len",
         f"must be an integer >= 1, got {cfg.seq_len!r}")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, "--lr", f"must be a finite number > 0, got {cfg.lr}")
    need(0 <= cfg.min_lr_ratio <= 1, "--min-lr-ratio", f"must be in [0, 1], got {cfg.min_lr_ratio}")
    need(math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0, "--weight-decay",
         f"must be >= 0, got {cfg.weight_decay}")
    need(math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0, "--grad-clip", f"must be >= 0, got {cfg.grad_clip}")
    need(0 <= cfg.eval_fraction < 1, "--eval-fraction", f"must be in [0, 1), got {cfg.eval_fraction}")
    need(cfg.schedule in SCHEDULES, "--schedule", f"'{cfg.schedule}' is not one of {', '.join(SCHEDULES)}")
    need(cfg.dtype in DTYPES, "--dtype", f"'{cfg.dtype}' is not one of {', '.join(DTYPES)}")
    need(cfg.batch_size % (world * cfg.grad_accum) == 0, "--batch-size",
         f"{cfg.batch_size} sequences do not split evenly over {world} process(es) x --grad-accum "
         f"{cfg.grad_accum} micro-batches; give a multiple of {world * cfg.grad_accum}")
