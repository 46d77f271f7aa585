"""spikekernels.ops.spike_conv.numba.conv_path: a pinned path overrides the per-call density switch."""

import pytest
import torch

import spikekernels as sk
from spikekernels.ops.spike_conv import numba as nb


def _case(density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(6, 2, 16, 8, 8, generator=g) < density).to(torch.uint8)
    w = torch.randn(16, 16, 3, 3, generator=g) * 0.2
    return s, w


def _run(s, w):
    return sk.spike_conv2d(s, w, None, 1, 1, threshold=0.5, neuron=False, backend="numba")


def test_pinned_path_overrides_the_density_switch(monkeypatch):
    s, w = _case()
    calls = []
    real_dense = nb._dense
    monkeypatch.setattr(nb, "_dense", lambda *a, **k: (calls.append("dense"), real_dense(*a, **k))[1])
    for env, pin, want in [("1", None, []), ("0", None, ["dense"]), ("0", "event", []), ("1", "dense", ["dense"])]:
        monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", env)
        calls.clear()
        with nb.conv_path(pin):
            x = _run(s, w)
        assert calls == want, (env, pin)
        torch.testing.assert_close(x, sk.spike_conv2d(s, w, None, 1, 1, neuron=False, backend="reference"),
                                   rtol=1e-5, atol=1e-5)


def test_conv_path_nests_and_restores():
    assert nb.pinned_path() is None
    with nb.conv_path("event"):
        assert nb.pinned_path() == "event"
        with nb.conv_path("dense"):
            assert nb.pinned_path() == "dense"
        assert nb.pinned_path() == "event"
        with nb.conv_path(None):
            assert nb.pinned_path() is None
    assert nb.pinned_path() is None


def test_conv_path_rejects_other_paths():
    with pytest.raises(ValueError, match=r"path='gather'.*accepted: event, dense or None"):
        nb.conv_path("gather")


@pytest.mark.parametrize("cin,cout,hw,stride", [(3, 16, 32, 1), (16, 16, 32, 1), (32, 64, 16, 2), (64, 64, 8, 1)])
@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_dense_current_of_an_image_alone_equals_its_current_in_a_batch(cin, cout, hw, stride, backend):
    # torch's CPU conv rounds a batch of one differently: one image runs as two
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, cin, hw, hw, generator=g)
    w = torch.randn(cout, cin, 3, 3, generator=g) * 0.2
    with nb.conv_path("dense"):
        full = sk.spike_conv2d(x, w, None, stride, 1, neuron=False, backend=backend)
        for b in (0, 3, 5):
            alone = sk.spike_conv2d(x[:, b:b + 1], w, None, stride, 1, neuron=False, backend=backend)
            assert torch.equal(alone, full[:, b:b + 1]), b
