"""The residual component: spec.py only (the gates belong to the block, codegen/model.py)."""
from .spec import Residual  # noqa: F401  (registers the type)
