"""A Hugging Face tokenizer from a local directory, for `archspec generate --tokenizer` and
`archspec train --tokenizer` (the optional `tokenizers` package; nothing here imports torch)."""
from __future__ import annotations

from pathlib import Path


class TokenizerError(ValueError):
    """The tokenizer cannot be loaded: the message names the flag, the directory and the fix."""


def load_tokenizer(directory: str):
    """The `tokenizers` Tokenizer in directory/tokenizer.json, or a TokenizerError naming what
    is missing (the package, the directory or the file)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TokenizerError("--tokenizer needs the `tokenizers` package: pip install tokenizers") from None
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"--tokenizer {directory}: no tokenizer.json there")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # a damaged file: its parser's own message
        raise TokenizerError(f"--tokenizer {directory}: cannot read tokenizer.json: {e}") from None
