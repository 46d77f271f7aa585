"""Training benchmarks: forward + backward of the IF neuron and of a spiking conv layer (CPU),
spikekernels against SpikingJelly's torch path and snnTorch, same shapes, same process.

Run:  .venv/bin/python -m pytest bench/test_bench_grad.py --benchmark-only
(peers are test-only: pip install --no-deps spikingjelly==2.0.0 snntorch==1.0.0 loguru;
a missing peer skips its rows.)

Every provider uses the sigmoid surrogate with alpha (snnTorch: slope) 4, subtract reset,
threshold 1, start membrane 0, and keeps the reset in the graph where it can (SpikingJelly
detach_reset=False; snnTorch detaches its reset internally, so its gradient differs). Before timing, each provider's
spikes are checked against spikekernels' reference (and, for the neuron, its dL/dx).
One round = forward, a loss sum(spikes * g), backward.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spikekernels as sk
from spikekernels.testing import assert_close

ALPHA = 4.0
T, B, C, H, W = 32, 16, 16, 32, 32  # 8.4 M neuron-steps, 32 MiB of float32 currents
CONV_T, CONV_B = 16, 16  # conv layer: 16 -> 16 channels, 3x3, padding 1, 32x32, 10% input spikes
PROVIDERS = ["spikekernels-numba", "spikekernels-reference", "spikingjelly-m", "snntorch"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _sj_node():
    neuron = pytest.importorskip("spikingjelly.activation_based.neuron", reason="spikingjelly not installed")
    from spikingjelly.activation_based import surrogate

    return neuron.IFNode(v_threshold=1.0, v_reset=None, surrogate_function=surrogate.Sigmoid(alpha=ALPHA),
                         detach_reset=False, step_mode="m")


def _snn_leaky():
    snntorch = pytest.importorskip("snntorch", reason="snntorch not installed")
    from snntorch import surrogate

    return snntorch.Leaky(beta=1.0, threshold=1.0, reset_mechanism="subtract", spike_grad=surrogate.sigmoid(slope=ALPHA))


def _neuron_fn(provider):
    """x [T, ...] -> spikes [T, ...] with a grad_fn."""
    if provider.startswith("spikekernels"):
        backend = provider.split("-")[1]
        sur = sk.surrogate.Sigmoid(ALPHA)
        return lambda x: sk.if_scan(x, 1.0, v0=0.0, surrogate=sur, backend=backend)
    if provider == "spikingjelly-m":
        node = _sj_node()

        def run(x):
            node.reset()
            return node(x)

        return run
    cell = _snn_leaky()

    def run(x):
        mem = torch.zeros_like(x[0])
        out = []
        for t in range(x.shape[0]):
            spk, mem = cell(x[t], mem)
            out.append(spk)
        return torch.stack(out)

    return run


def _step(fn, x_leaf, g):
    x = x_leaf.detach().requires_grad_()
    (fn(x) * g).sum().backward()
    return x.grad


@pytest.mark.parametrize("provider", PROVIDERS)
def test_if_scan_forward_backward_cpu(benchmark, provider):
    x = torch.rand(T, B, C, H, W, generator=_gen(0)) * 0.6 - 0.1
    g = torch.randn(x.shape, generator=_gen(1))
    fn = _neuron_fn(provider)
    ref = _neuron_fn("spikekernels-reference")
    flips = (fn(x).detach() != ref(x).detach()).sum().item()
    if provider == "snntorch":
        # snnTorch adds (v + x) - θ where we add (v - θ) + x: rounding flips near θ only
        assert flips <= 1e-5 * x.numel(), f"snntorch: {flips} spikes differ from the reference"
    else:
        assert flips == 0, f"{provider}: {flips} spikes differ from the reference"
        assert_close(_step(fn, x, g), _step(ref, x, g), rtol=1e-4, atol=1e-4)
    benchmark.group = f"IF neuron forward+backward T={T} B={B} C={C} {H}x{W} (CPU)"
    benchmark.pedantic(_step, args=(fn, x, g), rounds=5, warmup_rounds=1)
    benchmark.extra_info["neuron_steps_per_s"] = x.numel() / benchmark.stats.stats.mean


def _conv_fn(provider, weight, bias):
    """s [T, B, Cin, H, W] -> spikes [T, B, Cout, H, W]; returns (fn, parameters)."""
    if provider.startswith("spikekernels"):
        layer = sk.SpikeConv2d(C, C, 3, padding=1, v0=0.0, surrogate=sk.surrogate.Sigmoid(ALPHA),
                               backend=provider.split("-")[1])
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        return layer, list(layer.parameters())
    conv = torch.nn.Conv2d(C, C, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    if provider == "spikingjelly-m":
        node = _sj_node()

        def run(s):
            node.reset()
            cur = conv(s.flatten(0, 1)).view(s.shape[0], s.shape[1], C, s.shape[3], s.shape[4])
            return node(cur)

        return run, list(conv.parameters())
    cell = _snn_leaky()

    def run(s):
        mem, out = None, []
        for t in range(s.shape[0]):
            cur = conv(s[t])
            mem = torch.zeros_like(cur) if mem is None else mem
            spk, mem = cell(cur, mem)
            out.append(spk)
        return torch.stack(out)

    return run, list(conv.parameters())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_spike_conv2d_layer_forward_backward_cpu(benchmark, provider):
    s = (torch.rand(CONV_T, CONV_B, C, H, W, generator=_gen(2)) < 0.1).float()
    weight = torch.randn(C, C, 3, 3, generator=_gen(3)) * 0.3
    bias = torch.randn(C, generator=_gen(4)) * 0.05
    g = torch.randn(CONV_T, CONV_B, C, H, W, generator=_gen(5))
    fn, params = _conv_fn(provider, weight, bias)
    ref, _ = _conv_fn("spikekernels-reference", weight, bias)
    flips = (fn(s).detach() != ref(s).detach()).sum().item()
    # every provider sums the same conv (torch's); a flip could only come from rounding at θ
    assert flips <= 1e-5 * s.numel(), f"{provider}: {flips} spikes differ from the reference"

    def step():
        for p in params:
            p.grad = None
        (fn(s) * g).sum().backward()

    benchmark.group = f"spiking conv 16->16 3x3 forward+backward T={CONV_T} B={CONV_B} {H}x{W} (CPU)"
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    benchmark.extra_info["image_steps_per_s"] = CONV_T * CONV_B / benchmark.stats.stats.mean


def test_inference_fast_path_overhead(benchmark, monkeypatch):
    """The grad check every op now makes, timed alone and as a share of small inference calls
    (interleaved in one process: real check vs a stub that always says no)."""
    import statistics
    import timeit

    from spikekernels.ops.if_scan import autograd

    x = torch.rand(4, 8, 16, 8, 8, generator=_gen(6))
    s = (torch.rand(4, 8, 16, 8, 8, generator=_gen(7)) < 0.1).to(torch.uint8)
    w = torch.randn(16, 16, 3, 3, generator=_gen(8)) * 0.2
    real = autograd.needed
    benchmark.group = "inference fast path: cost of the autograd check"
    benchmark.pedantic(lambda: [real(x, 1.0, None) for _ in range(1000)], rounds=20, warmup_rounds=2)
    benchmark.extra_info["check_us"] = benchmark.stats.stats.median / 1000 * 1e6
    calls = {"if_scan": lambda: sk.if_scan(x), "spike_conv2d": lambda: sk.spike_conv2d(s, w, padding=1)}
    for name, call in calls.items():
        times = {"check": [], "stub": []}
        for _ in range(7):
            for mode in ("check", "stub"):
                monkeypatch.setattr(autograd, "needed", real if mode == "check" else (lambda *args: False))
                times[mode].append(min(timeit.repeat(call, number=20, repeat=3)) / 20)
        monkeypatch.setattr(autograd, "needed", real)
        check, stub = statistics.median(times["check"]), statistics.median(times["stub"])
        benchmark.extra_info[f"{name}_us_with_check"] = check * 1e6
        benchmark.extra_info[f"{name}_us_without_check"] = stub * 1e6
        benchmark.extra_info[f"{name}_ratio"] = check / stub
