"""End to end, ResNet-20: sresnet with the gather conv kernel vs the scatter kernel vs the ANN x T.

One process, providers interleaved round by round, medians; predictions of the two kernels
compared first. ``unkept`` is the gather kernel with its output bits not kept for the next
conv (``numba_gather.KEEP = False``: every conv packs its input, spikes are counted by numpy;
checked bit-identical first). ``tensors`` keeps the bits but writes every layer's spike
tensor (``sresnet.executor.BITS_BETWEEN_CONVS = False``; by default the outputs only spiking
convs read stay bits; checked bit-identical too). ``--profile`` adds a cProfile of one run of each kernel (top
functions by own time).
Needs the shared checkpoint and CIFAR-10 (``../shared``).

    PYTHONPATH=. .venv/bin/python bench/e2e_gather.py --timesteps 128 --rounds 5 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import spikekernels  # noqa: F401  (first: the OpenMP wait policy every provider runs under)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_shapes import scatter_only  # noqa: E402
from peers import load_real  # noqa: E402

from sresnet import executor  # noqa: E402
from spikekernels.ops.spike_conv import numba_gather  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timesteps", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    T = args.timesteps
    ann, snn, images, _ = load_real(n_test=args.batch)

    def gather():
        return snn(images, timesteps=T)

    def scatter():
        with scatter_only():
            return snn(images, timesteps=T)

    def unkept():
        with mock.patch.object(numba_gather, "KEEP", False):
            return snn(images, timesteps=T)

    def tensors():
        with mock.patch.object(executor, "BITS_BETWEEN_CONVS", False):
            return snn(images, timesteps=T)

    def ann_x_t():
        with torch.no_grad():
            for _ in range(T):
                out = ann(images)
        return out

    a = gather()
    spikes = dict(snn.last_stats["spikes"])
    b, c = scatter(), unkept()
    same = torch.equal(a, c) and spikes == snn.last_stats["spikes"]
    d = tensors()
    same_t = torch.equal(a, d) and spikes == snn.last_stats["spikes"]
    agree = (a.argmax(1) == b.argmax(1)).float().mean().item()
    print(f"ResNet-20, B={args.batch}, T={T}: gather and scatter predictions agree on {agree:.3f} of images; "
          f"kept and unkept bits give {'identical' if same else 'DIFFERENT'} scores and spike counts; "
          f"bits between convs and written tensors give {'identical' if same_t else 'DIFFERENT'} ones; "
          f"load average {os.getloadavg()[0]:.2f}")
    fns = {"gather": gather, "tensors": tensors, "unkept": unkept, "scatter": scatter, "ann-xT": ann_x_t}
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, s in med.items():
        print(f"  {k:8s} {s:8.3f} s  {args.batch * T / s:8.0f} image-timesteps/s  "
              f"gather faster by {s / med['gather']:.2f}x")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.profile:
        for k in ("scatter", "unkept", "tensors", "gather"):
            print(f"profile of one {k} run:")
            prof = cProfile.Profile()
            prof.runcall(fns[k])
            pstats.Stats(prof).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()
