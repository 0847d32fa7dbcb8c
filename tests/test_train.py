"""`archspec train` and archspec.train.train (archspec/train/): exact resume, checkpoints
that survive a kill mid-write, the saved model `archspec generate` reads, aux losses logged
apart, frozen parameters, and every bad input refused before the first step (exit 2)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from archspec.cli import main
from archspec.train import TrainError, train
from archspec.train import checkpoints as ck
from archspec.train.config import TrainConfig, check_config
from archspec.train.data import Order, Windows, batch_rows, read_stream
from archspec.train.loop import check_dtype, param_groups
from archspec.train.schedule import lr_factor

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "specs" / "tiny.yaml")
# a small, fast run: tiny.yaml (115k parameters), 4 sequences of 32 bytes a step
FAST = dict(batch_size=4, seq_len=32, warmup=1, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on this shared 2-core machine OpenMP's spinning threads make tiny
    steps 10x slower, and results are deterministic either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """~24 KB of English-like text (archspec's own README): 700+ windows of 32 bytes."""
    path = tmp_path_factory.mktemp("data") / "readme.txt"
    path.write_bytes((ROOT / "README.md").read_bytes()[:24_000])
    return path


class Stop(Exception):
    pass


def stop_at(step: int):
    def on_step(m: dict) -> None:
        if m["step"] == step:
            raise Stop  # as a kill right after that step: nothing more is written
    return on_step


def test_resume_continues_exactly_and_ignores_partial_checkpoints(text, tmp_path):
    full = train(TINY, [str(text)], out=str(tmp_path / "full"), steps=6, checkpoint_every=2, **FAST)
    assert len(full.losses) == 6
    out = tmp_path / "cut"
    with pytest.raises(Stop):
        train(TINY, [str(text)], out=str(out), steps=6, checkpoint_every=2, on_step=stop_at(5), **FAST)
    assert [s for s, _ in ck.complete_checkpoints(out)] == [2, 4]
    # a kill while writing step 6's checkpoint: its partial directory, and a step directory
    # whose train_state.json (written last) never came: neither is a checkpoint
    (out / "checkpoints" / ".partial-step-00000006").mkdir()
    (out / "checkpoints" / ".partial-step-00000006" / "__0_0.distcp").write_bytes(b"half")
    (out / "checkpoints" / "step-00000006").mkdir()
    resumed = train(TINY, [str(text)], out=str(out), steps=6, checkpoint_every=2, resume=True, **FAST)
    # the same operations on the same values in the same order on the CPU: bitwise equal
    assert resumed.losses == full.losses[4:]
    assert not (out / "checkpoints" / ".partial-step-00000006").exists()
    from archspec.checkpoint import load_saved
    model_full, _ = load_saved(tmp_path / "full")
    model_cut, _ = load_saved(out)
    for (name, x), y in zip(model_full.state_dict().items(), model_cut.state_dict().values()):
        assert torch.equal(x, y), name
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]  # step 5's line from the killed run was dropped, not repeated


def test_cli_train_then_resume_then_generate(text, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", TINY, "--data", str(text), "--out", str(out), "--batch-size", "4", "--seq-len", "32",
            "--warmup", "1", "--no-progress"]
    assert main([*args, "--steps", "2"]) == 0
    assert main([*args, "--steps", "3", "--resume"]) == 0
    assert "trained to step 3" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "loss" in m] == [1, 2, 3]
    assert any("eval_loss" in m for m in lines)
    first = lines[0]
    assert first["tokens"] == 4 * 32 and first["flops_per_s"] > 0 and "mfu" not in first  # CPU: FLOP/s
    assert main(["generate", str(out), "--prompt", "The ", "--max-new-tokens", "8"]) == 0
    assert len(capsys.readouterr().out) >= 9  # 8 new tokens (bytes) and the newline


def test_aux_losses_are_logged_apart(text, tmp_path):
    out = tmp_path / "moe"
    train(str(ROOT / "specs" / "moe-tiny.yaml"), [str(text)], out=str(out), steps=2, **FAST)
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "moe_load_balance" in m["aux"]
    # loss = LM loss + the aux losses (float32 sums of a few terms of size ~5: 1e-5 covers rounding)
    assert m["loss"] == pytest.approx(m["lm_loss"] + sum(m["aux"].values()), abs=1e-5)
    assert m["loss"] != m["lm_loss"]


