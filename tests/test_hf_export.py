"""Issue 20, export: an archspec model of a transformers family -> `archspec export-hf` ->
transformers' AutoModelForCausalLM.from_pretrained loads it and gives the same logits.

Round trips start from tiny random transformers models of each family (built in-process, no
downloads: test_hf_import.py's), imported with from_hf and exported back; native exports start
from archspec specs with archspec's own initial weights. A spec no family covers is an error
pointing to the generic wrapper.
"""
from __future__ import annotations

import json

import pytest
import torch

import archspec

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from archspec.hf import HFImportError, export_hf, family_of, from_hf  # noqa: E402
from test_hf_import import FAMILIES, SPECS, V, _logits, _saved  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

EXPORTED = ["llama", "llama-tied-headdim", "mistral", "qwen2", "qwen2-sliding", "gemma2", "gpt2", "mixtral",
            "qwen2_moe", "qwen2_moe-sliding-dense", "olmoe", "mamba", "falcon_mamba", "mamba2", "phi3", "phi3-partial",
            "phi3-sliding", "jamba", "bamba", "zamba2"]


def _load_hf(directory):
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
    return hf.float().eval()


@pytest.mark.parametrize("name", EXPORTED)
def test_import_then_export_gives_transformers_the_same_model(name, tmp_path):
    original = _saved(name, tmp_path / "hf")
    model, spec = from_hf(tmp_path / "hf")
    family, _ = family_of(spec)
    # a Phi-3 without partial rotary is a Llama (or, windowed, a Mistral) with fused weights:
    # the first family that gives the same model is written
    assert family == {"phi3": "llama", "phi3-sliding": "mistral"}.get(name, FAMILIES[name].get("model_type", name))
    export_hf(model, tmp_path / "out")
    back = _load_hf(tmp_path / "out")
    assert back.config.model_type == family
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in original.parameters())
    tokens = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    # the same weights in the same modules: equal up to float32 reordering (~1e-6, see
    # test_hf_import.py); a misplaced tensor moves logits by 1e-2 or more
    assert (_logits(back, tokens) - _logits(original, tokens)).abs().max().item() < 1e-4
    assert (_logits(back, tokens) - _logits(model, tokens)).abs().max().item() < 1e-4


MAMBA = """
model: {name: mamba-small, vocab_size: 97, d_model: 32, max_seq_len: 64, tie_embeddings: true, norm: {type: rmsnorm}}
components:
  M: {type: mamba, d_state: 8}
layout: M x 3
"""


@pytest.mark.parametrize("which", ["tiny.yaml", "gpt2-small", "mamba"])
def test_an_archspec_model_exports_to_its_family(which, tmp_path):
    """archspec's own weights (random init, perturbed so norms matter) in transformers."""
    if which == "tiny.yaml":
        spec, family = archspec.load(SPECS / "tiny.yaml"), "llama"
    elif which == "mamba":
        spec, family = archspec.loads(MAMBA), "mamba"
    else:
        text = (SPECS / "gpt2.yaml").read_text().replace("vocab_size: 50257", "vocab_size: 97") \
            .replace("d_model: 768", "d_model: 32").replace("max_seq_len: 1024", "max_seq_len: 64") \
            .replace("n_heads: 12", "n_heads: 4").replace("d_ff: 3072", "d_ff: 64").replace("x 12", "x 2")
        spec, family = archspec.loads(text), "gpt2"
    model = archspec.build(spec, seed=1, dtype="float32").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family
    hf = _load_hf(tmp_path)
    assert sum(p.numel() for p in hf.parameters()) == archspec.account(spec).total().params
    tokens = torch.randint(0, spec.model.vocab_size, (2, 10), generator=torch.Generator().manual_seed(3))
    assert (_logits(hf, tokens) - _logits(model, tokens)).abs().max().item() < 1e-4  # as above


@pytest.mark.parametrize("spec_file, family", [("llama-2-7b.yaml", "llama"), ("qwen2.5-0.5b.yaml", "qwen2"),
                                               ("gemma-2-2b.yaml", "gemma2"), ("olmoe-1b-7b.yaml", "olmoe"),
                                               ("gpt2.yaml", "gpt2"), ("mamba-130m.yaml", "mamba"),
                                               ("zamba2-1.2b.yaml", "zamba2")])
def test_published_specs_match_their_family(spec_file, family):
    """And transformers builds the exported config with the spec's parameter count (meta device)."""
    spec = archspec.load(SPECS / spec_file)
    found, config = family_of(spec)
    assert found == family
    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in json.loads(json.dumps(config)).items()
                                               if k not in ("architectures",)})
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in hf.parameters()) == archspec.account(spec).total().params


@pytest.mark.parametrize("spec_file", ["hydra-tiny.yaml", "mom-tiny.yaml", "tiny-parallel.yaml", "mamba-tiny.yaml"])
def test_a_spec_no_family_covers_points_to_the_generic_wrapper(spec_file):
    with pytest.raises(HFImportError, match="ArchspecForCausalLM"):
        family_of(archspec.load(SPECS / spec_file))


def test_a_named_family_that_does_not_fit_says_so():
    with pytest.raises(HFImportError, match="not the mamba family"):
        family_of(archspec.load(SPECS / "tiny.yaml"), "mamba")


def test_cli_export_hf(tmp_path, capsys):
    from archspec.cli import main
    model = archspec.build(archspec.load(SPECS / "tiny.yaml"), seed=0)
    archspec.save(model, tmp_path / "saved")
    assert main(["export-hf", str(tmp_path / "saved"), "-o", str(tmp_path / "out")]) == 0
    hf = _load_hf(tmp_path / "out")
    tokens = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    assert (_logits(hf, tokens) - _logits(model.eval(), tokens)).abs().max().item() < 1e-4  # as above
    assert main(["export-hf", str(tmp_path / "saved"), "-o", str(tmp_path / "out")]) == 1  # not empty
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["export-hf", str(SPECS / "hydra-tiny.yaml"), "-o", str(tmp_path / "hydra")]) == 1
    err = capsys.readouterr().err
    assert "ArchspecForCausalLM" in err and "Traceback" not in err and not (tmp_path / "hydra").exists()
