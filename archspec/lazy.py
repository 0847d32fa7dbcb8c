"""Lazy public names for a package (PEP 562): the package lists which submodule defines each
name, and a submodule is imported the first time one of its names is read. So importing the
package costs nothing (archspec.ops' families import torch only when a name that needs it is
used: their accounting stays importable without torch), while `from package import name`
works as if the package had imported every submodule itself. A neutral module: both the
front end and archspec.ops use it."""
from __future__ import annotations

import importlib
import sys
import types
from typing import Callable, Iterable


def lazy_exports(package: str, submodules: dict[str, Iterable[str]]) -> tuple[Callable, Callable]:
    """(`__getattr__`, `__dir__`) for the package named `package`, whose public names
    `submodules` lists per defining submodule (relative, e.g. {".chunk": ["chunk_rule"]}).
    A name, once loaded, is stored in the package, so later reads are plain lookups. An
    unknown name raises AttributeError, which `from package import submodule` relies on.

    An exported name also stays bound to its object when a submodule of the same name loads
    (archspec.report the function, not the module archspec/report.py): the import system
    binds every submodule it loads as an attribute of its package, which an eager package
    overwrote with the function right after; here the package declines that binding."""
    origin = {name: module for module, names in submodules.items() for name in names}

    def __getattr__(name: str):
        if name not in origin:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(origin[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(origin))

    class Package(types.ModuleType):
        def __setattr__(self, name: str, value) -> None:
            if not (name in origin and isinstance(value, types.ModuleType)):
                super().__setattr__(name, value)

    sys.modules[package].__class__ = Package
    return __getattr__, __dir__
