"""archspec.save / archspec.load_saved: round trips (plain, tied, parallel groups with overrides,
shared weights, aliased tensors), rebuilding from the saved configs rather than today's
defaults, damaged directories whose errors list several problems at once (the corpus of every
class of damage is tests/test_checkpoint_damage.py), atomic writes, and the directories the
format before this one wrote (model.pt + spec.resolved.json)."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import safetensors.torch
import torch

import archspec
from archspec import components as C
from archspec.checkpoint import SPEC_FILE, WEIGHTS_FILE, WORK_PREFIX, recover_orphans
from archspec.cli import main
from archspec.codegen.build import build
from archspec.errors import CheckpointError
from archspec.spec import load

from conftest import GOOD

SPECS = Path(__file__).resolve().parent.parent / "specs"
TINY = SPECS / "tiny.yaml"  # tied embeddings
PARALLEL_OVERRIDES = """\
model: {name: po, vocab_size: 128, d_model: 32, max_seq_len: 64}
components:
  A: {type: attention, n_heads: 2, n_kv_heads: 1}
  F: {type: mlp, d_ff: 64}
layout: "[A | F] A F [A | F]"
overrides:
  - {at: 0, component: F, set: {d_ff: 96}}
  - {at: 2, set: {d_ff: 48}}
  - {at: 1, set: {window: 8}}
