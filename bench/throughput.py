"""Images per second at a given T (issue 15: throughput at an accuracy within 1 point of the ANN).

Converts a shared CIFAR checkpoint with the default recipe, calibrated for exactly ``T``
(``horizon=T``; λ from the first 1,000 ``data_batch_1`` images, schedule on the first 32),
then times ``snn(images, timesteps=T)`` on the first ``--batch`` test images: the median of
``--rounds`` runs after one warm-up, in images per second, beside the ANN (as loaded) run
once on the same batch. The T to pass is the smallest T whose all-10,000 accuracy is within
1 point of the ANN (README, "Accuracy").

    PYTHONPATH=. .venv/bin/python bench/throughput.py --arch resnet20 --timesteps 32
"""

from __future__ import annotations

import argparse
import time

import sresnet  # noqa: I001  (first: spikekernels sets the OpenMP wait policy before torch starts)
import torch

from peers import CHECKPOINTS, SHARED, median_seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(CHECKPOINTS), default="resnet20")
    p.add_argument("--timesteps", type=int, required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    model = sresnet.load_checkpoint(args.arch, SHARED / "models" / CHECKPOINTS[args.arch]).eval()
    calib, _ = sresnet.load_cifar(SHARED / "data", "calib", limit=1000)
    x, _ = sresnet.load_cifar(SHARED / "data", "test", limit=args.batch)
    T = args.timesteps
    t0 = time.perf_counter()
    snn = sresnet.convert(model, calib, horizon=T)
    print(f"{args.arch}: converted for T={T} in {time.perf_counter() - t0:.0f} s", flush=True)
    snn_s = median_seconds(lambda: snn(x, timesteps=T), args.rounds)
    with torch.no_grad():
        ann_s = median_seconds(lambda: model(x), args.rounds)
    B = args.batch
    print(f"{args.arch} T={T} B={B}: SNN {snn_s:.3f} s per batch = {B / snn_s:.1f} images/s; "
          f"ANN {ann_s * 1e3:.1f} ms per batch = {B / ann_s:.0f} images/s (median of {args.rounds})")


if __name__ == "__main__":
    main()
