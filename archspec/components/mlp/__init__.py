"""The mlp component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import MLP  # noqa: F401  (registers the type)
