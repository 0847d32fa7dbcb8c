"""Saving a built model and loading it back.

    archspec.save(model, "out/")                  # or `archspec build SPEC --save out/`
    model, spec = archspec.load_saved("out/")     # same weights, same configs, any device

A saved model is a directory of two files:

    model.safetensors   every distinct weight tensor once (safetensors: no pickle, so loading
                        runs no code; memory-mapped). Names sharing one tensor are stored once
                        and listed as aliases in archspec.json.
    archspec.json       the format version, the resolved spec (every default filled, overrides
                        applied, per sublayer), the build (dtype, backends chosen, parameter
                        count) and the aliases: see checkpoint_json.py.

`load_saved` rebuilds the model from the saved configs themselves, not from the YAML with today's
defaults, so a default changed after the save does not change the model it loads. Every way a
directory can be damaged, tampered with or foreign (missing, incomplete, not regular files,
edited, truncated, bits flipped, from a newer archspec, a model too large to hold, weights that
do not fit the spec or hold NaN) is a CheckpointError naming the file, the entry and the fix,
raised before the model's memory is allocated; nothing is unpickled but plain tensors. Directories
written before this format (`model.pt` + `spec.resolved.json`) load too.

Saving is all or nothing, even when the process is killed. Both files are written into a work
directory beside the target, `.archspec-save-<target name>.<random>`, which its process holds a
lock on (flock: the system releases it when the process dies, SIGKILL included). The files are
renamed into place only when complete; an existing model being replaced is first moved into the
work directory, so it is never lost. On an error the work directory is removed; after a kill it
stays, and the next save into that parent directory (or load_saved of that target) finds it
unlocked and recovers: a model that was being replaced goes back in place, and the rest is removed.
A work directory whose owner is alive is never touched.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import stat
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint_json import SavedRecord, format_version, read_record, record, upgrade_format_0
from .codegen.build import MEMORY_HEADROOM, build, free_memory_bytes, weight_bytes
from .errors import CheckpointError
from .units import human_bytes

SPEC_FILE, WEIGHTS_FILE = "archspec.json", "model.safetensors"
OLD_SPEC_FILE, OLD_WEIGHTS_FILE = "spec.resolved.json", "model.pt"  # format 0
_LISTED = 5  # tensor names an error message shows before "and N more"
# archspec.json is kilobytes (hydra-1.6b: 52 KB); at the 100,000 sublayers a spec can describe it
# is some hundred megabytes. Anything larger is not one, and is not read into memory.
MAX_SPEC_BYTES = 512 << 20
_CHUNK = 16 << 20  # bytes read at a time when hashing


# --- saving ---------------------------------------------------------------------------------------
def save(model, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `model` (built by archspec.build) to `directory`: model.safetensors and
    archspec.json, all or nothing. The directory must not exist or be empty; `overwrite=True`
    replaces a directory that holds a saved model (and nothing else is ever replaced).
    Returns the directory's absolute path."""
    if getattr(model, "spec", None) is None:
        raise CheckpointError("archspec.save needs a model built by archspec.build (it carries the "
                              "resolved spec it was built from); this one has no `.spec`")
    target = check_target(directory, overwrite)
    tensors, aliases = distinct_tensors(model.state_dict())
    _record_text(model, aliases)  # refuse a spec JSON cannot hold before writing anything
    _warn_nonfinite(tensors, "saving them anyway; load_saved will refuse them unless allow_nonfinite=True")
    with _writing(target) as tmp:
        _write_weights(tmp / WEIGHTS_FILE, tensors)
        _write_text(tmp / SPEC_FILE, _record_text(model, aliases, sha256(tmp / WEIGHTS_FILE)))
    return target


def _record_text(model, aliases: dict[str, str], digest: str | None = None) -> str:
    """archspec.json's text, or a CheckpointError for a config value JSON cannot write."""
    try:
        return json.dumps(record(model, aliases, digest), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot save '{model.spec.name}': its resolved spec does not fit in "
                              f"JSON ({e}); a component config holds a value JSON cannot write") from None


def sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks (what `sha256sum` prints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_target(directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """The absolute target path, or a CheckpointError when saving there must be refused: a
    file, a non-empty directory (unless `overwrite` and it holds a saved model). Killed saves in
    its parent directory are recovered first, so a model one was replacing is back in place
    before the target is judged."""
    try:
        target = Path(directory).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symbolic link that loops (Python < 3.13)
        raise CheckpointError(f"cannot save to '{directory}': {e}; choose another path") from None
    recover_orphans(target.parent)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"cannot save to '{target}': it is a file; choose a directory path")
    if not target.is_dir() or not any(target.iterdir()):
        return target
    if not overwrite:
        raise CheckpointError(f"cannot save to '{target}': the directory exists and is not empty; "
                              "choose a new one, or replace a saved model there with overwrite=True "
                              "(`archspec build --overwrite`)")
    if not (target / SPEC_FILE).is_file() and not (target / OLD_SPEC_FILE).is_file():
        raise CheckpointError(f"cannot overwrite '{target}': it does not hold a saved model (no "
                              f"{SPEC_FILE}), and overwrite replaces only saved models; choose "
                              "another directory")
    return target


def distinct_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict as safetensors accepts it, and its aliases. safetensors refuses tensors
    that share memory: a name that is the very same tensor as an earlier one (a tied weight) is
    stored once and recorded as an alias; tensors that overlap otherwise get their own copies."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        if t.device.type == "meta":
            raise CheckpointError(f"cannot save: tensor '{name}' has no data (a meta build); build "
                                  "the model with real weights (meta=False) first")
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and view in seen:
            aliases[name] = seen[view]
            continue
        seen.setdefault(view, name)
        tensors[name] = t.detach()
    return _unshared(tensors), aliases


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor contiguous and on the CPU, with a copy for any that shares its storage."""
    owners: dict[int, int] = {}
    for t in tensors.values():
        ptr = t.untyped_storage().data_ptr()
        owners[ptr] = owners.get(ptr, 0) + 1
    out = {}
    for name, t in tensors.items():
        shared = bool(t.numel()) and owners[t.untyped_storage().data_ptr()] > 1
        out[name] = t.to("cpu", memory_format=torch.contiguous_format, copy=shared)
    return out


def _write_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    import safetensors.torch
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    _fsync(path)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)
    _fsync(path)


def _fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk, so a rename publishes complete files."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a directory cannot be opened on some systems: nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- writing all or nothing, even across a kill -------------------------------------------------
WORK_PREFIX = ".archspec-save-"  # + target name + "." + random: a save's work directory
# an empty work directory younger than this may be one whose save has not taken its lock yet
_JUST_CREATED_S = 60


@contextmanager
def _writing(target: Path):
    """A directory to write the model's files into, renamed to `target` when the block completes;
    removed (and the target left as it was) when anything fails, interrupts included. It lives
    in a locked work directory beside the target (see the module's docstring), so a kill leaves
    nothing the next save or load does not recover (check_target has recovered those of the
    same parent already)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{target.name}.", dir=target.parent))
    except OSError as e:
        raise CheckpointError(f"cannot save to '{target}': {e.strerror or e}") from None
    lock = _try_lock(work, wait_s=5.0)  # a recovery elsewhere may hold it for an instant
    try:
        new = work / "new"
        new.mkdir()
        yield new
        _publishable(new)
        _fsync(new)
        _move_into_place(work, new, target)
        _fsync(target.parent)
    except BaseException as e:
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot save to '{target}': {e.strerror or e}") from None
        raise
    finally:
        _discard(work, target)
        if lock is not None:
            os.close(lock)


def _publishable(tmp: Path) -> None:
    """The permissions a plain mkdir and open would have given (umask applied): mkdtemp makes
    the directory private, and a saved model is usually meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    for f in tmp.iterdir():
        f.chmod(0o666 & ~umask)


def _move_into_place(work: Path, new: Path, target: Path) -> None:
    """Rename the complete `new` to `target`. An existing saved model there (overwrite, already
    checked) is first moved to work/old: a kill between the two renames leaves it there, for
    recovery to put back."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if target.exists():
        target.rename(work / "old")
    new.rename(target)


def _discard(work: Path, target: Path) -> None:
    """Remove a finished, failed or dead save's work directory; first put back the model it had
    moved aside, if the target is missing. If that cannot be done, the directory stays (the
    previous model is its only copy) for a later recovery."""
    old = work / "old"
    if old.is_dir() and not os.path.lexists(target):
        try:
            old.rename(target)
        except OSError:
            return
    shutil.rmtree(work, ignore_errors=True)


def recover_orphans(parent: Path, name: str | None = None) -> None:
    """Recover the work directories in `parent` (only `name`'s, if given) whose save is dead:
    its lock is free. A model it had moved aside goes back in place; the rest is removed. Best
    effort: a directory that cannot be changed (read-only) is left as it is."""
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(WORK_PREFIX)]
    except OSError:
        return
    for work in candidates:
        target = parent / work.name[len(WORK_PREFIX):].rpartition(".")[0]
        if (name is not None and target.name != name) or not target.name:
            continue
        lock = _try_lock(work)
        if lock is None:  # its save is running (or locks do not work here): leave it
            continue
        try:
            if os.path.samestat(os.fstat(lock), os.lstat(work)) and not _just_created(work, lock):
                _discard(work, target)
        except OSError:
            pass
        finally:
            os.close(lock)


def _just_created(work: Path, lock: int) -> bool:
    """Whether `work` may belong to a save that created it an instant ago and is about to lock
    it (empty and recent), rather than to a dead one."""
    return not any(work.iterdir()) and time.time() - os.fstat(lock).st_mtime < _JUST_CREATED_S


def _recover_target(path: Path) -> None:
    """Before loading `path`: recover a save of it that was killed half-way (its work directory
    is beside the resolved path, as save resolves it)."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a symbolic link that loops: read_directory says so
        return
    recover_orphans(target.parent, target.name)


def _try_lock(directory: Path, wait_s: float = 0.0) -> int | None:
    """An open descriptor of `directory` holding its exclusive lock, or None when another
    process holds it (after trying for `wait_s`) or the system has no such locks. The lock goes
    with the descriptor: released when it is closed, or when its process dies."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): nothing is ever recovered, nothing wrongly removed
        return None
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                os.close(fd)
                return None
        time.sleep(0.01)


# --- loading --------------------------------------------------------------------------------------
def load_saved(directory: str | os.PathLike, device: str | torch.device = "cpu", *,
               allow_nonfinite: bool = False, backend: str | dict | None = None,
               force: bool = False):
    """Rebuild a model written by `archspec.save` (or `archspec build --save`): the saved
    resolved configs, in the saved dtype, with the saved weights loaded strictly. Returns
    (model, ResolvedSpec). Backends are chosen for `device` as the saved spec asks (weights do
    not depend on the backend that produced them); `backend` forces one as in `build`.
    Weights holding NaN or infinite values are refused unless `allow_nonfinite` (then a warning
    names them); `force` builds even when the weights may not fit in memory. Raises
    CheckpointError for a damaged, tampered or foreign directory, before allocating the model."""
    path = Path(directory).expanduser()
    _recover_target(path)
    saved, spec_file, weights_path = read_directory(path)
    if not force:
        _check_fits(saved, spec_file, weights_path, torch.device(device))
    model = _rebuild(saved, spec_file, device, backend)
    state = read_weights(weights_path, saved, model.state_dict(), allow_nonfinite)
    model = model.to_empty(device=device)
    model.reset_parameters()  # to_empty leaves non-persistent buffers (RoPE tables) uninitialised
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # every check above passed: a last guard, so no raw error escapes
        raise CheckpointError(f"{weights_path}: the weights do not load into the model built from "
                              f"{spec_file.name} ({_first_line(e)}); save the model again") from None
    return model, saved.spec


def read_directory(directory: Path) -> tuple[SavedRecord, Path, Path]:
    """The saved record, the file it was read from and the weights file of a saved-model
    directory, either format; each path checked to be what it should be before it is opened."""
    problem = _not_a(directory, "directory")
    if problem:
        raise CheckpointError(f"no saved model at '{directory}': {problem}; give the directory "
                              "that archspec.save wrote")
    if os.path.lexists(directory / SPEC_FILE):
        spec_file, weights, legacy = directory / SPEC_FILE, directory / WEIGHTS_FILE, False
    elif os.path.lexists(directory / OLD_SPEC_FILE):
        spec_file, weights, legacy = directory / OLD_SPEC_FILE, directory / OLD_WEIGHTS_FILE, True
    else:
        raise CheckpointError(f"no saved model in '{directory}': it has no {SPEC_FILE} (nor the "
                              f"older {OLD_SPEC_FILE}); give the directory that archspec.save wrote")
    text, data = _read_json(spec_file)
    data = upgrade_format_0(data) if legacy else data
    if not legacy:
        format_version(data, str(spec_file))
    saved = read_record(data, str(spec_file), text)
    if not os.path.lexists(weights):
        raise CheckpointError(f"'{directory}' has {spec_file.name} but no {weights.name}: the save "
                              "did not complete or the file was removed; save the model again")
    problem = _not_a(weights, "file")
    if problem:
        raise CheckpointError(f"{weights}: {problem}, not the weights file archspec.save writes; "
                              "restore it, or save the model again")
    return saved, spec_file, weights


def _not_a(path: Path, kind: str) -> str | None:
    """None when `path` is a `kind` ("file": a regular one, or "directory"), symbolic links
    followed; otherwise what it is, in words. Only regular files are opened: a device or a pipe
    (a link to /dev/zero, a FIFO) would never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "it is a symbolic link that loops"
        if os.path.islink(path):
            return f"it is a symbolic link to '{os.readlink(path)}', which does not exist"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "it does not exist"
        return f"it cannot be read ({e.strerror})"
    if stat.S_ISDIR(mode):
        return None if kind == "directory" else "it is a directory"
    if stat.S_ISREG(mode):
        return None if kind == "file" else "it is a file"
    other = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
             else "a named pipe" if stat.S_ISFIFO(mode) else "a socket")
    return f"it is {other}, not a regular file"


def _read_json(path: Path) -> tuple[str, object]:
    """The text of a saved spec and its JSON value; a located CheckpointError for a file that
    is not a regular file, too large, not UTF-8 or not JSON."""
    problem = _not_a(path, "file")
    if problem:
        raise CheckpointError(f"{path}: {problem}, not the file archspec.save writes; restore it, "
                              "or save the model again")
    try:
        with open(path, "rb") as f:  # at most one byte past the limit: never a whole huge file
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"cannot read '{path}': {e.strerror or e}; check its permissions") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise CheckpointError(f"{path}: over {MAX_SPEC_BYTES >> 20} MiB, more than any saved spec "
                              "(kilobytes; some hundred megabytes at the most sublayers a spec can "
                              "have): not an archspec.json; restore it, or save the model again")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line, line_start = raw.count(b"\n", 0, e.start) + 1, raw.rfind(b"\n", 0, e.start) + 1
        column = len(raw[line_start:e.start].decode("utf-8", "replace")) + 1
        raise CheckpointError(f"{path}:{line}:{column}: not UTF-8 text "
                              f"(byte 0x{raw[e.start]:02x}): the file is damaged or not an "
                              "archspec.json; restore it, or save the model again") from None
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); the file is "
                              "damaged: restore it, or save the model again") from None
    except RecursionError:
        raise CheckpointError(f"{path}: values nested too deeply to read (an archspec.json nests "
                              "six levels): the file is damaged or not an archspec.json; restore "
                              "it, or save the model again") from None
    except ValueError as e:  # valid JSON Python will not convert, e.g. an integer of 5,000 digits
        raise CheckpointError(f"{path}: cannot read its JSON ({e}); the file is damaged: restore "
                              "it, or save the model again") from None


def _check_fits(saved: SavedRecord, spec_file: Path, weights: Path, device: torch.device) -> None:
    """Refuse, before anything is built, a model whose weights would not fit in memory: what an
    archspec.json edited to describe terabytes asks for (load_saved's `force` skips this)."""
    try:
        need = weight_bytes(saved.spec, saved.dtype)
    except Exception as e:  # noqa: BLE001 - accounting of configs no spec would resolve to
        raise CheckpointError(f"{spec_file}: the model it describes cannot be sized ({type(e).__name__}: "
                              f"{_first_line(e)}); the file was edited or damaged: restore it, or "
                              "save the model again") from None
    free = free_memory_bytes(device)
    if free is not None and need > MEMORY_HEADROOM * free:
        raise CheckpointError(
            f"{spec_file}: the model it describes needs {human_bytes(need)} for its weights in "
            f"{saved.dtype} ({weights.name} holds {human_bytes(weights.stat().st_size)}), but {device} "
            f"has {human_bytes(free)} free: refused before allocating anything. If the file was "
            "edited, restore it or save the model again; to load anyway, load_saved(..., force=True)")


def _rebuild(saved: SavedRecord, spec_file: Path, device, backend):
    """The model the saved spec describes, on the meta device (no memory)."""
    try:
        return build(saved.spec, device=device, dtype=saved.dtype, meta=True, backend=backend)
    except ValueError as e:  # e.g. a backend the saved spec forces that cannot run on `device`
        raise CheckpointError(f"cannot rebuild the model saved in '{spec_file.parent}' on {device}: {e}") from None
    except Exception as e:  # noqa: BLE001 - sizes torch cannot represent: an edited archspec.json
        raise CheckpointError(f"{spec_file}: the model it describes cannot be built ({type(e).__name__}: "
                              f"{_first_line(e)}); the file was edited or damaged: restore it, or "
                              "save the model again") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_weights(path: Path, saved: SavedRecord, expected: dict[str, torch.Tensor],
                 allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """The weights of `path` as a state dict for a model whose (meta) state dict is `expected`:
    names and shapes checked from the file's header, and its bytes against the digest
    archspec.json records (format 0: the zip's CRCs), before any tensor is read; then aliases
    expanded, each tensor's dtype checked and, unless `allow_nonfinite`, every value finite."""
    with _weights_file(path) as file:
        _check_names(path, set(file.names()), saved.aliases, expected)
        _check_shapes(path, file, saved.aliases, expected)
        if saved.sha256 is not None:
            _check_digest(path, saved.sha256)
        state = {name: file.tensor(name) for name in file.names()}
    state.update({alias: state[target] for alias, target in saved.aliases.items()})
    _check_dtypes(path, state, expected, saved.dtype)
    if allow_nonfinite:
        _warn_nonfinite(state, "loaded anyway (allow_nonfinite=True)", path)
    else:
        _check_finite(path, state)
    return state


def _check_digest(path: Path, expected: str) -> None:
    try:
        actual = sha256(path)
    except OSError as e:
        raise CheckpointError(f"cannot read '{path}': {e.strerror or e}") from None
    if actual != expected:
        raise CheckpointError(
            f"{path}: its SHA-256 is {actual[:16]}..., not the {expected[:16]}... that "
            f"{SPEC_FILE} records (weights.sha256): the file changed after the save (damaged on "
            "disk or in transfer, or replaced); restore it, or save the model again. To load "
            "deliberately edited weights, delete weights.sha256 from archspec.json")


class _Safetensors:
    """A safetensors file: names and shapes from its header, tensors read one by one."""

    def __init__(self, handle, path: Path):
        self.handle, self.path = handle, path

    def names(self) -> list[str]:
        return list(self.handle.keys())

    def shape(self, name: str) -> tuple:
        return tuple(self.handle.get_slice(name).get_shape())

    def tensor(self, name: str) -> torch.Tensor:
        try:
            return self.handle.get_tensor(name)
        except Exception as e:  # noqa: BLE001 - safetensors' own error type; say which tensor
            raise CheckpointError(f"{self.path}: cannot read tensor '{name}' ({e}); the file is "
                                  "damaged: save the model again") from None


class _TorchFile:
    """A format-0 model.pt: a state dict torch.load read with weights_only (no code runs)."""

    def __init__(self, state: dict):
        self.state = state

    def names(self) -> list[str]:
        return list(self.state)

    def shape(self, name: str) -> tuple:
        return tuple(self.state[name].shape)

    def tensor(self, name: str) -> torch.Tensor:
        return self.state[name]


@contextmanager
def _weights_file(path: Path):
    if path.name == OLD_WEIGHTS_FILE:
        yield _TorchFile(_torch_load(path))
        return
    import safetensors
    try:
        handle = safetensors.safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # noqa: BLE001 - SafetensorError or an OSError: a clear error either way
        raise CheckpointError(f"{path}: cannot read the weights ({e}); the file is damaged or "
                              "truncated: save the model again") from None
    with handle:
        yield _Safetensors(handle, path)


def _torch_load(path: Path) -> dict:
    """A format-0 state dict: the zip's CRCs checked, then torch.load with weights_only, which
    refuses any pickle that would run code."""
    _check_zip(path)
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": what fails is reported below
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path}: cannot read the weights ({_first_line(e)}); the file is "
                                  "damaged or truncated: save the model again") from None
        named = re.search(r"GLOBAL (\S+)", str(e))
        raise CheckpointError(
            f"{path}: refused: its pickle is not a plain state dict that torch.load's safe mode "
            "(weights_only) reads" + (f"; it names {named.group(1)}" if named else "") + ". "
            "Unpickling it otherwise could run code: do not torch.load it unless you trust its "
            "source; save the model again with archspec.save") from None
    except EOFError:
        raise CheckpointError(f"{path}: cannot read the weights (the file ends early); it is "
                              "truncated: save the model again") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"{path}: cannot read the weights ({_first_line(e)}); the file is "
                              "damaged or truncated: save the model again") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path}: not a state dict of named tensors; give the directory "
                              "that `archspec build --save` wrote")
    return state