def test_frozen_parameters_stay_frozen(text, tmp_path, monkeypatch):
    import archspec.train.loop as loop
    original = loop.load_model

    def frozen_first_sublayer(source, device, seed):
        model, spec = original(source, device, seed)
        for p in model.sublayers[0].parameters():
            p.requires_grad_(False)
        return model, spec

    monkeypatch.setattr(loop, "load_model", frozen_first_sublayer)
    out = tmp_path / "frozen"
    train(TINY, [str(text)], out=str(out), steps=2, weight_decay=0.5, **FAST)
    from archspec.checkpoint import load_saved
    from archspec.codegen.build import build
    from archspec.spec import load
    fresh = build(load(TINY), dtype="float32", seed=0)
    trained, _ = load_saved(out)
    before, after = fresh.state_dict(), trained.state_dict()
    for name in before:
        if name.startswith("sublayers.0."):
            assert torch.equal(before[name], after[name]), name  # no gradient, no decay
    assert not torch.equal(before["sublayers.1.members.F.up_proj.weight"],
                           after["sublayers.1.members.F.up_proj.weight"])


def test_param_groups_decay_only_matrices_and_skip_frozen():
    from archspec.codegen.build import build
    from archspec.spec import load
    model = build(load(TINY), seed=0)
    model.sublayers[0].norm.weight.requires_grad_(False)
    decay, rest = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in rest["params"])
    assert model.embedding.weight in decay["params"]
    ids = {id(p) for g in (decay, rest) for p in g["params"]}
    assert id(model.sublayers[0].norm.weight) not in ids
    assert len(ids) == sum(p.requires_grad for p in model.parameters())


def test_schedule():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(1 / 11)
    assert lr_factor(10, 100, 10, "cosine") == 1.0
    assert lr_factor(99, 100, 10, "cosine") == pytest.approx(0.1)  # min_lr_ratio at the last step
    assert lr_factor(99, 100, 10, "linear") == pytest.approx(0.1)
    assert lr_factor(54, 100, 10, "linear") == pytest.approx(1 - 0.9 * 44 / 89)
    assert lr_factor(77, 100, 10, "constant") == 1.0
    cos = [lr_factor(s, 100, 10, "cosine") for s in range(10, 100)]
    assert all(a >= b for a, b in zip(cos, cos[1:]))


def test_token_files_are_memory_mapped_and_windows_split(tmp_path):
    ids = np.arange(1000, dtype="<u2") % 300
    (tmp_path / "a.u16").write_bytes(ids.tobytes())
    (tmp_path / "b.u32").write_bytes(ids.astype("<u4").tobytes())
    a, b = read_stream(str(tmp_path / "a.u16"), 512), read_stream(str(tmp_path / "b.u32"), 512)
    assert isinstance(a.tokens, np.memmap) and np.array_equal(a.tokens, ids) and np.array_equal(b.tokens, ids)
    w = Windows([a, b], seq_len=10, eval_fraction=0.1)
    assert len(w.train) == 2 * 89 and len(w.held_out) == 2 * 10  # (1000 - 1) // 10 = 99 windows a file
    t = w.tokens(w.train[:2])
    assert t.shape == (2, 11) and t[0].tolist() == ids[:11].tolist() and t[1, 0] == ids[10]
    assert not set(w.train) & set(w.held_out)


def test_batch_order_is_resumable_and_independent_of_the_world_size():
    order = Order(50, seed=3)
    epoch = [order.window(p) for p in range(50)]
    assert sorted(epoch) == list(range(50))
    assert [Order(50, seed=3).window(p) for p in range(40, 60)] == [order.window(p) for p in range(40, 60)]
    assert [order.window(p) for p in range(50, 100)] != epoch  # a new permutation each epoch
    one = list(batch_rows(16, 8, 0, 1))
    assert [p for r in range(4) for p in batch_rows(16, 8, r, 4)] == one == list(range(16, 24))


# --- bad input: a clear error before the first step, exit 2, nothing written ---------------------
def _refused(capsys, args: list[str], *needles: str) -> str:
    assert main(["train", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, needles", [
    (lambda d: d / "missing.txt", ["missing.txt", "no such file"]),
    (lambda d: _file(d / "empty.txt", b""), ["empty.txt", "empty"]),
    (lambda d: _file(d / "short.txt", b"x" * 32),
     ["short.txt", "shorter than one sequence", "--seq-len 32 needs 33"]),
    (lambda d: _file(d / "big.u16", np.array([1, 2, 300] * 40, "<u2").tobytes()),
     ["big.u16", "token 2 is id 300", "[0, 256)"]),
    (lambda d: _file(d / "odd.u32", b"\0" * 130), ["odd.u32", "130 bytes"]),
    (lambda d: (d / "adir").mkdir() or d / "adir", ["adir", "not a regular file"]),
])
def test_bad_data_files(tmp_path, capsys, make, needles):
    path = make(tmp_path)
    _refused(capsys, [TINY, "--data", str(path), "--out", str(tmp_path / "out"), "--seq-len", "32"], *needles)
    assert not (tmp_path / "out").exists()


