"""Accuracy of the opt-in layer-wise weight calibration (issue 12, mechanism 5) against the default.

Converts a shared CIFAR checkpoint with the default recipe (λ from the first 1,000 images of
``data_batch_1``, bias schedule on the first ``--subset`` of them, horizon ``--horizon``),
once per ``--ridges`` entry ("off" = the default, no refit), simulates the first ``--ntest``
test images once to the horizon and prints the accuracy at T = 8, 16, ... <= horizon, the
conversion time and the mean relative change of the refitted weights.

    PYTHONPATH=. .venv/bin/python bench/weight_calibration.py --arch resnet20 --ntest 500 --ridges off,1,0.1
"""

from __future__ import annotations

import argparse
import time

import sresnet  # noqa: I001  (first: spikekernels sets the OpenMP wait policy before torch starts)
import torch

from peers import CHECKPOINTS, SHARED


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(CHECKPOINTS), default="resnet20")
    p.add_argument("--ntest", type=int, default=500)
    p.add_argument("--horizon", type=int, default=64)
    p.add_argument("--ridges", default="off,1", help="comma-separated ridge strengths, 'off' for the default")
    p.add_argument("--subset", type=int, default=32, help="calibration images of the schedule (calib_subset)")
    p.add_argument("--batch", type=int, default=100)
    args = p.parse_args(argv)
    model = sresnet.load_checkpoint(args.arch, SHARED / "models" / CHECKPOINTS[args.arch])
    calib, _ = sresnet.load_cifar(SHARED / "data", "calib", limit=1000)
    x, y = sresnet.load_cifar(SHARED / "data", "test", limit=args.ntest)
    with torch.no_grad():
        ann = float((model.eval()(x).argmax(1) == y).float().mean())
    print(f"{args.arch}: ANN {100 * ann:.2f}% on the first {args.ntest} test images", flush=True)
    H = args.horizon
    ts = [t for t in (8, 16, 32, 64, 128, 256) if t <= H]
    for text in args.ridges.split(","):
        ridge = False if text == "off" else float(text)
        t0 = time.perf_counter()
        snn = sresnet.convert(model, calib, horizon=H, weight_calibration=ridge, calib_subset=args.subset)
        seconds = time.perf_counter() - t0
        correct = torch.zeros(H)
        for i in range(0, args.ntest, args.batch):
            s = snn(x[i : i + args.batch], timesteps=H, per_step=True)
            correct += (s.argmax(-1) == y[i : i + args.batch]).float().sum(1)
        acc = " / ".join(f"T={t} {100 * float(correct[t - 1]) / args.ntest:.1f}%" for t in ts)
        refits = snn.info.get("weight_refits", {})
        change = sum(r.get("change", 0.0) for r in refits.values()) / max(1, len(refits))
        print(f"ridge {text}: {acc}; conversion {seconds:.0f} s; mean relative weight change {change:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
