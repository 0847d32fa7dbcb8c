"""The mixda component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import MixDA  # noqa: F401  (registers the type)
