"""A local transformers model directory (config.json + safetensors) to an archspec model.

    family, spec = import_spec("path/to/model")        # or a config.json; spec: a dict
    model, spec = from_hf("path/to/model")             # the archspec build, weights loaded

Weights come from model.safetensors or a sharded model.safetensors.index.json (safetensors only:
nothing is unpickled). Every archspec parameter is written exactly once; a tensor the spec has
no place for, or one it needs and the checkpoint lacks, is an HFImportError naming them (a tied
model's lm_head.weight, which transformers may keep, is the embedding and is checked equal to
it rather than loaded).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .families import HFImportError, spec_from_config, spec_text

_LISTED = 5
# tensors old GPT-2 checkpoints keep that are not weights (the causal mask buffers)
_NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias")


def _config_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise HFImportError(f"{p}: no such file; give a transformers model directory or its config.json")
    return p


def read_config(path: str | os.PathLike) -> dict:
    p = _config_path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFImportError(f"{p}: not a readable JSON config ({e})") from None


def import_spec(path: str | os.PathLike) -> tuple[str, dict]:
    """The family and the spec dict of a config.json (or a model directory)."""
    config = read_config(path)
    spec = spec_from_config(config)
    if not config.get("_name_or_path"):  # save_pretrained leaves it empty: the directory names the model
        spec["model"]["name"] = _config_path(path).resolve().parent.name or spec["model"]["name"]
    return config.get("model_type"), spec


def import_text(path: str | os.PathLike) -> str:
    family, spec = import_spec(path)
    return spec_text(spec, family, str(_config_path(path)))


def resolved_spec(path: str | os.PathLike):
    """The ResolvedSpec of an import (archspec's own validation of what the import wrote)."""
    from ..spec import loads
    # errors locate in the imported spec's text (what `import-hf -o` writes), not config.json
    return loads(import_text(path), f"<spec imported from {_config_path(path)}>")


class Checkpoint:
    """The tensors of a model directory's safetensors file(s), opened lazily by name."""

    def __init__(self, directory: Path):
        from safetensors import safe_open
        single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise HFImportError(f"{index}: not a safetensors index ({e})") from None
            files = {name: directory / shard for name, shard in weight_map.items()}
        elif single.is_file():
            files = None
        else:
            bins = sorted(p.name for p in directory.glob("*.bin"))
            raise HFImportError(f"{directory}: no model.safetensors or model.safetensors.index.json"
                                + (f" (only {', '.join(bins)}: pickled weights, which archspec does not load; "
                                   "convert them with transformers' save_pretrained(safe_serialization=True))"
                                   if bins else ""))
        self._open, self._handles = safe_open, {}
        if files is None:
            files = {name: single for name in self._handle(single).keys()}
        self.files = files

    def _handle(self, path: Path):
        if path not in self._handles:
            if not path.is_file():
                raise HFImportError(f"{path}: a shard the index names is missing")
            try:
                self._handles[path] = self._open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types for damaged files
                raise HFImportError(f"{path}: not a readable safetensors file ({e})") from None
        return self._handles[path]

    def names(self) -> set[str]:
        return set(self.files)

    def get(self, name: str):
        return self._handle(self.files[name]).get_tensor(name)


def _listed(names) -> str:
    names = sorted(names)
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def from_hf(path: str | os.PathLike, device: str = "cpu", dtype: str | None = None):
    """The archspec model of a local transformers model directory, with its weights (and the
    ResolvedSpec). `dtype` overrides the spec's (the config's torch dtype)."""
    import torch

    from ..codegen.build import build
    from .weights import load_tensors, mapping
    directory = Path(path)
    if not directory.is_dir():
        raise HFImportError(f"{directory}: not a directory; from_hf reads a model directory (config.json and "
                            "safetensors weights)")
    family = read_config(directory).get("model_type")
    spec = resolved_spec(directory)
    ckpt = Checkpoint(directory)
    names = ckpt.names()
    model = build(spec, dtype=dtype, meta=True)  # names and shapes, no memory: checked before allocating
    entries = mapping(family, model, names)
    wanted = {n for e in entries for n in e.theirs}
    missing = wanted - names
    extra = {n for n in names - wanted if not n.endswith(_NOT_WEIGHTS)}
    tied_head = spec.model.tie_embeddings and "lm_head.weight" in extra
    if tied_head:  # transformers may keep the tied head: it must be the embedding (checked below)
        extra.discard("lm_head.weight")
    if missing:
        raise HFImportError(f"{directory}: the checkpoint lacks {len(missing)} tensor(s) the {family} spec needs: "
                            f"{_listed(missing)}")
    if extra:
        raise HFImportError(f"{directory}: the checkpoint has {len(extra)} tensor(s) the imported spec has no place "
                            f"for: {_listed(extra)} (a config.json that does not describe these weights?)")
    model = build(spec, device=device, dtype=dtype)
    load_tensors(model, entries, lambda n: ckpt.get(n))
    if tied_head and not torch.equal(ckpt.get("lm_head.weight").to(model.embedding.weight),
                                     model.embedding.weight.detach()):
        raise HFImportError(f"{directory}: config.json ties the embeddings (tie_word_embeddings) but the "
                            "checkpoint's lm_head.weight differs from model.embed_tokens.weight")
    return model.eval(), spec
