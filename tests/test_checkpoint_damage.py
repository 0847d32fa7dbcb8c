"""load_saved on damaged, tampered and foreign directories: a corpus, one case per class of
damage, each a CheckpointError (a ValueError) that names the file and says what is wrong and
how to fix it; never another exception, never a hang, never code run from a pickle, never the
model's memory allocated first. The classes:

* the directory: missing, a file, empty, a symbolic link that loops, another tool's model;
* archspec.json: not a regular file (a directory, a link to /dev/zero, a loop, a broken link, a
  named pipe), too large, not UTF-8, not JSON, nested too deeply, an integer Python will not
  convert, another program's JSON, and valid JSON of the wrong shape at every level, each
  reported at its own line;
* model.safetensors: not a regular file, empty, truncated (in the header or the data), a bit
  flipped (header or data), a header claiming huge sizes or offsets past the end, another
  dtype, tensors missing, extra or from another model, NaN;
* an absurd model in archspec.json: refused before anything is allocated;
* format 0 (model.pt): truncated zip, a flipped bit (CRC), a truncated pickle, an empty file,
  a malicious pickle (refused, not run), not a state dict.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import safetensors.torch
import torch

import archspec
from archspec import checkpoint
from archspec.checkpoint import OLD_SPEC_FILE, OLD_WEIGHTS_FILE, SPEC_FILE, WEIGHTS_FILE
from archspec.layout import MAX_SUBLAYERS
from archspec.codegen.build import build
from archspec.errors import CheckpointError, format_path
from archspec.spec import load

from test_checkpoint import SPECS, TINY, write_format_0

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny model in each format, built once: every case damages a copy."""
    root = tmp_path_factory.mktemp("originals")
    model = build(load(TINY), seed=3)
    write_format_0(model, root / "format0")
    return {"format1": archspec.save(model, root / "format1"), "format0": root / "format0"}


@contextmanager
def no_hang(seconds: int = 60):
    """Fail, rather than wait forever, if the block takes longer (a read of /dev/zero, a pipe)."""
    def stop(*_):
        raise TimeoutError(f"load_saved did not return within {seconds} s")
    before = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def load_error(directory: Path, **kw) -> str:
    with no_hang(), pytest.raises(CheckpointError) as info:
        archspec.load_saved(directory, **kw)
    return str(info.value)


