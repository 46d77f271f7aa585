"""spike_conv2d on every ResNet-20 and ResNet-18 (CIFAR input) layer shape, A/B in one process.

Providers, interleaved round by round (medians):

- ``gather``: ``sk.spike_conv2d(backend="numba")`` as shipped (bit-packed output-stationary
  kernel, ``numba_gather.py``, below the dense-path density);
- ``scatter``: the same call with the gather kernel switched off (the first event-driven
  design, ``numba._event_kernel``);
- ``dense``: the strong dense baseline of ``test_bench_conv.py`` (torch conv2d on chunks of
  steps under 32 MiB, reused buffers, in-place IF), spikes out in the input's dtype.

Every provider's spikes are checked against the dense baseline first (< 1e-3 differ).
ResNet-18 here is the torchvision structure on 32x32 images (7x7 stride-2 stem and max pool:
stage 1 runs at 8x8); its stem takes the analog image (a constant input, not spikes) and is
left out, as is ResNet-20's stem.

    PYTHONPATH=. .venv/bin/python bench/conv_shapes.py                  # B=32, T=32, 5 rounds
    PYTHONPATH=. .venv/bin/python bench/conv_shapes.py --quick          # < 3 min: T=8, 3 rounds
    PYTHONPATH=. .venv/bin/python bench/conv_shapes.py --dtype float32  # float32 spikes in and out
    PYTHONPATH=. .venv/bin/python bench/conv_shapes.py --crossover 0.2 0.3 0.4 0.5 --quick

``--crossover D ...`` times instead, at each input density D, the op with the switch forced
to the gather kernel (SPIKEKERNELS_CONV_DENSE_DENSITY=1) and to its dense path (=0).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import spikekernels as sk  # first: the OpenMP wait policy every provider runs under
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bench_conv import DenseIF  # noqa: E402

from spikekernels.ops.spike_conv import numba_gather  # noqa: E402

# name: (Cin, Cout, H = W of the input, kernel, stride, padding)
SHAPES = {
    "r20 16 32x32": (16, 16, 32, 3, 1, 1),
    "r20 16->32 s2": (16, 32, 32, 3, 2, 1),
    "r20 32 16x16": (32, 32, 16, 3, 1, 1),
    "r20 32->64 s2": (32, 64, 16, 3, 2, 1),
    "r20/r18 64 8x8": (64, 64, 8, 3, 1, 1),
    "r18 64->128 s2": (64, 128, 8, 3, 2, 1),
    "r18 64->128 1x1 s2": (64, 128, 8, 1, 2, 0),
    "r18 128 4x4": (128, 128, 4, 3, 1, 1),
    "r18 128->256 s2": (128, 256, 4, 3, 2, 1),
    "r18 128->256 1x1 s2": (128, 256, 4, 1, 2, 0),
    "r18 256 2x2": (256, 256, 2, 3, 1, 1),
    "r18 256->512 s2": (256, 512, 2, 3, 2, 1),
    "r18 256->512 1x1 s2": (256, 512, 2, 1, 2, 0),
    "r18 512 1x1": (512, 512, 1, 3, 1, 1),
}


def inputs(shape, density: float, batch: int, steps: int, dtype: torch.dtype):
    Cin, Cout, H, k, _, _ = shape
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(steps, batch, Cin, H, H, generator=g) < density).to(dtype)
    # weights scaled so that the output fires at a rate similar to the input
    w = torch.randn(Cout, Cin, k, k, generator=g) * (1.0 / (Cin * k * k * density)) ** 0.5
    b = torch.randn(Cout, generator=g) * 0.05
    return s, w, b


@contextlib.contextmanager
def scatter_only():
    """The first design: spike_conv2d's gather kernel declines, the scatter kernel runs."""
    saved = numba_gather.gather
    numba_gather.gather = lambda *args: False
    try:
        yield
    finally:
        numba_gather.gather = saved


