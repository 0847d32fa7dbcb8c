"""The layering the code keeps: archspec/ops (kernels and their ground truths) never imports the
stages above it (components, codegen, the CLI, reports); what both sides need lives in neutral
modules (archspec/costs.py, archspec/lazy.py). Checked on the source, so a violation fails
before anything runs. And the accounting side of ops (each family's costs.py, the family
packages themselves, archspec/costs.py) imports neither torch nor triton, so the front end can
count without them: checked in a fresh interpreter that refuses both."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import archspec

PACKAGE = Path(archspec.__file__).parent
ABOVE_OPS = ("components", "codegen", "cli", "report", "accounting", "graph", "diff", "kernels",
             "spec", "validate")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in one archspec source file."""
    package = ".".join(("archspec",) + path.relative_to(PACKAGE).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, name))
    return found


def test_ops_imports_nothing_above_it():
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}"
           for path in sorted((PACKAGE / "ops").rglob("*.py"))
           for line, name in imported_modules(path)
           if name.startswith(tuple(f"archspec.{m}" for m in ABOVE_OPS))]
    assert not bad, "\n".join(bad)


def test_the_scan_sees_relative_and_absolute_imports():
    # the checker itself: a relative import two levels up and an absolute one are both resolved
    ops = PACKAGE / "ops" / "linear_attention" / "chunk.py"
    names = {name for _, name in imported_modules(ops)}
    assert "torch" in names  # `import torch`
    assert "archspec.ops.linear_attention.common" in names  # `from .common import ...`
    costs = PACKAGE / "ops" / "linear_attention" / "costs.py"
    assert "archspec.costs" in {name for _, name in imported_modules(costs)}  # `from ...costs import`


ROOT = Path(archspec.__file__).parent.parent
OPS = ROOT / "archspec" / "ops"
FAMILIES = sorted(p.parent.name for p in OPS.glob("*/__init__.py"))
TORCH_FREE = (["archspec", "archspec.costs", "archspec.lazy", "archspec.ops"]
              + [f"archspec.ops.{family}" for family in FAMILIES]
              + [f"archspec.ops.{p.parent.name}.costs" for p in sorted(OPS.glob("*/costs.py"))])

# Run in a fresh interpreter: a meta-path finder refuses torch and triton, so an import that
# wants them fails with a traceback naming the module that asked.
REFUSE_TORCH = """
import importlib, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "triton"):
            raise ImportError(f"{name} is imported (this module must stay torch-free)")
        return None

sys.meta_path.insert(0, Refuse())
for name in sys.argv[1:]:
    importlib.import_module(name)
assert not {"torch", "triton"} & set(sys.modules), sorted(sys.modules)
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    """A Python subprocess that imports archspec from this checkout, run from its root."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)


def test_the_accounting_imports_neither_torch_nor_triton():
    assert len(FAMILIES) >= 8 and sum(name.endswith(".costs") for name in TORCH_FREE) >= 8
    result = _run("-c", REFUSE_TORCH, *TORCH_FREE)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("family", FAMILIES)
def test_every_exported_name_loads(family):
    """Each name a family package exports (lazily, from its submodules) exists there."""
    package = importlib.import_module(f"archspec.ops.{family}")
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert not missing
