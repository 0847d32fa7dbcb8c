"""Hugging Face transformers interop (issue 20): import a transformers checkpoint as an archspec
spec and model, and export a model of a family back.

    spec = archspec.hf.spec_from_config(json.load(open("config.json")))  # a spec dict
    model, spec = archspec.hf.from_hf("path/to/model")                    # weights loaded
    archspec.hf.export_hf(model, "out/")                                  # config.json + model.safetensors
    archspec.hf.ArchspecForCausalLM.from_spec(spec)                       # any spec as a transformers model

Import and export never import transformers: they read and write its file formats
(config.json, safetensors). `archspec.hf.model` (ArchspecConfig, ArchspecForCausalLM, register)
needs it: any spec as a transformers model. The core never imports this package (pyproject.toml's import-linter
contract); `archspec.from_hf` and the CLI's import-hf / convert / export-hf load it on use.
"""
from ..lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".families": ["spec_from_config", "spec_text", "HFImportError", "FAMILIES"],
    ".load": ["from_hf", "import_spec", "import_text"],
    ".export": ["export_hf", "config_from_spec", "family_of"],
    ".model": ["ArchspecConfig", "ArchspecForCausalLM", "register"],
})

__all__ = ["spec_from_config", "spec_text", "HFImportError", "FAMILIES", "from_hf", "import_spec", "import_text",
           "export_hf", "config_from_spec", "family_of", "ArchspecConfig", "ArchspecForCausalLM", "register"]
