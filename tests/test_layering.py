"""The layering the code keeps: archspec/ops (kernels and their ground truths) never imports the
stages above it (components, codegen, the CLI, reports); what both sides need lives in neutral
modules (archspec/costs.py). Checked on the source, so a violation fails before anything runs."""
from __future__ import annotations

import ast
from pathlib import Path

import archspec

PACKAGE = Path(archspec.__file__).parent
ABOVE_OPS = ("components", "codegen", "cli", "report", "accounting", "graph", "diff", "kernels",
             "spec", "validate", "checkpoint")


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
    ops = PACKAGE / "ops" / "linear_attention" / "__init__.py"
    names = {name for _, name in imported_modules(ops)}
    assert "archspec.costs" in names  # `from ...costs import Flops`
    assert "archspec.ops.linear_attention.common" in names  # `from .common import ...`
