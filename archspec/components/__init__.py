"""Component types. Every module in this package is imported, so a new component file
registers itself just by existing."""
import importlib
import pkgutil

from .base import REGISTRY, Component, get, register, types_with_role  # noqa: F401

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
