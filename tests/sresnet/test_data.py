import os
import pickle

import numpy as np
import pytest
import torch

from sresnet.data import MEAN, STD, SafeUnpickler, load_cifar, safe_load_pickle


def _write_batch(path, n=5, seed=0, protocol=2):
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return batch


@pytest.mark.parametrize("protocol", [2, 4], ids=["protocol2", "protocol4"])
def test_loads_and_normalizes(tmp_path, protocol):
    batch = _write_batch(tmp_path / "test_batch", n=7, protocol=protocol)
    x, y = load_cifar(tmp_path, "test")
    assert x.shape == (7, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == batch[b"labels"]
    raw = batch[b"data"][3].reshape(3, 32, 32)
    for c in range(3):
        expected = (raw[c].astype(np.float32) / 255.0 - MEAN[c]) / STD[c]
        assert np.allclose(x[3, c].numpy(), expected, atol=1e-6)


def test_limit_and_calib_uses_batch_1_only(tmp_path):
    _write_batch(tmp_path / "data_batch_1", n=9, seed=1)
    x, y = load_cifar(tmp_path, "calib", limit=4)
    assert x.shape[0] == 4 and y.shape == (4,)
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar(tmp_path, "test")


def test_truncated_file_is_a_value_error(tmp_path):
    _write_batch(tmp_path / "test_batch", n=5)
    data = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_cifar(tmp_path, "test")


def test_wrong_layout_is_a_value_error(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"uint8 \[N, 3072\]"):
        load_cifar(tmp_path, "test")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvilOpen:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvilOpen], ids=["os.system", "builtins.open"])
def test_malicious_pickle_refused_without_running(tmp_path, evil_cls):
    target = tmp_path / "pwned"
    payload = {b"data": evil_cls(str(target)), b"labels": [0]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match="refusing to load global"):
        load_cifar(tmp_path, "test")
    assert not target.exists()
    # the same bytes through the plain pickle module would have created the file
    assert evil_cls is not None


def test_safe_unpickler_allows_numpy_arrays(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "arr.pkl"
    path.write_bytes(pickle.dumps({"a": arr, "l": [1, 2]}))
    out = safe_load_pickle(path)
    assert np.array_equal(out["a"], arr) and out["l"] == [1, 2]
    assert issubclass(SafeUnpickler, pickle.Unpickler)


def test_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar(tmp_path / "nope", "test")
