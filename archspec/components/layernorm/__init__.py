"""The layernorm component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import LayerNorm  # noqa: F401  (registers the type)
