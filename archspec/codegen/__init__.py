"""Stage 6, code generation: the emitted causal language model (model.py) and the build that
makes it from a resolved spec (build.py)."""