def _check_zip(path: Path) -> None:
    """Every member of a zip archive (torch.save's format) matches its CRC: torch.load does not
    check them, so a flipped bit would load silently."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return  # the older pickle format, or damage torch.load reports
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as e:  # noqa: BLE001 - BadZipFile, zlib.error, OSError, EOFError...
        raise CheckpointError(f"{path}: cannot read the weights ({_first_line(e)}); the file is "
                              "damaged or truncated: save the model again") from None
    if bad is not None:
        raise CheckpointError(f"{path}: its member '{bad}' fails its CRC check: the file is damaged; "
                              "restore it, or save the model again")


def _names_text(names) -> str:
    names = sorted(names)
    shown = ", ".join(f"'{n}'" for n in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _check_names(path: Path, stored: set[str], aliases: dict[str, str], expected: dict) -> None:
    """The file's tensors plus the aliases are exactly the model's state dict."""
    bad_aliases = {a for a, t in aliases.items() if t not in stored or a in stored}
    if bad_aliases:
        raise CheckpointError(f"{path.parent / SPEC_FILE}: weights.aliases {_names_text(bad_aliases)} "
                              f"must each name a tensor that {path.name} stores under another name; "
                              "the files do not belong together: save the model again")
    present = stored | set(aliases)
    missing, unexpected = set(expected) - present, present - set(expected)
    if missing or unexpected:
        parts = ([f"lacks {len(missing)} tensor(s) the model needs: {_names_text(missing)}"] if missing else []) + \
                ([f"holds {len(unexpected)} tensor(s) the model does not have: {_names_text(unexpected)}"]
                 if unexpected else [])
        raise CheckpointError(f"{path}: {'; '.join(parts)}. The weights do not belong to the "
                              f"saved spec (or a file was replaced); save the model again")


def _check_shapes(path: Path, file, aliases: dict[str, str], expected: dict) -> None:
    wrong = []
    for name, t in expected.items():
        shape = file.shape(aliases.get(name, name))
        if shape != tuple(t.shape):
            wrong.append(f"tensor '{name}' is {list(shape)} in the file, but the model built from "
                         f"the saved spec needs {list(t.shape)}")
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensor(s) have the wrong shape: "
                              + "; ".join(wrong[:_LISTED]) + (f"; and {len(wrong) - _LISTED} more"
                                                               if len(wrong) > _LISTED else "")
                              + ". The weights do not belong to the saved spec; save the model again")


def _check_dtypes(path: Path, state: dict[str, torch.Tensor], expected: dict, dtype: str) -> None:
    """Each tensor has its dtype in the model built from the saved spec (the weights in
    build.dtype): load_state_dict would otherwise cast silently (integers to floats too)."""
    wrong = {n for n, t in state.items() if t.dtype != expected[n].dtype}
    if wrong:
        name = sorted(wrong)[0]
        had, needs = (str(t.dtype).removeprefix("torch.") for t in (state[name], expected[name]))
        raise CheckpointError(f"{path}: {len(wrong)} tensor(s) have the wrong dtype: {_names_text(wrong)} "
                              f"('{name}' is {had}, but the model built from the saved spec, in "
                              f"build.dtype {dtype}, needs {needs}); save the model again")


def _nonfinite(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The floating-point tensors holding NaN or infinite values, with how many."""
    return {n: int((~torch.isfinite(t)).sum()) for n, t in state.items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())}


def _nonfinite_text(state: dict[str, torch.Tensor], bad: dict[str, int]) -> str:
    listed = ", ".join(f"'{n}' ({bad[n]:,} of {state[n].numel():,} values)" for n in sorted(bad)[:_LISTED])
    more = f" and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
    return f"{len(bad)} tensor(s) hold NaN or infinite values: {listed}{more}"


def _check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    bad = _nonfinite(state)
    if bad:
        raise CheckpointError(f"{path}: {_nonfinite_text(state, bad)}. The weights are broken (a "
                              "diverged run?); load_saved(..., allow_nonfinite=True) loads them anyway")


def _warn_nonfinite(state: dict[str, torch.Tensor], what: str, path: Path | None = None) -> None:
    """A RuntimeWarning naming the tensors that hold NaN or infinite values, if any."""
    bad = _nonfinite(state)
    if bad:
        where = f"{path}: " if path else ""
        warnings.warn(f"{where}{_nonfinite_text(state, bad)}; {what}", RuntimeWarning, stacklevel=3)
