"""Training data: token streams from files, cut into sequences, in a resumable order.

A data file is one token stream, read by its name:

    NAME.u16, NAME.u32   pre-tokenized ids, little-endian uint16 / uint32, memory-mapped (nothing
                         is read into memory but the windows a batch uses)
    anything else        text: its UTF-8 bytes are the ids 0-255 (byte level, memory-mapped), or,
                         with a tokenizer directory, the tokenizer's ids of its text (held in memory)

Each stream is cut into windows of seq_len + 1 tokens with stride seq_len (inputs are a window's
first seq_len tokens, labels its last seq_len), never across two files. The last `eval_fraction`
of every file's windows (at least one when the fraction is above 0) is held out for the
evaluation loss; the rest are the training windows.

Order: training windows are visited in epochs, each a permutation drawn from a generator seeded
with (seed, epoch). Global position p (sequences consumed since the start) is window
perm_{p // n}[p % n]: a batch is the next B positions, so the data position saved in a
checkpoint is one integer, and resuming from it yields the same batches. A global batch is split
evenly over ranks (rank r: rows r*B/W .. (r+1)*B/W - 1), and each rank's share over gradient
accumulation micro-batches, so a run's batches do not depend on how many processes run it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import TrainError

TOKEN_DTYPES = {".u16": np.dtype("<u2"), ".u32": np.dtype("<u4")}
_SCAN = 1 << 24  # tokens checked at a time against the vocabulary


@dataclass
class Stream:
    path: str
    tokens: np.ndarray  # 1-D ids (a memmap for byte-level text and token files)


def read_stream(path: str, vocab_size: int, tokenizer=None) -> Stream:
    """One data file as a token stream, or a TrainError naming the file: missing, not a
    regular file, unreadable, empty, a token file whose size is not a whole number of ids, an
    id at or beyond the vocabulary."""
    p = Path(path)
    if not p.exists():
        raise TrainError(f"--data {path}: no such file")
    if not p.is_file():
        raise TrainError(f"--data {path}: not a regular file")
    if not os.access(p, os.R_OK):
        raise TrainError(f"--data {path}: not readable (permission denied)")
    size = p.stat().st_size
    if size == 0:
        raise TrainError(f"--data {path}: the file is empty")
    dtype = TOKEN_DTYPES.get(p.suffix.lower())
    try:
        if dtype is not None:
            if size % dtype.itemsize:
                raise TrainError(f"--data {path}: {size} bytes is not a whole number of "
                                 f"{dtype.itemsize}-byte ids ({p.suffix} files hold uint{8 * dtype.itemsize})")
            tokens = np.memmap(p, dtype=dtype, mode="r")
        elif tokenizer is not None:
            text = p.read_bytes().decode("utf-8", errors="replace")
            tokens = np.asarray(tokenizer.encode(text).ids, dtype=np.int64)
            if tokens.size == 0:
                raise TrainError(f"--data {path}: the tokenizer gives no tokens for this file")
        else:
            tokens = np.memmap(p, dtype=np.uint8, mode="r")
    except OSError as e:
        raise TrainError(f"--data {path}: cannot read it: {e.strerror or e}") from None
    _check_ids(path, tokens, vocab_size, byte_level=dtype is None and tokenizer is None)
    return Stream(str(path), tokens)


def _check_ids(path: str, tokens: np.ndarray, vocab_size: int, byte_level: bool) -> None:
    for start in range(0, len(tokens), _SCAN):
        chunk = tokens[start:start + _SCAN]
        top = int(chunk.max())
        if top >= vocab_size:
            at = start + int(np.argmax(chunk >= vocab_size))
            how = (f"byte-level text needs a vocabulary of 256; this model's has {vocab_size} "
                   "(give --tokenizer, or a spec with vocab_size >= 256)" if byte_level
                   else f"the model's vocabulary is [0, {vocab_size})")
            raise TrainError(f"--data {path}: token {at} is id {int(tokens[at])}, outside the "
                             f"vocabulary: {how}")


class Windows:
    """Every window (file index, start) of the streams, split into training and held-out ones."""

    def __init__(self, streams: list[Stream], seq_len: int, eval_fraction: float):
        self.streams, self.seq_len = streams, seq_len
        self.train: list[tuple[int, int]] = []
        self.held_out: list[tuple[int, int]] = []
        for i, s in enumerate(streams):
            n = (len(s.tokens) - 1) // seq_len
            if n < 1:
                raise TrainError(f"--data {s.path}: {len(s.tokens)} tokens is shorter than one "
                                 f"sequence (--seq-len {seq_len} needs {seq_len + 1})")
            n_eval = 0 if eval_fraction == 0 else max(1, round(eval_fraction * n))
            if n_eval >= n:
                raise TrainError(f"--data {s.path}: {n} sequence(s) of {seq_len} tokens leave none "
                                 f"for training after holding out {n_eval} for evaluation "
                                 f"(--eval-fraction {eval_fraction}); give more data, a shorter "
                                 "--seq-len or --eval-fraction 0")
            starts = [k * seq_len for k in range(n)]
            self.train += [(i, s_) for s_ in starts[:n - n_eval]]
            self.held_out += [(i, s_) for s_ in starts[n - n_eval:]]

    def tokens(self, windows: list[tuple[int, int]]) -> torch.Tensor:
        """[len(windows), seq_len + 1] int64 ids."""
        rows = [np.asarray(self.streams[i].tokens[s:s + self.seq_len + 1], dtype=np.int64)
                for i, s in windows]
        return torch.from_numpy(np.stack(rows))


class Order:
    """The training windows' order (module docstring): position p -> window, epoch by epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def window(self, p: int) -> int:
        epoch = p // self.n
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).tolist()
        return self._perm[p % self.n]


def batch_rows(position: int, global_batch: int, rank: int, world: int) -> range:
    """The global positions of this rank's rows of the batch starting at `position`."""
    share = global_batch // world
    return range(position + rank * share, position + (rank + 1) * share)
