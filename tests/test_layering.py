"""The layering the code keeps. archspec/ops (kernels and their ground truths) never imports the
stages above it (components, codegen, the CLI, reports): import-linter's contract in
pyproject.toml, run here as CI runs it. And the accounting side of ops (each family's costs.py,
the family packages themselves, archspec/costs.py) imports neither torch nor triton, so the
front end can count without them: checked in a fresh interpreter that refuses both."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import archspec

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


def test_import_linter_contracts_hold():
    """`lint-imports` (pyproject.toml's [tool.importlinter]): ops imports no stage above it,
    directly or through another module."""
    result = _run("-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                  "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


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
