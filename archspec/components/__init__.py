"""Component types. Every package here is one type (`<type>/spec.py` registers it; see base.py);
each is imported, so a new component package registers itself just by existing. Importing
this package imports no torch: module sides load when a model is built."""
import importlib
import pkgutil

from .base import REGISTRY, Component, get, register, types_with_role  # noqa: F401

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.ispkg and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
