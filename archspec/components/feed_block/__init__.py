"""The feed_block component: spec.py (schema, checks, accounting; no torch) and module.py (its nn.Module)."""
from .spec import FeedBlock  # noqa: F401  (registers the type)
