"""The gated_adapter component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import GatedAdapter  # noqa: F401  (registers the type)
