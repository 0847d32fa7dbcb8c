"""Hugging Face transformers interop (issue 20); an optional extra: archspec[hf]."""
