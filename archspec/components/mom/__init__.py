"""The mom component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import MoM  # noqa: F401  (registers the type)
