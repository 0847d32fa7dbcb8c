"""The embedding component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import Embedding  # noqa: F401  (registers the type)
