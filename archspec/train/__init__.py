"""Training a spec: `archspec train` and archspec.train.

    result = archspec.train("specs/hydra-tiny.yaml", data=["notes.txt"], out="runs/hydra",
                            steps=200, batch_size=8, seq_len=128)
    result = archspec.train("specs/hydra-tiny.yaml", data=["notes.txt"], out="runs/hydra",
                            steps=400, resume=True)        # continues from the last checkpoint
    model, spec = archspec.load_saved("runs/hydra")        # the trained model

The source is a spec file (a fresh build, seeded with `seed`) or a saved model directory (its
weights: a warm start). Every setting is a TrainConfig field and an `archspec train` flag of the
same name; every bad input is a TrainError (a ValueError) naming the file or flag, raised before
the first step and before anything is written.

    data.py         data files -> token streams -> windows, the resumable batch order
    schedule.py     warmup + cosine / linear / constant learning rate
    throughput.py   tokens/s, FLOP/s, MFU and the device peaks used
    checkpoints.py  the output directory; DCP checkpoints written atomically; the saved model
    config.py       TrainConfig (the settings) and their checks
    loop.py         the run: AdamW (no decay on 1-D parameters), clipping, accumulation, logging

Each step: the next global batch of batch_size sequences (split over ranks and grad_accum
micro-batches), loss = LM loss + the components' auxiliary losses (MoE and MoM balancing, logged
apart under "aux"), backward, global gradient norm clipped to grad_clip, AdamW step at the
schedule's learning rate. Under torchrun the model is sharded with FSDP2 (archspec/parallel.py).
"""
from __future__ import annotations

from typing import Callable

from .errors import TrainError
from .config import TrainConfig, TrainResult


def train(source: str, data: list[str] | str, *, on_step: Callable[[dict], None] | None = None,
          **settings) -> TrainResult:
    """Train `source` (spec file or saved model directory) on `data` (file paths); `settings`
    are TrainConfig's fields. `on_step(metrics)` is called after every step (raising from it
    stops the run, as a kill would). Returns the TrainResult (losses of this call's steps)."""
    from .loop import Run, init_distributed
    unknown = set(settings) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"train() got unknown settings: {', '.join(sorted(unknown))}")
    cfg = TrainConfig(data=[data] if isinstance(data, str) else list(data), **settings)
    import torch.distributed as dist
    owns_group = init_distributed(cfg)
    try:
        return Run(source, cfg, on_step).loop()
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["train", "TrainConfig", "TrainResult", "TrainError"]
