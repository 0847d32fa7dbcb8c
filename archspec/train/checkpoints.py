"""A training run's output directory and its checkpoints.

    OUT/archspec.json, OUT/model.safetensors   the model at the last checkpoint and at the end:
                                               a saved model (archspec/checkpoint.py), so
                                               `archspec generate OUT` and load_saved(OUT) read it
    OUT/metrics.jsonl                          one JSON object per step and per evaluation
    OUT/checkpoints/step-00000100/             a complete checkpoint:
        .metadata, __*_*.distcp                  model, optimizer, RNG (torch.distributed.checkpoint,
                                                 one shard file per rank: any world size loads it)
        archspec.json                            the resolved spec trained (checked on resume)
        train_state.json                         step, data position, scheduler, the run's settings

A checkpoint is written into OUT/checkpoints/.partial-step-N, and renamed to step-N only once
every file is complete and synced: train_state.json is written last, so a step-N directory
without it is not a checkpoint. A run killed while writing leaves only the .partial directory,
which is ignored and removed by the next run; `--resume` takes the newest complete checkpoint.
The older ones beyond `keep` are removed after a new one is in place.

The saved model is written as archspec.save writes it (into a work directory, then each file
renamed into OUT); the two renames are not one atomic step, so a kill between them leaves a
model whose archspec.json does not match its weights (load_saved says so), and the next
checkpoint or `--resume` run writes it again.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..checkpoint import SPEC_FILE, WEIGHTS_FILE, distinct_tensors, save
from ..checkpoint_json import read_record, record
from .errors import TrainError

CHECKPOINTS, STATE_FILE, METRICS_FILE = "checkpoints", "train_state.json", "metrics.jsonl"
PARTIAL = ".partial-"
STEP_DIR = re.compile(r"step-(\d{8})")


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def on_rank0(fn, *args):
    """fn(*args) on rank 0 only; a TrainError there is raised on every rank (the others would
    otherwise wait for rank 0 at the next collective forever). Returns fn's result on rank 0."""
    rank, world = rank_world()
    result, error = None, None
    if rank == 0:
        try:
            result = fn(*args)
        except TrainError as e:
            error = str(e)
    if world > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise TrainError(error)
    return result


def prepare_out(out: str | os.PathLike, resume: bool) -> Path:
    """OUT, created and checked writable (a probe file written and removed). Without `resume`,
    an OUT holding a run is refused; with it, one without a complete checkpoint is."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise TrainError(f"--out {out}: is a file; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".archspec-train-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"--out {out}: not writable ({e.strerror or e}); choose another directory") from None
    if resume:
        if not complete_checkpoints(path):
            raise TrainError(f"--resume: {path / CHECKPOINTS} holds no complete checkpoint to resume "
                             "from; drop --resume to start a new run")
    elif (path / CHECKPOINTS).is_dir() and any((path / CHECKPOINTS).iterdir()) or (path / METRICS_FILE).exists():
        raise TrainError(f"--out {out}: holds a training run already; continue it with --resume, or "
                         "choose another --out")
    return path


def complete_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint in OUT, oldest first."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.fullmatch(p.name))]
    return sorted((s, p) for s, p in found if (p / STATE_FILE).is_file())


def remove_partials(out: Path) -> None:
    """Remove checkpoints a killed run left half-written (rank 0 only)."""
    root = out / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(PARTIAL):
                shutil.rmtree(p, ignore_errors=True)


def spec_text(model) -> str:
    """archspec.json's text for `model` (unsharded, as built): the spec a checkpoint belongs to."""
    _, aliases = distinct_tensors(model.state_dict())
    return json.dumps(record(model, aliases), indent=2) + "\n"


def _quiet():
    """DCP warns that it assumes one process when no process group exists: that is intended."""
    w = warnings.catch_warnings()
    w.__enter__()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    return w


def save_checkpoint(out: Path, step: int, model, optimizer, state: dict, spec_json: str, keep: int) -> Path:
    """Write checkpoint step-N (module docstring); every rank calls it."""
    rank, _ = rank_world()
    root = out / CHECKPOINTS
    tmp, final = root / f"{PARTIAL}step-{step:08d}", root / f"step-{step:08d}"
    if rank == 0:
        root.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    w = _quiet()
    try:
        dcp.save({"model": model_sd, "optim": optim_sd, "rng": torch.get_rng_state()}, checkpoint_id=str(tmp))
    finally:
        w.__exit__(None, None, None)
    barrier()
    if rank == 0:
        (tmp / SPEC_FILE).write_text(spec_json)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # a checkpoint of this step from an earlier, longer-lived attempt
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync(root)
        for _, old in complete_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_spec(directory: Path, spec) -> None:
    """A TrainError when the checkpoint in `directory` is of another spec than `spec`, saying
    what differs as `archspec diff` does, or when its archspec.json is damaged."""
    from ..diff import diff, render
    from ..errors import CheckpointError
    path = directory / SPEC_FILE
    try:
        text = path.read_text()
        saved = read_record(json.loads(text), str(path), text).spec
    except (OSError, ValueError, CheckpointError) as e:
        raise TrainError(f"--resume: checkpoint {directory} is damaged: {path.name}: "
                         f"{str(e).splitlines()[0]}; delete that directory to resume from the one before") from None
    d = diff(saved, spec)
    if d.different:
        changes = render(d, "table").split("\nCosts")[0].rstrip()
        raise TrainError(f"--resume: checkpoint {directory} is of another spec than the one given "
                         f"(what differs, checkpoint -> now):\n{changes}\n"
                         "train the spec the run was started with, or start a new run in another --out")


def load_checkpoint(directory: Path, model, optimizer) -> dict:
    """Load model, optimizer and RNG from the checkpoint in `directory` (any world size wrote it)
    into `model` and `optimizer` (sharded or not); returns its train_state.json."""
    try:
        state = json.loads((directory / STATE_FILE).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no integer 'step'")
        model_sd, optim_sd = get_state_dict(model, optimizer)
        sd = {"model": model_sd, "optim": optim_sd, "rng": torch.get_rng_state()}
        w = _quiet()
        try:
            dcp.load(sd, checkpoint_id=str(directory))
        finally:
            w.__exit__(None, None, None)
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP raises many kinds; its CheckpointException is a BaseException
        raise TrainError(f"--resume: checkpoint {directory} is damaged ({_cause(e)}); delete that "
                         "directory to resume from the one before") from None
    torch.set_rng_state(sd["rng"])
    return state


def _cause(e: BaseException) -> str:
    """One line for an error: DCP's CheckpointException carries each rank's traceback as its
    text, whose last line is the error itself."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def full_state_dict(model) -> dict:
    """The whole model's tensors on the CPU (gathered from every rank when sharded; on rank 0)."""
    if rank_world()[1] == 1 and not _sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _sharded(model) -> bool:
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def export_model(out: Path, plain_model, state: dict | None = None) -> None:
    """Write OUT/archspec.json and OUT/model.safetensors (module docstring) from `plain_model`
    (an unsharded CausalLM built by archspec), with `state` loaded into it first when given."""
    if state is not None:
        plain_model.load_state_dict(state)
    work = out / f".export-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    save(plain_model, work)
    os.replace(work / WEIGHTS_FILE, out / WEIGHTS_FILE)
    os.replace(work / SPEC_FILE, out / SPEC_FILE)
    shutil.rmtree(work, ignore_errors=True)
