"""The layering the code keeps. archspec/ops (kernels and their ground truths) never imports the
stages above it (components, codegen, the CLI, reports): import-linter's contract in
pyproject.toml, run here as CI runs it. And the front end imports neither torch nor triton: the
accounting side of ops (each family's costs.py, the family packages, archspec/costs.py), every
stage up to the report and diff, every component's spec.py, and the commands that only read
specs (validate, report, graph, diff, components, schema), each checked in a fresh interpreter
that refuses both."""
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

SPEC_SIDES = sorted(f"archspec.components.{p.parent.name}.spec"
                    for p in (ROOT / "archspec" / "components").glob("*/spec.py"))
FRONT_END = ["archspec.loader", "archspec.expr", "archspec.validate", "archspec.schema", "archspec.layout",
             "archspec.spec", "archspec.plan", "archspec.accounting", "archspec.backends",
             "archspec.report", "archspec.graph", "archspec.diff", "archspec.components", "archspec.cli",
             "archspec.hf.families", "archspec.hf.load", "archspec.hf.export", "archspec.hf.cli", *SPEC_SIDES]
SPECS = ROOT / "specs"
COMMANDS = [["validate", "specs/tiny.yaml", "specs/hydra-tiny.yaml", "specs/mom-tiny.yaml"],
            ["report", "specs/llama-2-7b.yaml", "--format", "json"],
            ["report", "specs/mom-tiny.yaml", "--device", "cuda"],
            ["graph", "specs/hydra-tiny.yaml", "--format", "dot"],
            ["diff", "specs/tiny.yaml", "specs/tiny-parallel.yaml"],
            ["components"], ["schema"]]

# Run in a fresh interpreter: a meta-path finder refuses torch and triton, so an import that
# wants them fails with a traceback naming the module that asked.
REFUSE_TORCH = """
import importlib, importlib.machinery, sys

class Refuse:
    # finding torch or triton is allowed (`is triton installed?` asks find_spec); loading fails
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "triton"):
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ImportError(f"{spec.name} is imported (this module must stay torch-free)")

    def exec_module(self, module):
        pass

sys.meta_path.insert(0, Refuse())
for name in sys.argv[1:]:
    importlib.import_module(name)
assert not {"torch", "triton"} & set(sys.modules), sorted(sys.modules)
"""
RUN_COMMAND = REFUSE_TORCH.replace("for name in sys.argv[1:]:\n    importlib.import_module(name)\n", """
from archspec.cli import main
code = main(sys.argv[1:])
assert code in (0, 1), code  # diff exits 1 for "different"
""")


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


def test_the_front_end_imports_neither_torch_nor_triton():
    """Every stage up to the report and diff, and every component's spec side."""
    assert len(SPEC_SIDES) >= 10
    result = _run("-c", REFUSE_TORCH, *FRONT_END)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_reading_commands_run_without_torch(argv):
    """The commands that only read specs run (and succeed) in an interpreter that cannot import
    torch or triton."""
    result = _run("-c", RUN_COMMAND, *argv)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout  # they printed their result


@pytest.mark.parametrize("family", FAMILIES)
def test_every_exported_name_loads(family):
    """Each name a family package exports (lazily, from its submodules) exists there."""
    package = importlib.import_module(f"archspec.ops.{family}")
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert not missing
