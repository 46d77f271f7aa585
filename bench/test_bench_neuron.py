"""Neuron op benchmarks: reference vs Numba on CPU, Triton bandwidth on GPU.

Run:  .venv/bin/python -m pytest bench/test_bench_neuron.py --benchmark-only
Sizes are ResNet-20's first stage: T=64 steps, B=32 images, C=16 channels, 32x32 pixels
(N = 524288 neurons, 128 MiB of float32 currents). Every provider's output is checked
against the reference once before it is timed.
"""

from __future__ import annotations

import pytest
import torch

import spikekernels as sk

T, B, C, H, W = 64, 32, 16, 32, 32
SHAPE = (T, B, C, H, W)
CPU_PROVIDERS = ["reference", "numba"]


@pytest.fixture(scope="module")
def currents():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(SHAPE, generator=g) * 0.6 - 0.1
    shortcut = (torch.rand(SHAPE, generator=g) < 0.1).float()
    return x, shortcut


def _throughput(benchmark, n_neuron_steps: int, n_bytes: int) -> None:
    """Record neuron-steps/s and effective GB/s from the mean time."""
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["neuron_steps_per_s"] = n_neuron_steps / mean
    benchmark.extra_info["GB_per_s"] = n_bytes / mean / 1e9


# float32 spikes are 128 MiB per call: a fresh mmap whose page faults cost about as much as
# the Numba kernel itself (see RESULTS.md); uint8 spikes are a quarter of that.
SPIKE_DTYPES = [torch.float32, torch.uint8]
SPIKE_IDS = ["f32spikes", "u8spikes"]


@pytest.mark.parametrize("spike_dtype", SPIKE_DTYPES, ids=SPIKE_IDS)
@pytest.mark.parametrize("provider", CPU_PROVIDERS)
def test_if_scan_cpu(benchmark, currents, provider, spike_dtype):
    x, _ = currents
    kw = {"spike_dtype": spike_dtype}
    expected = sk.if_scan(x, backend="reference", **kw)
    assert torch.equal(sk.if_scan(x, backend=provider, **kw), expected)
    benchmark.group = f"if_scan T={T} B={B} C={C} {H}x{W} float32 in, {spike_dtype} out (CPU)"
    benchmark.pedantic(sk.if_scan, args=(x,), kwargs={"backend": provider, **kw}, rounds=5, warmup_rounds=1)
    _throughput(benchmark, x.numel(), x.numel() * (4 + spike_dtype.itemsize))


@pytest.mark.parametrize("form", ["step_bias", "materialized"])
def test_if_scan_constant_current_with_step_bias_cpu(benchmark, form):
    """A converted network's analog first layer: a current constant over T (an expand) plus its
    bias schedule's row per step, as ``step_bias`` (in the kernel) or added by torch first."""
    g = torch.Generator().manual_seed(1)
    steps = 16  # one chunk of sresnet's simulation at B=32 on ResNet-20
    c = torch.randn((1, B, C, H, W), generator=g) * 0.3
    x = c.expand(steps, B, C, H, W)
    rows = torch.randn((steps, C), generator=g) * 0.1
    kw = {"spike_dtype": torch.uint8, "backend": "numba"}
    expected = sk.if_scan(x + rows.view(steps, 1, C, 1, 1), **kw)
    if form == "step_bias":
        fn, args, kwargs = sk.if_scan, (x,), {"step_bias": rows, **kw}
    else:
        fn, args, kwargs = (lambda: sk.if_scan(x + rows.view(steps, 1, C, 1, 1), **kw)), (), {}
    assert torch.equal(fn(*args, **kwargs), expected)
    benchmark.group = f"if_scan, constant current + step bias, T={steps} B={B} C={C} {H}x{W} (CPU, numba)"
    benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=15, warmup_rounds=1)


@pytest.mark.parametrize("spike_dtype", SPIKE_DTYPES, ids=SPIKE_IDS)
@pytest.mark.parametrize("provider", CPU_PROVIDERS)
def test_residual_merge_cpu(benchmark, currents, provider, spike_dtype):
    x, shortcut = currents
    shortcut = shortcut.to(spike_dtype)
    kw = {"spike_dtype": spike_dtype}
    expected = sk.residual_merge(x, shortcut, 0.8, backend="reference", **kw)
    assert torch.equal(sk.residual_merge(x, shortcut, 0.8, backend=provider, **kw), expected)
    benchmark.group = f"residual_merge T={T} B={B} C={C} {H}x{W} float32 current, {spike_dtype} spikes (CPU)"
    benchmark.pedantic(
        sk.residual_merge, args=(x, shortcut, 0.8), kwargs={"backend": provider, **kw}, rounds=5, warmup_rounds=1
    )
    _throughput(benchmark, x.numel(), x.numel() * (4 + 2 * spike_dtype.itemsize))


GPU_T, GPU_N = 64, 1 << 24  # 64 steps over 16.8M neurons: 4 GiB of float32 currents


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("provider", ["reference", "triton"])
def test_if_scan_gpu_bandwidth(benchmark, provider):
    x = torch.rand(GPU_T, 1, GPU_N, device="cuda") * 0.6 - 0.1

    def run():
        s = sk.if_scan(x, spike_dtype=torch.uint8, backend=provider)
        torch.cuda.synchronize()
        return s

    expected = sk.if_scan(x, spike_dtype=torch.uint8, backend="reference")
    assert torch.equal(run(), expected)
    del expected
    benchmark.group = f"if_scan GPU T={GPU_T} N={GPU_N} float32 in, uint8 spikes out"
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
    # bytes read + written: currents (4 B) and spikes (1 B) per neuron-step, membrane in and out
    _throughput(benchmark, x.numel(), x.numel() * (4 + 1) + GPU_N * 8)
