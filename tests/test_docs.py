"""The docs show real code: every ```python file=PATH block is that file, verbatim."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python file=(\S+)\n(.*?)^```$", re.M | re.S)
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_file_blocks_are_the_files(doc):
    for path, text in BLOCK.findall(doc.read_text()):
        assert (ROOT / path).read_text() == text, f"{doc.name}: the block for {path} is out of date"


def test_the_walkthrough_shows_its_files():
    blocks = dict(BLOCK.findall((ROOT / "docs" / "components.md").read_text()))
    assert set(blocks) == {"archspec/components/gated_adapter/spec.py",
                           "archspec/components/gated_adapter/module.py"}