def test_unreadable_data_file(tmp_path, capsys, monkeypatch):
    """A file the process may not read. chmod 0 does not stop root (CI runs as root), so the
    refusal is simulated where the reader meets it: the memory map's open()."""
    import archspec.train.data as data
    path = tmp_path / "secret.txt"
    path.write_bytes(b"x" * 1000)
    real_memmap = data.np.memmap

    def refusing_memmap(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_memmap(file, *args, **kwargs)

    monkeypatch.setattr(data.np, "memmap", refusing_memmap)
    _refused(capsys, [TINY, "--data", str(path), "--out", str(tmp_path / "out")],
             "secret.txt", "cannot read it", "Permission denied")
    assert not (tmp_path / "out").exists()


def test_bad_options_and_output(text, tmp_path, capsys):
    base = [TINY, "--data", str(text), "--seq-len", "32"]
    _refused(capsys, [*base, "--batch-size", "6", "--grad-accum", "4"], "--batch-size", "multiple of 4")
    _refused(capsys, [*base, "--seq-len", "1000"], "--seq-len 1000", "max_seq_len 128")
    (tmp_path / "file").write_text("")
    _refused(capsys, [*base, "--out", str(tmp_path / "file" / "run")], "--out", "not writable")
    _refused(capsys, [*base, "--out", str(tmp_path / "new"), "--resume"], "--resume", "no complete checkpoint")
    _refused(capsys, [*base, "--eval-fraction", "1.5"], "--eval-fraction")
    with pytest.raises(TrainError, match="--schedule"):
        check_config(TrainConfig(data=["x"], schedule="step"))


def test_dtype_the_device_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(TrainError, match="--dtype bf16: Tesla V100 has no bfloat16 support"):
        check_dtype(torch.device("cuda", 0), "bf16")
    check_dtype(torch.device("cuda", 0), "fp32")
    check_dtype(torch.device("cpu"), "bf16")  # CPUs compute bf16 (autocast)


def test_resume_refuses_another_spec_a_damaged_checkpoint_and_a_second_run(text, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", str(text), "--out", str(out), "--seq-len", "32", "--batch-size", "4"]
    assert main(["train", TINY, *common, "--steps", "1", "--no-progress"]) == 0
    _refused(capsys, [TINY, *common, "--steps", "2"], "holds a training run already", "--resume")
    err = _refused(capsys, [str(ROOT / "specs" / "tiny-wide.yaml"), *common, "--steps", "2", "--resume"],
                   "another spec", "model.d_model", "64 -> 128")
    assert "Costs" not in err
    (_, ckpt), = ck.complete_checkpoints(out)
    shard = ckpt / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    _refused(capsys, [TINY, *common, "--steps", "2", "--resume"], "damaged", str(ckpt))
    (ckpt / "archspec.json").write_text("{not json")
    _refused(capsys, [TINY, *common, "--steps", "2", "--resume"], "damaged", "archspec.json")
    assert [s for s, _ in ck.complete_checkpoints(out)] == [1]  # nothing written by the refusals


def test_text_through_a_tokenizer(text, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")  # the optional package `--tokenizer` needs
    from tokenizers import models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train([str(text)], trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]"]))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    ids = tok.encode(text.read_bytes().decode("utf-8", errors="replace")).ids
    stream = read_stream(str(text), 256, tok)
    assert stream.tokens.tolist() == ids and len(ids) < 0.8 * text.stat().st_size  # BPE merged bytes
    out = tmp_path / "run"
    result = train(TINY, [str(text)], out=str(out), steps=1, tokenizer=str(tmp_path / "tok"), **FAST)
    assert result.step == 1
    with pytest.raises(TrainError, match="no tokenizer.json"):
        train(TINY, [str(text)], out=str(tmp_path / "x"), steps=1, tokenizer=str(tmp_path), **FAST)


def test_activation_checkpointing_and_bf16_single_process(text, tmp_path):
    plain = train(TINY, [str(text)], out=str(tmp_path / "plain"), steps=2, **FAST)
    recomputed = train(TINY, [str(text)], out=str(tmp_path / "ac"), steps=2, activation_checkpointing=True,
                       **FAST)
    assert recomputed.losses == plain.losses  # the same forward, recomputed: bitwise equal on a CPU
    from archspec.checkpoint import load_saved
    load_saved(tmp_path / "ac")  # the checkpoint wrappers leave the saved names as they were
    bf16 = train(TINY, [str(text)], out=str(tmp_path / "bf16"), steps=2, dtype="bf16", **FAST)
    # bf16 autocast: logits to ~3 significant digits; the loss (~5.4) within 0.05 of fp32's
    assert bf16.losses == pytest.approx(plain.losses, abs=0.05) and bf16.losses != plain.losses


def test_mfu_uses_the_report_flops_and_the_device_peak(text, tmp_path, monkeypatch):
    import archspec.train.loop as loop
    from archspec.accounting import account, training_flops_per_token
    from archspec.spec import load
    monkeypatch.setattr(loop, "peak_flops", lambda device, dtype: 1e9)  # as if on a 1 GFLOP/s device
    out = tmp_path / "run"
    train(TINY, [str(text)], out=str(out), steps=1, **FAST)
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    per_token = training_flops_per_token(account(load(TINY), 32))
    assert m["flops_per_s"] == pytest.approx(m["tokens_per_s"] * per_token, rel=1e-12)
    assert m["mfu"] == pytest.approx(m["flops_per_s"] / 1e9, rel=1e-12)
    assert "MFU" in loop._postfix(m) and "FLOP/s" not in loop._postfix(m)


def test_warm_start_from_a_saved_model(text, tmp_path):
    from archspec.checkpoint import load_saved
    first = tmp_path / "first"
    train(TINY, [str(text)], out=str(first), steps=2, **FAST)
    again = train(str(first), [str(text)], out=str(tmp_path / "again"), steps=1, lr=1e-12, warmup=0,
                  batch_size=4, seq_len=32, progress=False)
    # lr 1e-12: the weights stay those loaded, to rounding (updates <= 1e-12 each)
    a, b = load_saved(first)[0].state_dict(), load_saved(tmp_path / "again")[0].state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-9) for k in a)
    assert again.step == 1


def test_mfu_flops_against_flopcountermode_on_a_training_step():
    """The MFU numerator (the report's training FLOPs: 3 x forward, matmul + attention + the
    elementwise `other`) against torch's FlopCounterMode over one real forward + backward. On
    a model of matmuls only (embedding, MLPs, untied head), FlopCounterMode counts each matmul's
    backward as exactly 2 forwards, so it equals 3 x the report's matmul FLOPs exactly, and the
    MFU numerator exceeds it by exactly 3 x the elementwise FLOPs FlopCounterMode does not count."""
    from torch.utils.flop_counter import FlopCounterMode

    from archspec.accounting import account, training_flops_per_token
    from archspec.codegen.build import build
    from archspec.flopcount import flopcounter_mapping
    from archspec.spec import loads
    spec = loads("model: {name: t, vocab_size: 96, d_model: 48, max_seq_len: 64, tie_embeddings: false}\n"
                 "components:\n  F: {type: mlp, activation: swiglu, d_ff: 96}\nlayout: \"F F\"\n")
    model = build(spec, seed=0)
    tokens = torch.randint(0, 96, (2, 33))
    with FlopCounterMode(display=False, custom_mapping=flopcounter_mapping()) as counter:
        model(tokens[:, :-1], labels=tokens[:, 1:]).loss.backward()
    flops = account(spec, 32).total().flops
    n_tokens = 2 * 32
    assert counter.get_total_flops() == 3 * n_tokens * flops.matmul / 32
    assert training_flops_per_token(account(spec, 32)) * n_tokens == pytest.approx(
        counter.get_total_flops() + 3 * n_tokens * flops.other / 32, rel=1e-12)  # float sums


def test_a_diverging_run_stops_without_saving_the_spoilt_weights(text, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", TINY, "--data", str(text), "--out", str(out), "--batch-size", "4", "--seq-len", "32",
            "--no-progress", "--warmup", "0", "--checkpoint-every", "1", "--grad-clip", "0"]
    assert main([*args, "--steps", "1"]) == 0
    # a learning rate of 1e30 (the lr is checked finite and positive, not sensible): the resumed
    # step 2 moves the weights to ~1e30; step 3's gradient overflows, and the run stops before
    # its optimizer step, so no saved weights are NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # archspec.save warns when it saves NaN or infinite weights
        assert main([*args, "--steps", "6", "--resume", "--lr", "1e30"]) == 2
    err = capsys.readouterr().err
    assert "step 3: the gradient norm is nan: training diverged; resume from step 2" in err, err
    assert [s for s, _ in ck.complete_checkpoints(out)] == [1, 2]
