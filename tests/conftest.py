import os

import spikekernels  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch starts OpenMP)
import torch

# Triton kernels run on CPU tensors through Triton's interpreter when no GPU is present.
# This must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


def has_triton() -> bool:
    """Triton can run the CPU-tensor tests: only under the interpreter.

    On a CUDA machine the interpreter is off, and tests/ops/test_cuda.py runs the Triton
    kernels on CUDA tensors instead.
    """
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return os.environ.get("TRITON_INTERPRET") == "1"


BACKENDS = ["numba"] + (["triton"] if has_triton() else [])


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every non-reference backend available here (Triton under the interpreter on CPU)."""
    return request.param


@pytest.fixture
def device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


@pytest.fixture
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data/models folder at {SHARED} (absent in a user's clone)")
    return SHARED


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every op output starts as NaN / 0xFF so an unwritten element fails the comparison."""
    from spikekernels import _checks

    monkeypatch.setattr(_checks, "POISON_OUTPUTS", True)