# --- ways to damage a directory -------------------------------------------------------------------
def replace_with(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    """Damage: the file `name` replaced by what make(path) creates there."""
    def damage(directory: Path):
        path = directory / name
        path.unlink()
        make(path)
    return damage


def symlink_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def loop(path: Path) -> None:
    path.symlink_to(path)


def set_bytes(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(directory: Path):
        path = directory / name
        path.write_bytes(change(path.read_bytes()))
    return damage


def flip(at: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    """A change of one byte (every bit flipped) at the offset at(data) gives."""
    def change(data: bytes) -> bytes:
        out = bytearray(data)
        out[at(data)] ^= 0xFF
        return bytes(out)
    return change


def in_largest_zip_member(data: bytes) -> int:
    """An offset in the middle of the stored data of a zip's largest member (torch.save's)."""
    import io
    import zipfile
    info = max(zipfile.ZipFile(io.BytesIO(data)).infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def edit_header(change: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    """A change of the safetensors header (JSON after an 8-byte length), the data left alone."""
    def edit(data: bytes) -> bytes:
        n = header_length(data)
        header = json.loads(data[8:8 + n])
        change(header)
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + data[8 + n:]
    return edit


def first_tensor(header: dict) -> dict:
    return header[min(k for k in header if k != "__metadata__")]


def set_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """Damage: archspec.json's value edited in place by change(data)."""
    def damage(directory: Path):
        path = directory / SPEC_FILE
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data, indent=2))
    return damage


def json_is(make: Callable[[dict], object]) -> Callable[[Path], None]:
    """Damage: archspec.json replaced by the JSON of make(its value)."""
    def damage(directory: Path):
        path = directory / SPEC_FILE
        path.write_text(json.dumps(make(json.loads(path.read_text())), indent=2))
    return damage


def set_weights(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Damage: model.safetensors rewritten with changed tensors, and its digest in archspec.json
    updated, so the check the case is about is reached (the digest alone would catch it)."""
    def damage(directory: Path):
        path = directory / WEIGHTS_FILE
        state = safetensors.torch.load_file(path)
        change(state)
        safetensors.torch.save_file(state, path)
        set_json(lambda d: d["weights"].update(sha256=checkpoint.sha256(path)))(directory)
    return damage


class Evil:
    """Unpickling this runs a shell command: the marker file shows whether it ran."""

    marker = "/tmp/archspec-test-pickle-ran"

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def legacy_pickle_truncated(directory: Path) -> None:
    """model.pt in torch.save's pre-zip format, cut short."""
    torch.save({"w": torch.ones(64)}, directory / PT, _use_new_zipfile_serialization=False)
    set_bytes(PT, lambda b: b[:100])(directory)


def foreign_weights(directory: Path) -> None:
    """Another model's weights (a spec of other widths) under the right file name."""
    other = build(archspec.loads("model: {vocab_size: 64, d_model: 32, max_seq_len: 16}\n"
                                 "components:\n  F: {type: mlp, d_ff: 64}\nlayout: F F\n"), seed=0)
    shutil.copy(archspec.save(other, directory.parent / "other") / WEIGHTS_FILE, directory / WEIGHTS_FILE)


@dataclass
class Damage:
    name: str
    apply: Callable[[Path], None]
    file: str  # the file the message must name ("" : the directory)
    words: str  # what the message must say (with regex: a pattern it must match)
    fmt: str = "format1"
    regex: bool = False


D, J, W, PT = "", SPEC_FILE, WEIGHTS_FILE, OLD_WEIGHTS_FILE
CORPUS = [
    # the directory
    Damage("dir missing", lambda d: shutil.rmtree(d), D, "it does not exist"),
    Damage("dir is a file", lambda d: (shutil.rmtree(d), d.write_text("x")), D, "it is a file"),
    Damage("dir empty", lambda d: [p.unlink() for p in d.iterdir()], D, f"it has no {SPEC_FILE}"),
    Damage("dir loops", lambda d: (shutil.rmtree(d), loop(d)), D, "symbolic link that loops"),
    Damage("another tool's model", lambda d: (d.joinpath(J).rename(d / "config.json")), D,
           f"it has no {SPEC_FILE}"),
    # archspec.json: not a regular file, too large, not text, not JSON, another program's
    Damage("json is a directory", replace_with(J, Path.mkdir), J, "it is a directory"),
    Damage("json -> /dev/zero", replace_with(J, symlink_to("/dev/zero")), J, "a character device"),
    Damage("json loops", replace_with(J, loop), J, "symbolic link that loops"),
    Damage("json broken link", replace_with(J, symlink_to("/nowhere/archspec.json")), J, "which does not exist"),
    Damage("json is a pipe", replace_with(J, os.mkfifo), J, "a named pipe"),
    Damage("json empty", set_bytes(J, lambda b: b""), J, "1:1: not valid JSON"),
    Damage("json not utf-8", set_bytes(J, lambda b: b.replace(b'"tiny"', b'"ti\xffy"', 1)), J,
           "not UTF-8 text (byte 0xff)"),
    Damage("json syntax", set_bytes(J, lambda b: b'{\n  "format_version": 1,\n  oops\n}\n'), J, "3:3: not valid JSON"),
    Damage("json too deep", set_bytes(J, lambda b: b"[" * 100_000 + b"]" * 100_000), J, "nested too deeply"),
    Damage("json huge integer", set_bytes(J, lambda b: b.replace(b'"vocab_size": 256', b'"vocab_size": ' + b"9" * 5000)),
           J, "cannot read its JSON"),
    Damage("json is a list", json_is(lambda d: [d]), J, "not an archspec.json written by archspec.save (it holds a list"),
    Damage("json of another program", json_is(lambda d: {"architectures": ["LlamaForCausalLM"], "hidden_size": 64}),
           J, "it has no 'format'"),
    Damage("json of another format", set_json(lambda d: d.update(format="something else")), J,
           "its 'format' is 'something else'"),
    # model.safetensors: not a regular file, empty, truncated, flipped, lying header, foreign
    Damage("weights missing", lambda d: (d / W).unlink(), D, f"but no {WEIGHTS_FILE}: the save did not complete"),
    Damage("weights is a directory", replace_with(W, Path.mkdir), W, "it is a directory"),
    Damage("weights -> /dev/zero", replace_with(W, symlink_to("/dev/zero")), W, "a character device"),
    Damage("weights loop", replace_with(W, loop), W, "symbolic link that loops"),
    Damage("weights is a pipe", replace_with(W, os.mkfifo), W, "a named pipe"),
    Damage("weights empty", set_bytes(W, lambda b: b""), W, "damaged or truncated"),
    Damage("weights truncated in the header", set_bytes(W, lambda b: b[:20]), W, "damaged or truncated"),
    Damage("weights truncated in the data", set_bytes(W, lambda b: b[:len(b) // 2]), W, "damaged or truncated"),
    Damage("weights bit flipped in the header", set_bytes(W, flip(lambda b: 20)), W, "cannot read the weights"),
    Damage("weights bit flipped in the data", set_bytes(W, flip(lambda b: len(b) - 100)), W,
           "not the", ),  # its SHA-256 is ..., not the ... that archspec.json records
    Damage("header length huge", set_bytes(W, lambda b: struct.pack("<Q", 1 << 62) + b[8:]), W, "header too large"),
    Damage("header shape huge", set_bytes(W, edit_header(lambda h: first_tensor(h).update(shape=[1 << 40, 1 << 30]))),
           W, "cannot read the weights"),
    Damage("header offsets past the end", set_bytes(W, edit_header(
        lambda h: first_tensor(h).update(data_offsets=[10 ** 12, 10 ** 12 + 256]))), W, "cannot read the weights"),
    Damage("header dtype changed", set_bytes(W, edit_header(lambda h: first_tensor(h).update(dtype="I64"))), W,
           "cannot read the weights"),
    Damage("weights in another dtype",
           set_weights(lambda s: s.update({"final_norm.weight": s["final_norm.weight"].double()})),
           W, "'final_norm.weight' is float64, but the model built from the saved spec"),
    Damage("weights as integers",
           set_weights(lambda s: s.update({"final_norm.weight": s["final_norm.weight"].long()})),
           W, "'final_norm.weight' is int64"),
    Damage("weights missing a tensor", set_weights(lambda s: s.pop("final_norm.weight")), W,
           "lacks 1 tensor(s) the model needs: 'final_norm.weight'"),
    Damage("weights with an extra tensor", set_weights(lambda s: s.update(extra=torch.zeros(2))), W,
           "holds 1 tensor(s) the model does not have: 'extra'"),
    Damage("weights of another model", foreign_weights, W, "The weights do not belong to the saved spec"),
    Damage("weights edited by hand", set_bytes(W, lambda b: safetensors.torch.save(
        {k: v + 1 for k, v in safetensors.torch.load(b).items()}, metadata={"format": "pt"})), W,
           "delete weights.sha256"),
    Damage("weights NaN", set_weights(lambda s: s["embedding.weight"].fill_(float("nan"))), W,
           "'embedding.weight' (16,384 of 16,384 values)"),
    # an absurd model: refused before anything is built or allocated
    # (256 TB; or a located error, should the schema come to bound the vocabulary)
    Damage("absurd vocabulary", set_json(lambda d: d["model"].update(vocab_size=10 ** 12)), J,
           r"refused before allocating anything|error at model\.vocab_size", regex=True),
    Damage("absurd depth", set_json(lambda d: d["model"].update(n_sublayers=10 ** 6)), J,
           f"more than {MAX_SUBLAYERS:,} sublayers"),
    # format 0: model.pt and spec.resolved.json
    Damage("pt truncated zip", set_bytes(PT, lambda b: b[:len(b) // 2]), PT, "damaged or truncated", "format0"),
    Damage("pt bit flipped", set_bytes(PT, flip(in_largest_zip_member)), PT,
           "fails its CRC check", "format0"),
    Damage("pt empty", set_bytes(PT, lambda b: b""), PT, "the file ends early", "format0"),
    Damage("pt truncated pickle", legacy_pickle_truncated, PT, "the file ends early", "format0"),
    Damage("pt malicious pickle", lambda d: (d / PT).write_bytes(pickle.dumps({"w": Evil()}, protocol=2)), PT,
           "refused: its pickle is not a plain state dict that torch.load's safe mode (weights_only) "
           "reads; it names posix.system", "format0"),
    Damage("pt malicious pickle, protocol 4", lambda d: (d / PT).write_bytes(pickle.dumps({"w": Evil()})), PT,
           "refused: its pickle is not a plain state dict", "format0"),
    Damage("pt malicious torch.save", lambda d: torch.save({"w": Evil()}, d / PT), PT,
           "; it names posix.system. Unpickling it otherwise could run code", "format0"),
    Damage("pt not a state dict", lambda d: torch.save([torch.ones(2)], d / PT), PT, "not a state dict", "format0"),
    Damage("pt -> /dev/zero", replace_with(PT, symlink_to("/dev/zero")), PT, "a character device", "format0"),
    Damage("old json is a list", set_bytes(OLD_SPEC_FILE, lambda b: b"[]"), OLD_SPEC_FILE,
           "expected a mapping at the top", "format0"),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_damaged_directory_is_a_clear_error(case, originals, tmp_path):
    directory = tmp_path / "saved"
    shutil.copytree(originals[case.fmt], directory)
    case.apply(directory)
    if os.path.exists(Evil.marker):
        os.remove(Evil.marker)
    message = load_error(directory)
    assert re.search(case.words, message) if case.regex else case.words in message
    assert str(directory / case.file if case.file else directory) in message  # which file
    assert re.search(r"save the model again|restore|give the directory|force=True|allow_nonfinite", message)
    assert "Traceback" not in message and not os.path.exists(Evil.marker)  # no pickle ran


# --- archspec.json of the wrong shape, at every level: each reported at its own line --------------
WRONG_SHAPES = [  # (path, value written there, what the error says)
    (("model",), [1], "expected a mapping, got a list"),
    (("model", "d_model"), "64", "expected an integer"),
    (("model", "init_std"), True, "expected a number"),
    (("norm",), "rmsnorm", "expected a mapping"),
    (("norm", "type"), "attention", "unknown norm type 'attention'"),
    (("components",), [], "expected a mapping"),
    (("components", "A"), 3, "expected a mapping"),
    (("components", "A", "backend"), 3, "expected a string"),
    (("components", "A", "config"), [], "expected a mapping"),
    (("components", "A", "config", "n_heads"), "four", "expected an integer"),
    (("components", "A", "written"), {}, "expected a list"),
    (("components", "A", "written", 1), 7, "expected a key name, got number 7"),
    (("components", "A", "overrides"), [], "expected a mapping"),
    (("sublayers",), {}, "expected a list"),
    (("sublayers", 1), 3, "expected a mapping"),
    (("sublayers", 1, "index"), "1", "expected an integer"),
    (("sublayers", 1, "members"), "F", "expected a list"),
    (("sublayers", 1, "members", 0), [], "expected a mapping"),
    (("sublayers", 1, "members", 0, "symbol"), 1, "expected a string"),
    (("sublayers", 1, "members", 0, "config", "d_ff"), -16, "must be >= 1, got -16"),
    (("sublayers", 1, "members", 0, "written", 0), "d_fff", "'d_fff' is not a key of mlp"),
    (("build",), "x", "expected a mapping"),
    (("build", "dtype"), 3, "expected a string"),
    (("build", "params"), "many", "expected a parameter count"),
    (("build", "backends"), [], "expected a mapping"),
    (("build", "backends", "sublayers.0.A"), 1, "expected a backend name"),
    (("weights",), [], "expected a mapping"),
    (("weights", "aliases"), [], "expected a mapping"),
    (("weights", "aliases", "lm_head.weight"), 1, "expected a tensor name"),
    (("weights", "sha256"), "abc", "expected a SHA-256 digest"),
    (("files",), 3, "expected a list"),
    (("files", 0), 3, "expected a file name"),
    (("source",), 5, "expected a string"),
    (("spec",), [1], "expected a mapping"),
    (("model", "n_sublayers"), 0, "expected an integer >= 1"),
]


def put(data, path: tuple, value):
    for step in path[:-1]:
        data = data[step]
    data[path[-1]] = value


def line_of(data: dict, path: tuple) -> int:
    """The line archspec.save's layout (indent 2) puts the entry at `path` on."""
    marked = json.loads(json.dumps(data))
    put(marked, path, "@@here@@")
    text = json.dumps(marked, indent=2)
    return text[:text.index('"@@here@@"')].count("\n") + 1


@pytest.mark.parametrize("path, value, words", WRONG_SHAPES, ids=[format_path(c[0]) for c in WRONG_SHAPES])
def test_a_wrong_entry_is_reported_at_its_line(path, value, words, originals, tmp_path):
    directory = tmp_path / "saved"
    shutil.copytree(originals["format1"], directory)
    data = json.loads((directory / SPEC_FILE).read_text())
    put(data, path, value)
    (directory / SPEC_FILE).write_text(json.dumps(data, indent=2))
    message = load_error(directory)
    found = re.search(rf"{re.escape(SPEC_FILE)}:(\d+):\d+: error at {re.escape(format_path(path))}: (.*)", message)
    assert found, message
    assert words in found.group(2)
    assert int(found.group(1)) == line_of(data, path)


def test_a_wrong_entry_in_a_large_file_is_located(originals, tmp_path):
    """Locations come from the JSON text itself, so a file of any size has them (they came from
    parsing it as YAML, which stops at 100,000 values: every problem was then at 1:1)."""
    directory = tmp_path / "saved"
    shutil.copytree(originals["format1"], directory)
    data = json.loads((directory / SPEC_FILE).read_text())
    data["spec"]["notes"] = ["a value"] * 120_000  # the record-only part, as large as a deep model's
    path = ("sublayers", 3, "members", 0, "config", "d_ff")
    put(data, path, "bad")
    (directory / SPEC_FILE).write_text(json.dumps(data, indent=2))
    message = load_error(directory)
    assert f"{SPEC_FILE}:{line_of(data, path)}:13: error at sublayers[3].members[0].config.d_ff: " \
           "expected an integer, got string 'bad'" in message


# --- the checks that need more than a message ------------------------------------------------------
def test_a_model_too_large_is_refused_before_anything_is_allocated(originals, tmp_path, monkeypatch):
    directory = tmp_path / "saved"
    shutil.copytree(originals["format1"], directory)
    # an archspec.json edited to a million-token vocabulary: 256 MB of embeddings, where the
    # machine (as the test has it) has 64 MiB free
    set_json(lambda d: d["model"].update(vocab_size=10 ** 6))(directory)
    monkeypatch.setattr(checkpoint, "free_memory_bytes", lambda device: 64 << 20)
    allocated = []
    monkeypatch.setattr(torch.nn.Module, "to_empty", lambda self, **kw: allocated.append(self))
    message = load_error(directory)
    assert "needs 244.52 MiB for its weights in float32 (model.safetensors holds 451.17 KiB), but " \
           "cpu has 64.00 MiB free: refused before allocating anything" in message
    # forced past the memory check, the weights' header refuses it, before any data is read
    assert "tensor 'embedding.weight' is [256, 64] in the file, but the model built from the saved " \
           "spec needs [1000000, 64]" in load_error(directory, force=True)
    # sizes torch cannot represent are a CheckpointError too, not an overflow (located, should
    # the schema come to bound head_dim)
    set_json(lambda d: d["sublayers"][0]["members"][0]["config"].update(head_dim=10 ** 30))(directory)
    message = load_error(directory, force=True)
    assert re.search(r"the model it describes cannot be built|error at sublayers\[0\]\.members\[0\]\.config\.head_dim",
                     message) and str(directory / SPEC_FILE) in message
    assert allocated == []


def test_nonfinite_weights_are_refused_unless_allowed_and_then_named(tmp_path):
    model = build(load(TINY), seed=0)
    with torch.no_grad():
        model.sublayers[0].members["A"].q_proj.weight[0, :3] = torch.tensor([float("nan"), float("inf"), 1.0])
    with pytest.warns(RuntimeWarning, match=r"1 tensor\(s\) hold NaN or infinite values.*saving them anyway"):
        directory = archspec.save(model, tmp_path / "diverged")  # a diverged run can still be saved
    message = load_error(directory)
    assert "'sublayers.0.members.A.q_proj.weight' (2 of 4,096 values)" in message
    assert "allow_nonfinite=True" in message
    with pytest.warns(RuntimeWarning, match=r"q_proj.weight' \(2 of 4,096 values\).*allow_nonfinite=True"):
        loaded, _ = archspec.load_saved(directory, allow_nonfinite=True)
    assert torch.isnan(loaded.sublayers[0].members["A"].q_proj.weight[0, 0])


def test_an_oversized_json_is_not_read(originals, tmp_path, monkeypatch):
    directory = tmp_path / "saved"
    shutil.copytree(originals["format1"], directory)
    monkeypatch.setattr(checkpoint, "MAX_SPEC_BYTES", 1000)  # rather than writing 512 MiB
    assert "over 0 MiB, more than any saved spec" in load_error(directory)


def test_weights_saved_before_digests_still_load(originals, tmp_path):
    directory = tmp_path / "saved"
    shutil.copytree(originals["format1"], directory)
    set_json(lambda d: d["weights"].pop("sha256"))(directory)
    model, _ = archspec.load_saved(directory)
    assert sum(p.numel() for p in model.parameters()) == 115_008


def test_the_digest_is_what_sha256sum_prints(originals):
    import hashlib
    directory = originals["format1"]
    recorded = json.loads((directory / SPEC_FILE).read_text())["weights"]["sha256"]
    assert recorded == hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()


def test_every_other_saved_model_loads_untouched(tmp_path):
    """The checks refuse no directory archspec.save wrote: a spec with every kind of layout."""
    for name in ("hydra-tiny", "tiny-rules"):
        model = build(load(SPECS / f"{name}.yaml"), seed=0)
        loaded, _ = archspec.load_saved(archspec.save(model, tmp_path / name))
        assert all(torch.equal(t, model.state_dict()[n]) for n, t in loaded.state_dict().items())