"""

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tokens(spec, n: int = 12) -> torch.Tensor:
    return torch.randint(0, spec.model.vocab_size, (2, n), generator=torch.Generator().manual_seed(0))


def saved(tmp_path, spec_path, name: str = "saved", **kw) -> tuple:
    """(model, directory): a seeded build of the spec, saved."""
    model = build(load(spec_path), seed=3, **kw)
    return model, archspec.save(model, tmp_path / name)


def instances(spec) -> list[tuple]:
    """Everything the build reads of each instance, in order: norm, definitions, members."""
    out = [("norm", spec.norm.type, spec.norm.config, spec.norm.backend, spec.norm.written)]
    out += [(k, v.type, v.config, v.backend, v.written, v.overrides) for k, v in spec.components.items()]
    out += [(s.index, m.name, m.type, m.config, m.backend, m.written, m.overrides)
            for s in spec.sublayers for m in s.members]
    return out


def edit_json(directory: Path, change) -> None:
    path = directory / SPEC_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def edit_weights(directory: Path, change) -> None:
    path = directory / WEIGHTS_FILE
    state = safetensors.torch.load_file(path)
    change(state)
    safetensors.torch.save_file(state, path)


def load_error(directory, **kw) -> str:
    with pytest.raises(CheckpointError) as info:
        archspec.load_saved(directory, **kw)
    assert isinstance(info.value, ValueError)  # what callers (and the CLI) catch
    return str(info.value)


# --- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["plain", "tied", "parallel+overrides", "shared weights"])
def test_round_trip_is_bit_identical(kind, tmp_path, write):
    spec_path = {"plain": write(GOOD), "tied": TINY, "parallel+overrides": write(PARALLEL_OVERRIDES),
                 "shared weights": SPECS / "pkm-tiny.yaml"}[kind]
    model, directory = saved(tmp_path, spec_path)
    assert sorted(p.name for p in directory.iterdir()) == [SPEC_FILE, WEIGHTS_FILE]
    loaded, spec = archspec.load_saved(directory)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in loaded.state_dict().items())
    assert instances(spec) == instances(model.spec)
    assert asdict(spec.model) == asdict(model.spec.model)
    x = tokens(spec)
    assert torch.equal(loaded(x).logits, model(x).logits)
    # what each kind is there to exercise
    if kind == "tied":
        assert loaded.tied and "lm_head.weight" not in loaded.state_dict()
    if kind == "parallel+overrides":
        assert [s.symbols for s in spec.sublayers] == [("A", "F"), ("A",), ("F",), ("A", "F")]
        assert spec.sublayers[0].members[1].config["d_ff"] == 96
        assert spec.sublayers[2].members[0].overrides == {"d_ff": 48}
        assert spec.sublayers[1].members[0].config["window"] == 8
        assert spec.sublayers[3].members[1].config["d_ff"] == 64  # the definition's
        assert loaded.sublayers[0].gates is not None
    if kind == "shared weights":
        # one value table, stored once, read by both PKM sublayers
        assert [n for n in loaded.state_dict() if n.startswith("shared.")] == ["shared.pkm_values_mem.weight"]
        assert torch.equal(loaded.shared["pkm_values_mem"].weight, model.shared["pkm_values_mem"].weight)


def test_tensors_sharing_memory_are_stored_once_and_restored(tmp_path, write):
    # safetensors refuses shared storage: a weight reachable under two names is stored once
    model = build(load(write(GOOD)), seed=1)
    model.lm_head.weight = model.embedding.weight  # the same Parameter under two names
    directory = archspec.save(model, tmp_path / "aliased")
    stored = safetensors.torch.load_file(directory / WEIGHTS_FILE)
    aliases = json.loads((directory / SPEC_FILE).read_text())["weights"]["aliases"]
    assert aliases == {"lm_head.weight": "embedding.weight"} and "lm_head.weight" not in stored
    loaded, spec = archspec.load_saved(directory)
    assert torch.equal(loaded.lm_head.weight, model.embedding.weight)
    x = tokens(spec)
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_saved_dtype_and_record(tmp_path):
    model, directory = saved(tmp_path, TINY, dtype="bfloat16")
    record = json.loads((directory / SPEC_FILE).read_text())
    assert record["format_version"] == 1
    assert record["build"]["dtype"] == "bfloat16" and record["build"]["params"] == 115_008
    assert record["build"]["backends"]["sublayers.0.A"] == "reference"
    assert record["sublayers"][0]["members"][0]["config"]["head_dim"] == 16  # derived, saved
    assert record["components"]["F"]["written"] == ["activation", "d_ff"]
    loaded, _ = archspec.load_saved(directory)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_saved_configs_win_over_a_changed_default(tmp_path, monkeypatch):
    model, directory = saved(tmp_path, TINY)
    assert model.spec.components["A"].config["rope_theta"] == 10000.0  # the default at save time
    # a later archspec changes the default
    monkeypatch.setitem(C.get("attention").schema["properties"]["rope_theta"], "default", 500000.0)
    assert load(TINY).components["A"].config["rope_theta"] == 500000.0  # the YAML takes it up
    loaded, spec = archspec.load_saved(directory)
    assert {m.config["rope_theta"] for s in spec.sublayers for m in s.members if m.type == "attention"} \
        == {10000.0}
    x = tokens(spec)
    assert torch.equal(loaded(x).logits, model(x).logits)
    # and the change would have mattered: the same weights under the new default compute otherwise
    rebuilt = build(load(TINY))
    rebuilt.load_state_dict(model.state_dict())
    assert not torch.allclose(rebuilt(x).logits, model(x).logits)


def test_backends_are_chosen_for_the_loading_device(tmp_path):
    model, directory = saved(tmp_path, TINY)
    # a save from a GPU machine records triton backends; they do not bind the loader
    edit_json(directory, lambda d: d["build"]["backends"].update({k: "triton" for k in d["build"]["backends"]}))
    loaded, spec = archspec.load_saved(directory)
    assert set(loaded.backends.values()) == {"reference"}
    x = tokens(spec)
    assert torch.equal(loaded(x).logits, model(x).logits)


# --- damaged directories (several problems at once; the corpus: test_checkpoint_damage.py) -------
def test_format_versions(tmp_path):
    _, directory = saved(tmp_path, TINY)
    edit_json(directory, lambda d: d.update(format_version=99))
    assert "format_version 99 was written by a newer archspec" in load_error(directory)
    edit_json(directory, lambda d: d.update(format_version="one"))
    assert "unknown format_version 'one'" in load_error(directory)
    edit_json(directory, lambda d: d.pop("format_version"))
    assert "no 'format_version'" in load_error(directory)


def test_missing_and_wrong_keys_are_located(tmp_path):
    _, directory = saved(tmp_path, TINY)

    def damage(d):
        del d["model"]["d_model"]
        del d["build"]

    edit_json(directory, damage)
    message = load_error(directory)
    assert "the saved spec is damaged (2 problems)" in message
    assert re.search(rf"{SPEC_FILE}:\d+:\d+: error at model: missing required key 'd_model'", message)
    assert "error: missing key 'build'" in message


def test_every_bad_config_is_reported_at_once(tmp_path):
    _, directory = saved(tmp_path, TINY)

    def damage(d):
        d["sublayers"][0]["members"][0]["config"]["n_heads"] = "four"  # schema
        del d["sublayers"][1]["members"][0]["config"]["d_ff"]  # a key the module needs
        d["sublayers"][3]["members"][0]["config"]["d_fff"] = 1  # unknown
        d["components"]["A"]["config"]["n_kv_heads"] = 3  # semantic: 4 heads in 3 groups
        d["sublayers"][2]["members"][0]["type"] = "atention"

    edit_json(directory, damage)
    message = load_error(directory)
    assert "(5 problems)" in message, message
    assert "error at sublayers[0].members[0].config.n_heads: expected an integer, got string 'four'" in message
    assert "error at sublayers[1].members[0].config: missing key 'd_ff'" in message
    assert "error at sublayers[3].members[0].config.d_fff: unknown key 'd_fff'" in message
    assert "hint: did you mean 'd_ff'?" in message
    assert "error at components.A.config.n_kv_heads:" in message
    assert "unknown sublayer type 'atention'" in message and "did you mean 'attention'?" in message
    lines = [ln for ln in message.splitlines() if "error at" in ln]
    assert all(re.match(rf".*{SPEC_FILE}:\d+:\d+: ", ln) for ln in lines)  # each one located


def test_inconsistent_structure(tmp_path):
    _, directory = saved(tmp_path, TINY)

    def damage(d):
        d["model"]["n_sublayers"] = 5
        d["sublayers"][1]["members"][0]["symbol"] = "Z"

    edit_json(directory, damage)
    message = load_error(directory)
    assert "says 5 sublayers, but 'sublayers' lists 4" in message
    assert "'Z' is not among the saved components" in message


def test_weights_that_do_not_fit_the_spec(tmp_path):
    _, directory = saved(tmp_path, TINY)
    edit_weights(directory, lambda s: s.update({"sublayers.1.members.F.up_proj.weight": torch.zeros(3, 64)}))
    message = load_error(directory)
    assert "tensor 'sublayers.1.members.F.up_proj.weight' is [3, 64] in the file, but the model built " \
           "from the saved spec needs [192, 64]" in message
    # the same from the other side: archspec.json edited, the weights as saved
    _, other = saved(tmp_path, TINY, "other")
    edit_json(other, lambda d: d["sublayers"][1]["members"][0]["config"].update(d_ff=96))
    message = load_error(other)
    assert "3 tensor(s) have the wrong shape" in message  # gate, up and down projections
    assert "tensor 'sublayers.1.members.F.gate_proj.weight' is [192, 64] in the file, but the model " \
           "built from the saved spec needs [96, 64]" in message


def test_missing_and_unexpected_tensors(tmp_path):
    _, directory = saved(tmp_path, TINY)
    edit_weights(directory, lambda s: (s.pop("final_norm.weight"), s.update(extra=torch.zeros(2))))
    message = load_error(directory)
    assert "lacks 1 tensor(s) the model needs: 'final_norm.weight'" in message
    assert "holds 1 tensor(s) the model does not have: 'extra'" in message


# --- saving: refusals and atomicity ---------------------------------------------------------------
def test_save_refuses_what_it_must_not_replace(tmp_path):
    model = build(load(TINY), seed=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        archspec.save(model, tmp_path / "full")
    with pytest.raises(CheckpointError, match="does not hold a saved model"):
        archspec.save(model, tmp_path / "full", overwrite=True)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="it is a file"):
        archspec.save(model, tmp_path / "file", overwrite=True)
    with pytest.raises(CheckpointError, match="no data"):
        archspec.save(build(load(TINY), meta=True), tmp_path / "meta")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(CheckpointError, match="cannot save to .*loop"):
        archspec.save(model, tmp_path / "loop" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full", "loop"]


def test_overwrite_replaces_a_saved_model(tmp_path):
    _, directory = saved(tmp_path, TINY)
    newer = build(load(TINY), seed=99)
    assert archspec.save(newer, directory, overwrite=True) == directory
    loaded, _ = archspec.load_saved(directory)
    assert torch.equal(loaded.embedding.weight, newer.embedding.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # nothing set aside is left


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch, failure):
    model = build(load(TINY), seed=0)
    real = safetensors.torch.save_file

    def half_then_fail(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)  # the weights are on disk, then the disk fills
        raise failure

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    expected = CheckpointError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        archspec.save(model, tmp_path / "out")
    if expected is CheckpointError:
        assert "No space left on device" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no target, no temporary directory


def test_a_failed_overwrite_keeps_the_old_model(tmp_path, monkeypatch):
    old, directory = saved(tmp_path, TINY)

    def fail(*args, **kwargs):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(CheckpointError, match="I/O error"):
        archspec.save(build(load(TINY), seed=5), directory, overwrite=True)
    monkeypatch.undo()
    loaded, _ = archspec.load_saved(directory)
    assert torch.equal(loaded.embedding.weight, old.embedding.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]


# A save that stops half-way: the child saves `tiny` (seed argv[3]) to argv[1] with overwrite,
# and pauses (prints "paused", then sleeps) at the point argv[2] names, to be SIGKILLed there.
KILLED_SAVE = """\
import sys, time
from pathlib import Path
import archspec
from archspec import checkpoint
from archspec.codegen.build import build
from archspec.spec import load

