"""The mamba2 component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import Mamba2  # noqa: F401  (registers the type)
