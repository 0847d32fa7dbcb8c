"""Shared helpers for the tests: write a small YAML spec and collect its problems; the device
Triton kernel tests run on."""
from __future__ import annotations

import os
import textwrap

import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, so it is set before anything imports
# triton: without a GPU every kernel test runs in triton's interpreter on the CPU (numpy). On a
# machine with CUDA the kernels run for real; TRITON_INTERPRET=1 in the environment still forces
# the interpreter there.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

import pytest  # noqa: E402

from archspec.errors import SpecError
from archspec.spec import load

GOOD = """\
model:
  name: small
  vocab_size: 256
  d_model: 64
  max_seq_len: 128
components:
  A: {type: attention, n_heads: 4, n_kv_heads: 2}
  F: {type: mlp, activation: swiglu, d_ff: 128}
layout: "(A F) x 2"
"""


@pytest.fixture
def write(tmp_path):
    """write(text, name='spec.yaml') -> path of a file holding the dedented text."""
    def _write(text: str | bytes, name: str = "spec.yaml"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text))
        return path
    return _write


@pytest.fixture
def problems(write):
    """problems(text) -> the list of Problems a spec raises (fails the test if it is valid)."""
    def _problems(text: str, name: str = "spec.yaml"):
        path = write(text, name)
        with pytest.raises(SpecError) as info:
            load(path)
        return info.value.problems
    return _problems


@pytest.fixture
def one_thread():
    """One intra-op thread for the tiny models of a test module (`pytestmark =
    pytest.mark.usefixtures("one_thread")`): on the 2-core test machine a second thread only
    adds synchronisation (measured under load: 13 ms per training step with 1 thread, 260 ms
    with 2)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def kernel_device() -> torch.device:
    """Where Triton kernel tests run: the CPU under the interpreter, else the GPU."""
    from archspec.ops.triton_support import interpreting, triton_installed
    if not triton_installed():
        pytest.fail("triton is not installed: the kernel tests need it (pip install -e '.[test]')")
    return torch.device("cpu" if interpreting() else "cuda")


# --- the quick loop: `pytest -m "not slow"` -------------------------------------------------------
# Slow: every test that runs Triton kernels (in the interpreter without a GPU: the kernel_device
# fixture), the ahead-of-time gate and other compiles for GPU targets, the gpu_check smoke run and
# the training loops (tests named "...learns..." or "...trains"), and the few cases marked slow
# where they are defined (a float64 gradcheck of a recurrence: test_contract.py). CI runs
# everything; the marker only lets a developer leave them out.
SLOW_MODULES = {"test_kernel_gate.py", "test_gpu_check_smoke.py", "test_learning.py"}


def _slow(item) -> bool:
    name = item.originalname if hasattr(item, "originalname") else item.name
    return ("kernel_device" in getattr(item, "fixturenames", ()) or item.path.name in SLOW_MODULES
            or "learns" in name or name.endswith("trains"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _slow(item):
            item.add_marker(pytest.mark.slow)