def providers(s, w, b, stride, padding):
    base = DenseIF(s, w, b, stride=stride, padding=padding, out_dtype=s.dtype)

    def gather():
        return sk.spike_conv2d(s, w, b, stride=stride, padding=padding, backend="numba")

    def scatter():
        with scatter_only():
            return gather()

    return {"gather": gather, "scatter": scatter, "dense": lambda: base(s)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--timesteps", type=int, default=32)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dtype", choices=["uint8", "float32"], default="uint8")
    p.add_argument("--quick", action="store_true", help="T=8, 3 rounds (under 3 minutes)")
    p.add_argument("--only", default="", help="substring of the shape names to run")
    p.add_argument("--crossover", type=float, nargs="*", default=None, help="densities: gather vs dense path")
    args = p.parse_args(argv)
    if args.quick:
        args.timesteps, args.rounds = 8, 3
    dtype = getattr(torch, args.dtype)
    if args.crossover:
        crossover(args, dtype)
        return
    print(f"B={args.batch} T={args.timesteps} density={args.density} spikes {args.dtype}, "
          f"{args.rounds} rounds after 1 warm-up; torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'layer':22s} {'gather ms':>10s} {'scatter ms':>10s} {'dense ms':>10s} "
          f"{'dense/gather':>12s} {'dense/scatter':>13s}  Gsyn-adds/s")
    for name, shape in SHAPES.items():
        if args.only not in name:
            continue
        _, _, _, _, stride, padding = shape
        s, w, b = inputs(shape, args.density, args.batch, args.timesteps, dtype)
        fns = providers(s, w, b, stride, padding)
        ref = fns["dense"]()
        for key, fn in fns.items():
            frac = (fn() != ref).float().mean().item()
            assert frac < 1e-3, f"{name}: {key} disagrees with the dense baseline on {frac:.2e} of spikes"
        times = {key: [] for key in fns}
        for _ in range(args.rounds):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        # synaptic operations: one add per (active input, output channel, kernel tap reaching an output)
        ops = torch.nn.functional.conv2d(s.flatten(0, 1).float().sum(1, keepdim=True),
                                         torch.ones(1, 1, *w.shape[2:]), stride=stride, padding=padding).sum()
        gsyn = float(ops) * w.shape[0] / (med["gather"] * 1e-3) / 1e9
        print(f"{name:22s} {med['gather']:10.2f} {med['scatter']:10.2f} {med['dense']:10.2f} "
              f"{med['dense'] / med['gather']:11.2f}x {med['dense'] / med['scatter']:12.2f}x  {gsyn:6.1f}",
              flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def crossover(args, dtype: torch.dtype) -> None:
    """Gather kernel vs the op's own dense path at each density (medians, interleaved)."""
    print(f"B={args.batch} T={args.timesteps} spikes {args.dtype}, {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.2f}; cells: dense-path ms / gather ms")
    print(f"{'layer':22s} " + " ".join(f"{f'd={d:g}':>16s}" for d in args.crossover))
    for name, shape in SHAPES.items():
        if args.only not in name:
            continue
        _, _, _, _, stride, padding = shape
        cells = []
        for density in args.crossover:
            s, w, b = inputs(shape, density, args.batch, args.timesteps, dtype)
            times: dict = {"1.0": [], "0.0": []}
            for _ in range(args.rounds + 1):
                for switch in times:
                    os.environ["SPIKEKERNELS_CONV_DENSE_DENSITY"] = switch
                    t0 = time.perf_counter()
                    sk.spike_conv2d(s, w, b, stride=stride, padding=padding, backend="numba")
                    times[switch].append(time.perf_counter() - t0)
            g, d = (statistics.median(times[k][1:]) * 1e3 for k in ("1.0", "0.0"))
            cells.append(f"{d:7.1f} /{g:7.1f}")
        print(f"{name:22s} " + " ".join(f"{c:>16s}" for c in cells), flush=True)
    os.environ.pop("SPIKEKERNELS_CONV_DENSE_DENSITY", None)


if __name__ == "__main__":
    main()
