"""`torchrun --nproc_per_node 2 archspec train ...` on the CPU (gloo): FSDP2 sharding
(archspec/parallel.py) gives the one-process run's losses, and checkpoints reshard between
world sizes. Each torchrun costs ~10-30 s here (process start, rendezvous, imports), so these
are slow tests."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from archspec.train import TrainError
from archspec.train.config import TrainConfig, check_config

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "specs" / "tiny.yaml")
# Two ranks sum the same per-token losses and gradients as one process, in another order
# (each rank averages its half, then the reduce-scatter averages the halves): float32 rounding,
# which Adam's normalised updates carry forward. Over 20 steps the losses (~5) differed by at
# most 1.4e-7 relative when measured; 1e-5 leaves 70x room without hiding a real error (a wrong
# batch split or a gradient off by the world size moves the losses by > 1e-2).
RTOL = 1e-5


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *args], env=_env(), capture_output=True,
                          text=True, timeout=600)


def _archspec_train(out: Path, data: Path, steps: int, *extra: str, nproc: int = 1) -> None:
    args = ["-m", "archspec", "train", TINY, "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--batch-size", "4", "--seq-len", "32", "--warmup", "2", "--checkpoint-every", "10",
            "--eval-sequences", "7", "--no-progress", *extra]
    if nproc == 1:
        done = subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True, timeout=600)
    else:
        done = torchrun(*args, nproc=nproc)
    assert done.returncode == 0, done.stderr[-3000:]


def losses(out: Path, key: str = "loss") -> list[float]:
    return [m[key] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in m]


def _resume_copy(src: Path, dst: Path) -> Path:
    """A copy of run `src` as if stopped after its step-10 checkpoint."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / "step-00000020")
    return dst


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "readme.txt"
    path.write_bytes((ROOT / "README.md").read_bytes()[:24_000])
    return path


@pytest.mark.slow
def test_two_ranks_match_one_and_checkpoints_reshard(text, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _archspec_train(one, text, 20)
    _archspec_train(two, text, 20, nproc=2)
    l1, l2 = losses(one), losses(two)
    assert len(l1) == len(l2) == 20
    assert l2 == pytest.approx(l1, rel=RTOL)
    # 7 held-out sequences: shares of 4 and 3, the shorter padded with a weight-0 repeat
    assert len(losses(one, "eval_loss")) == 2 and losses(two, "eval_loss") == pytest.approx(
        losses(one, "eval_loss"), rel=RTOL)
    assert l1[-1] < l1[0] - 0.3  # it learns: the comparison is not of two flat lines
    assert sorted(p.name for p in (two / "checkpoints" / "step-00000020").iterdir()
                  if p.suffix == ".distcp") == ["__0_0.distcp", "__1_0.distcp"]  # one shard per rank
    # written by two ranks, resumed on one; written by one, resumed on two
    two_to_one = _resume_copy(two, tmp_path / "two-to-one")
    _archspec_train(two_to_one, text, 20, "--resume")
    one_to_two = _resume_copy(one, tmp_path / "one-to-two")
    _archspec_train(one_to_two, text, 20, "--resume", nproc=2)
    assert losses(two_to_one) == pytest.approx(l1, rel=RTOL)
    assert losses(one_to_two) == pytest.approx(l1, rel=RTOL)
    from archspec.checkpoint import load_saved
    a, _ = load_saved(one)
    for out in (two, two_to_one, one_to_two):  # the saved model gathered from the shards
        b, _ = load_saved(out)
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            # weights move by lr (3e-4) a step; 1e-5 absolute is far below one step's change
            assert torch.allclose(x, y, rtol=0, atol=1e-5), (out.name, name)


FROZEN_SCRIPT = """
import sys, json, torch
import archspec.train.loop as loop
from archspec.train import train
original = loop.load_model
def frozen(source, device, seed):
    model, spec = original(source, device, seed)
    for p in model.sublayers[0].parameters():
        p.requires_grad_(False)
    return model, spec
loop.load_model = frozen
spec, data, out, ac = sys.argv[1:5]
train(spec, [data], out=out, steps=3, batch_size=4, seq_len=32, warmup=1, progress=False,
      activation_checkpointing=ac == "1")
"""


@pytest.mark.slow
def test_hydra_shards_with_moe_shared_pkm_values_frozen_parts_and_activation_checkpointing(text, tmp_path):
    """hydra-tiny: MoE experts, two PKMs sharing one value table (model.shared), sparse
    attention; sublayer 0 frozen; activation checkpointing on two ranks."""
    script = tmp_path / "frozen_train.py"
    script.write_text(textwrap.dedent(FROZEN_SCRIPT))
    hydra = str(ROOT / "specs" / "hydra-tiny.yaml")
    one, two = tmp_path / "one", tmp_path / "two"
    done = subprocess.run([sys.executable, str(script), hydra, str(text), str(one), "0"], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = torchrun(str(script), hydra, str(text), str(two), "1")
    assert done.returncode == 0, done.stderr[-3000:]
    first = [json.loads((d / "metrics.jsonl").read_text().splitlines()[0]) for d in (one, two)]
    # step 1 runs the same weights on the same 4 sequences: the LM loss is a mean over the same
    # tokens (float32 rounding: RTOL). The aux losses are not: load balance is a product of two
    # batch means, so each rank's half-batch value differs from the whole batch's.
    assert first[1]["lm_loss"] == pytest.approx(first[0]["lm_loss"], rel=RTOL)
    from archspec.checkpoint import load_saved
    from archspec.codegen.build import build
    fresh = build(load_saved(one)[1], dtype="float32", seed=0).state_dict()
    trained_one, trained_two = load_saved(one)[0].state_dict(), load_saved(two)[0].state_dict()
    assert any(k.startswith("shared.") for k in trained_two)
    for name, before in fresh.items():
        if name.startswith("sublayers.0."):
            assert torch.equal(before, trained_two[name]), name  # frozen under FSDP too
        else:
            assert not torch.equal(before, trained_two[name]) or name.endswith("gates") or "norm" in name, name
        # three steps apart only by aux-loss rounding and summation order: close, not equal
        assert torch.allclose(trained_one[name], trained_two[name], rtol=0, atol=5e-3), name


def test_a_global_batch_the_world_size_does_not_divide():
    with pytest.raises(TrainError, match="--batch-size: 6 sequences do not split evenly over 4 process"):
        check_config(TrainConfig(data=["x"], batch_size=6), world=4)
    check_config(TrainConfig(data=["x"], batch_size=8), world=4)


@pytest.mark.slow
def test_bad_input_under_torchrun_stops_every_rank_with_one_message(text, tmp_path):
    (tmp_path / "file").write_text("")
    for extra, needle in ((["--batch-size", "3"], "--batch-size: 3 sequences do not split evenly over 2"),
                          (["--out", str(tmp_path / "file" / "run")], "not writable")):
        done = torchrun("-m", "archspec", "train", TINY, "--data", str(text), "--steps", "2", "--seq-len", "32",
                        "--batch-size", "4", "--out", str(tmp_path / "out"), "--no-progress", *extra)
        # every rank exits 2 (torchrun itself then exits 1); rank 0 alone says why; none hangs
        assert done.returncode != 0 and "exitcode: 2" in done.stderr
        assert done.stderr.count("archspec: error:") == 1 and needle in done.stderr
    assert not (tmp_path / "out").exists()


def test_shard_needs_a_process_group():
    from archspec.codegen.build import build
    from archspec.parallel import shard
    from archspec.spec import load
    with pytest.raises(RuntimeError, match="needs torch.distributed initialised"):
        shard(build(load(TINY), seed=0))
