"""The lm_head component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import LMHead  # noqa: F401  (registers the type)
