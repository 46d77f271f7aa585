"""The bias schedule goes into the fused kernels as ``step_bias``: same results as folding it
into a float residual (the executor's previous code, kept here as the oracle), with the
uint8 spike shortcut kept."""

import pytest
import torch

import sresnet
import spikekernels as sk
from sresnet import executor as ex_mod
from sresnet.executor import Executor, apply_op

from _sresnet_nets import make


def _images(n, hw, seed):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


# the current method, for the layers the oracle does not change (kept before any monkeypatch)
run_layer = Executor.run_layer


def _conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def folded_run_layer(self, i, outs, steps, state, stem_current=None, t0=0, bits=None, donate=False):
    """``Executor.run_layer`` as it was before step_bias: the schedule's rows are added to a
    float residual ``[steps, B, C, ...]`` (spike shortcuts included) passed with scale 1.
    Every output is written (``bits`` ignored): this oracle reads shortcuts as tensors; the
    ops copy every state (``donate`` ignored)."""
    layer = self.net.layers[i]
    nrn = layer.neuron
    rows = None if layer.kind == "maxpool" else nrn.bias_rows(t0, steps)
    if rows is None or nrn.kind != "if" or layer.kind == "stem" or layer.main is None:
        return run_layer(self, i, outs, steps, state, stem_current, t0)
    be, main = self.backend, layer.main
    x = outs[main.source]
    for op in main.pre:
        x = apply_op(op, x, be)
    residual = self.currents(layer.others, outs) if layer.others else None
    if main.kind == "conv":
        kh, kw = main.weight.shape[2:]
        shape = (steps, x.shape[1], main.weight.shape[0], _conv_out(x.shape[3], kh, main.stride[0], main.padding[0]),
                 _conv_out(x.shape[4], kw, main.stride[1], main.padding[1]))
    else:
        shape = (steps, x.shape[1], main.weight.shape[0])
    extra = rows.view(steps, 1, -1, *([1] * (len(shape) - 3)))
    residual = extra.expand(shape) if residual is None else residual + extra
    kw = dict(return_state=True, spike_dtype=self.spike_dtype, backend=be, threshold=nrn.threshold,
              v0=state if state is not None else nrn.v0, reset=nrn.reset, residual=residual, residual_scale=1.0)
    if main.kind == "conv":
        return sk.spike_conv2d(x, main.weight, main.bias, main.stride, main.padding, **kw)
    return sk.spike_linear(x, main.weight, main.bias, **kw)


def _convert(kind, hw):
    return sresnet.convert(make(kind), _images(8, hw, 2), horizon=6, calib_subset=8)


CASES = [("tiny_A_functional", 8, "reference"), ("tiny_A_functional", 8, "numba"),
         ("tiny_A_functional", 8, "triton"), ("tiny_B_functional", 8, "numba"), ("cifarA", 16, "numba")]


@pytest.mark.parametrize("kind,hw,backend", CASES, ids=[f"{k}-{b}" for k, _, b in CASES])
def test_default_network_outputs_unchanged(monkeypatch, kind, hw, backend):
    snn = _convert(kind, hw)
    layers = [l for l in snn.layers if l.kind != "maxpool" and l.neuron.bias_schedule is not None]
    assert any(l.residual_spikes for l in layers), "the case should have a spike shortcut with a schedule"
    # (Triton runs under its interpreter here: fewer images and steps, still past the horizon of 6)
    x = _images(2 if backend == "triton" else 3, hw, 5)
    T = 7 if backend == "triton" else 9
    for chunk in (None, 4):
        got, got_stats = snn(x, T, per_step=True, chunk=chunk, backend=backend, return_stats=True)
        with monkeypatch.context() as mp:
            mp.setattr(Executor, "run_layer", folded_run_layer)
            want, want_stats = snn(x, T, per_step=True, chunk=chunk, backend=backend, return_stats=True)
        assert torch.equal(got, want)
        assert got_stats["spikes"] == want_stats["spikes"]
        assert sum(got_stats["spikes"].values()) > 0


@pytest.mark.parametrize("kind,hw,backend", CASES, ids=[f"{k}-{b}" for k, _, b in CASES])
def test_every_layer_bit_identical(kind, hw, backend):
    """Layer by layer, two chunks (the second past the schedule's horizon): spikes and the
    membrane carried to the next chunk equal the oracle's bit for bit (a 1-ulp change in the
    current shows in the membrane even where no spike flips)."""
    snn = _convert(kind, hw)
    ex = Executor(snn.network, backend)
    x = _images(3, hw, 5)
    stems = ex.stem_currents(x)
    n = len(snn.network.layers)
    states = [None] * n
    for t0, steps in ((0, 3), (3, 5)):
        outs = [None] * n
        for i in range(n):
            got = ex.run_layer(i, outs, steps, states[i], stems.get(i), t0)
            want = folded_run_layer(ex, i, outs, steps, states[i], stems.get(i), t0)
            assert torch.equal(got[0], want[0]), (i, t0)
            assert torch.equal(got[1], want[1]), (i, t0)
            outs[i], states[i] = got


def test_calibration_schedule_unchanged(monkeypatch):
    """The lowlat calibration runs each layer through run_layer: the schedules must not move."""
    got = _convert("tiny_A_functional", 8)
    with monkeypatch.context() as mp:
        mp.setattr(Executor, "run_layer", folded_run_layer)
        want = _convert("tiny_A_functional", 8)
    pairs = [(a.neuron.bias_schedule, b.neuron.bias_schedule) for a, b in zip(got.layers, want.layers)
             if a.kind != "maxpool"]
    assert sum(a is not None for a, _ in pairs) >= 3
    for a, b in pairs:
        assert (a is None and b is None) or torch.equal(a, b)


def test_spike_shortcut_stays_uint8_with_a_schedule(monkeypatch):
    snn = _convert("tiny_A_functional", 8)
    calls = []
    real = sk.spike_conv2d

    def spy(*args, **kw):
        calls.append((kw.get("residual"), kw.get("step_bias")))
        return real(*args, **kw)

    monkeypatch.setattr(ex_mod.sk, "spike_conv2d", spy)
    snn(_images(2, 8, 5), 4)
    fused = [(r, b) for r, b in calls if b is not None]
    assert fused, "the scheduled layers should pass their rows as step_bias"
    assert any(r is not None and r.dtype == torch.uint8 for r, _ in fused)
    assert all(r is None or r.dtype == torch.uint8 or r.dtype == torch.float32 and r.stride(0) != 0 for r, _ in fused)
    assert all(b.shape[0] == 4 and b.dtype == torch.float32 for _, b in fused)
