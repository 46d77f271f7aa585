"""Large CPU op outputs from the pool of reused mappings (spikekernels/_memory.py)."""

import gc
import pickle

import numpy as np
import pytest
import torch

import spikekernels as sk
from spikekernels import _checks, _memory

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def empty_pool(monkeypatch):
    """Each test starts and ends with an empty pool of the default size."""
    monkeypatch.delenv("SPIKEKERNELS_OUTPUT_POOL_MB", raising=False)
    gc.collect()
    _memory._free.clear()
    _memory._held = 0
    yield
    gc.collect()
    _memory._free.clear()
    _memory._held = 0


def _big(dtype=torch.float32):
    """An output shape of exactly POOL_MIN_BYTES in ``dtype``."""
    return (4, _memory.POOL_MIN_BYTES // (4 * torch.empty((), dtype=dtype).element_size()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bool, torch.float16, torch.bfloat16])
def test_large_outputs_come_from_the_pool_and_are_reused(dtype):
    shape = _big(dtype)
    out = _checks.new_output(shape, dtype, CPU)
    assert out.shape == shape and out.dtype == dtype and out.is_contiguous()
    assert out.data_ptr() % (2 << 20) == 0, "the data should start on a huge-page boundary"
    out.fill_(1)
    assert bool((out == 1).all())
    address = out.data_ptr()
    del out
    gc.collect()
    assert _memory.pooled() >= _memory.POOL_MIN_BYTES
    again = _checks.new_output(shape, dtype, CPU)
    assert again.data_ptr() == address, "the released mapping should be reused"
    assert _memory.pooled() == 0


def test_small_outputs_stay_on_torch():
    assert _memory.empty((_memory.POOL_MIN_BYTES // 4 - 1,), torch.float32) is None
    out = _checks.new_output((3, 5), torch.float32, CPU)
    assert out.shape == (3, 5)


def test_a_view_keeps_its_memory_out_of_the_pool():
    shape = _big()
    out = _checks.new_output(shape, torch.float32, CPU)
    out.fill_(7.0)
    view = out[1]
    del out
    gc.collect()
    assert _memory.pooled() == 0, "the view still uses the memory"
    other = _checks.new_output(shape, torch.float32, CPU)
    other.fill_(-1.0)
    assert bool((view == 7.0).all())
    del view
    gc.collect()
    assert _memory.pooled() > 0


def test_pool_size_and_off(monkeypatch):
    shape = _big()
    monkeypatch.setenv("SPIKEKERNELS_OUTPUT_POOL_MB", "0")
    assert _memory.empty(shape, torch.float32) is None
    assert _checks.new_output(shape, torch.float32, CPU).shape == shape
    # a pool smaller than the output: the mapping is handed out, then closed on release
    monkeypatch.setenv("SPIKEKERNELS_OUTPUT_POOL_MB", str(_memory.POOL_MIN_BYTES / 2**20 / 2))
    out = _checks.new_output(shape, torch.float32, CPU)
    assert out is not None and _memory.pooled() == 0
    del out
    gc.collect()
    assert _memory.pooled() == 0


@pytest.mark.parametrize("raw", ["lots", "-1", "nan"])
def test_bad_pool_size_is_named(monkeypatch, raw):
    monkeypatch.setenv("SPIKEKERNELS_OUTPUT_POOL_MB", raw)
    with pytest.raises(ValueError, match="SPIKEKERNELS_OUTPUT_POOL_MB"):
        _checks.new_output(_big(), torch.float32, CPU)


def test_pooled_outputs_are_ordinary_tensors():
    out = _checks.new_output(_big(), torch.float32, CPU)
    out.copy_(torch.arange(out.numel(), dtype=torch.float32).view(out.shape))
    back = pickle.loads(pickle.dumps(out))
    assert torch.equal(back, out)
    shared = out.clone()
    out.share_memory_()
    assert out.is_shared() and torch.equal(out, shared)
    assert torch.equal((out * 2).sum(0), shared.sum(0) * 2)


def test_an_op_writes_its_large_output_into_the_pool():
    """if_scan's float32 spikes of POOL_MIN_BYTES and more: pool memory, same values as the
    reference (and the same memory again on the next call once the first is released)."""
    x = torch.rand(4, _memory.POOL_MIN_BYTES // 16, generator=torch.Generator().manual_seed(0)) * 0.8
    s = sk.if_scan(x, 1.0, backend="numba")
    assert s.data_ptr() % (2 << 20) == 0
    assert torch.equal(s, sk.if_scan(x, 1.0, backend="reference"))
    address = s.data_ptr()
    del s
    gc.collect()
    assert sk.if_scan(x, 1.0, backend="numba").data_ptr() == address
