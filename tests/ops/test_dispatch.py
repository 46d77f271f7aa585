import warnings

import pytest
import torch

import spikekernels as sk
from spikekernels import _dispatch
from spikekernels.ops.if_scan import op as if_scan_op
from spikekernels.ops.pool import op as pool_op
from spikekernels.ops.residual_merge import op as merge_op


@pytest.fixture
def calls(monkeypatch):
    """Record which implementation each op call resolves to."""
    seen = []
    load = _dispatch._load

    def recording_load(path):
        seen.append(path)
        return load(path)

    monkeypatch.setattr(_dispatch, "_load", recording_load)
    return seen


def _call_all():
    x = torch.rand(3, 2, 3, 4, 4)
    s = (x > 0.5).float()
    sk.if_scan(x)
    sk.residual_merge(x, s)
    sk.spike_avg_pool2d(s, 2)
    sk.global_avg_pool(s)
    sk.spike_max_pool2d(s, 2)


@pytest.mark.parametrize("name", ["reference", "numba", "triton"])
def test_env_override_picks_backend(monkeypatch, calls, name):
    if name == "triton" and "triton" not in sk.available_backends("cpu"):
        pytest.skip("triton cannot run on CPU here (no TRITON_INTERPRET=1)")
    monkeypatch.setenv("SPIKEKERNELS_BACKEND", name)
    _call_all()
    assert len(calls) == 5
    assert all(path.split(".")[-2] == name for path in calls), calls


def test_per_call_backend_beats_env(monkeypatch, calls):
    monkeypatch.setenv("SPIKEKERNELS_BACKEND", "numba")
    sk.residual_merge(torch.rand(2, 3), torch.rand(2, 3), backend="reference")
    assert calls == [merge_op.IMPLS["reference"]]


def test_auto_routes_cpu_to_numba(monkeypatch, calls):
    monkeypatch.setenv("SPIKEKERNELS_BACKEND", "auto")
    _call_all()
    assert calls == [
        if_scan_op.IMPLS["numba"], merge_op.IMPLS["numba"], pool_op.AVG_IMPLS["numba"],
        pool_op.AVG_IMPLS["numba"], pool_op.MAX_IMPLS["numba"],
    ]
    assert _dispatch.choose("residual_merge", torch.device("cpu")) == "numba"


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run: triton kernels need a CUDA tensor"):
        _dispatch.choose("residual_merge", torch.device("cpu"), "triton")
    monkeypatch.setenv("SPIKEKERNELS_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="spike_max_pool2d: backend 'triton' cannot run"):
        _dispatch.choose("spike_max_pool2d", torch.device("cpu"))


def test_explicit_numba_without_numba_raises(monkeypatch):
    monkeypatch.setattr(_dispatch, "_import_status", lambda m: f"{m} is not installed (test)")
    with pytest.raises(RuntimeError, match="numba is not installed"):
        sk.spike_avg_pool2d(torch.zeros(1, 1, 1, 2, 2), 2, backend="numba")


def test_invalid_backend_names(monkeypatch):
    with pytest.raises(ValueError, match="backend='gpu' is not a backend; accepted: auto, reference"):
        sk.spike_max_pool2d(torch.zeros(1, 1, 1, 2, 2), 2, backend="gpu")
    monkeypatch.setenv("SPIKEKERNELS_BACKEND", "fast")
    with pytest.raises(ValueError, match="SPIKEKERNELS_BACKEND='fast' is not a backend"):
        sk.global_avg_pool(torch.zeros(1, 1, 1, 2, 2))


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch, calls):
    monkeypatch.setattr(_dispatch, "_import_status", lambda m: f"{m} is not installed (test)")
    monkeypatch.setattr(_dispatch, "_warned", set())
    x = torch.rand(2, 1, 2, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = sk.residual_merge(x, x, backend="auto")
        second = sk.residual_merge(x, x, backend="auto")
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1
    assert "residual_merge: numba backend unavailable" in str(runtime[0].message)
    assert "falling back to the slow PyTorch reference" in str(runtime[0].message)
    assert calls == [merge_op.IMPLS["reference"]] * 2
    assert torch.equal(first, second)