target, stage, seed, spec = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


def pause(*args, **kwargs):
    print("paused", flush=True)
    time.sleep(600)


if stage == "writing":  # the weights are written, archspec.json not yet
    checkpoint._write_text = pause
else:  # "swapping": the model being replaced is moved aside, the new one not yet in place
    rename = Path.rename

    def rename_then_pause(self, dest):
        moved = rename(self, dest)
        if Path(dest).name == "old":
            pause()
        return moved

    Path.rename = rename_then_pause
archspec.save(build(load(spec), seed=seed), target, overwrite=True)
"""


def kill_a_save(tmp_path: Path, target: Path, stage: str, seed: int, while_paused=None) -> None:
    """Run KILLED_SAVE in a child process, call while_paused() once it pauses at `stage`, then
    SIGKILL it (no handler, no finally block runs) and reap it."""
    script = tmp_path / "killed_save.py"
    script.write_text(KILLED_SAVE)
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, str(script), str(target), stage, str(seed), str(TINY)],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready and child.stdout.readline() == "paused\n", "the save did not reach its pause"
        if while_paused:
            while_paused()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()


def work_dirs(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(WORK_PREFIX))


def test_a_save_killed_while_writing_is_cleaned_by_the_next_save(tmp_path):
    old, directory = saved(tmp_path, TINY)

    def still_there():
        recover_orphans(tmp_path)  # a save that is alive holds its lock: its work is left alone
        assert len(work_dirs(tmp_path)) == 1

    kill_a_save(tmp_path, directory, "writing", seed=7, while_paused=still_there)
    assert len(work_dirs(tmp_path)) == 1  # the kill left the work directory, the target untouched
    loaded, _ = archspec.load_saved(directory)
    assert torch.equal(loaded.embedding.weight, old.embedding.weight)
    archspec.save(build(load(TINY), seed=8), tmp_path / "another")  # the next save into the parent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["another", "killed_save.py", "saved"]


@pytest.mark.parametrize("then", ["load", "save"])
def test_an_overwrite_killed_between_its_renames_is_undone(tmp_path, then):
    old, directory = saved(tmp_path, TINY)

    def moved_aside():
        assert not directory.exists() and len(work_dirs(tmp_path)) == 1
        with pytest.raises(CheckpointError, match="does not exist"):  # the save is alive: no recovery
            archspec.load_saved(directory)

    kill_a_save(tmp_path, directory, "swapping", seed=7, while_paused=moved_aside)
    assert not directory.exists()  # killed with the old model moved aside and the new not in place
    if then == "save":  # the old model is back before the target is judged: not replaced silently
        with pytest.raises(CheckpointError, match="exists and is not empty"):
            archspec.save(build(load(TINY), seed=9), directory)
    loaded, _ = archspec.load_saved(directory)  # the old one back: the killed save did not happen
    assert torch.equal(loaded.embedding.weight, old.embedding.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed_save.py", "saved"]


def test_recovery_leaves_a_save_that_has_not_locked_yet(tmp_path):
    """An unlocked work directory is a dead save's, unless it is empty and recent: then its save
    may have created it an instant ago and not yet taken the lock."""
    fresh, dead = (tmp_path / f"{WORK_PREFIX}out.{tag}" for tag in ("fresh", "dead"))
    fresh.mkdir()
    (dead / "new").mkdir(parents=True)
    recover_orphans(tmp_path)
    assert work_dirs(tmp_path) == [fresh.name]
    os.utime(fresh, (fresh.stat().st_atime, fresh.stat().st_mtime - 120))  # two minutes later
    recover_orphans(tmp_path)
    assert work_dirs(tmp_path) == []


def test_saved_files_follow_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        _, directory = saved(tmp_path, TINY)
    finally:
        os.umask(umask)
    assert directory.stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0o700
    assert {(p.stat().st_mode & 0o777) for p in directory.iterdir()} == {0o644}


# --- the format before this one -------------------------------------------------------------------
def write_format_0(model, directory: Path) -> None:
    """A directory as `archspec build --save` wrote it before format 1 (cli.save_model):
    torch.save of the state dict, and spec.resolved.json."""
    spec = model.spec

    def inst(m):
        return {"type": m.type, "backend": m.backend, "config": m.config,
                **({"overrides": m.overrides} if m.overrides else {})}

    resolved = {
        "archspec_version": "0.1.0", "source": spec.source, "files": spec.files,
        "layout": spec.layout_text, "model": asdict(spec.model), "norm": inst(spec.norm),
        "components": {k: inst(v) for k, v in spec.components.items()},
        "sublayers": [{"index": s.index, "members": {m.name: inst(m) for m in s.members}}
                      for s in spec.sublayers],
        "spec": spec.data,
        "build": {"dtype": "float32", "backends": {k: str(v) for k, v in model.backends.items()},
                  "params": sum(p.numel() for p in model.parameters())},
    }
    directory.mkdir()
    torch.save(model.state_dict(), directory / "model.pt")
    (directory / "spec.resolved.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")


def test_format_0_directories_load(tmp_path):
    model = build(load(SPECS / "tiny-rules.yaml"), seed=2)
    write_format_0(model, tmp_path / "old")
    loaded, spec = archspec.load_saved(tmp_path / "old")
    assert instances(spec) == instances(model.spec)  # `written` recovered from the saved spec
    assert spec.sublayers[8].members[0].config["window"] == 64  # the override survives
    x = tokens(spec)
    assert torch.equal(loaded(x).logits, model(x).logits)
    # and saving it again writes the current format
    again = archspec.save(loaded, tmp_path / "new")
    assert sorted(p.name for p in again.iterdir()) == [SPEC_FILE, WEIGHTS_FILE]


# --- the command line -----------------------------------------------------------------------------
def test_cli_reports_a_refused_save_cleanly(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["build", str(TINY), "--no-smoke", "--save", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("archspec: error: cannot save to") and "Traceback" not in err
    # --overwrite replaces a saved model, and only that
    assert main(["build", str(TINY), "--no-smoke", "--overwrite", "--save", str(tmp_path / "full")]) == 2
    assert "does not hold a saved model" in capsys.readouterr().err
    _, directory = saved(tmp_path, TINY)
    assert main(["build", str(TINY), "--no-smoke", "--seed", "8", "--overwrite", "--save", str(directory)]) == 0
    loaded, _ = archspec.load_saved(directory)
    assert torch.equal(loaded.embedding.weight, build(load(TINY), seed=8).embedding.weight)

