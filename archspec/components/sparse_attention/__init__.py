"""The sparse_attention component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import SparseAttention  # noqa: F401  (registers the type)
