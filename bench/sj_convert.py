"""SpikingJelly 2.0's ANN-to-SNN converter on the shared CIFAR-10 checkpoints, beside sresnet.

Runs SpikingJelly's own conversion recipes on the same checkpoint, calibration images and test
images as ``sresnet eval``, and reports top-1 accuracy after T time steps:

- ``robust``: ``RateCodingRecipe(mode="99.9%", channel_wise=True, pre_spike_maxpool=True,
  half_threshold=True)``: per-channel 99.9th-percentile thresholds, membrane starting at half
  the threshold (the settings of SpikingJelly's ``examples/imagenet_resnet18_ltb.py``).
- ``ltb``: ``LocalThresholdBalancingRecipe()``: per-channel thresholds from the local
  threshold-balancing rule of Bu, Li, Yu, "Inference-Scale Complexity in ANN-SNN Conversion
  for High-Performance and Low-Power Applications", CVPR 2025 (arXiv:2409.03368). It moves
  each threshold once per batch, so it gets its own batches: ``--ltb-batch-size`` images,
  ``--ltb-passes`` passes over the calibration images (default 10 x 10: 1,000 updates).

Each recipe is read out two ways: ``plain`` sums the network's output over all T steps;
``delay`` sums it from step ``estimate_delay_start(snn, calib, device, T)`` on (SpikingJelly's
delayed readout: its estimate of the steps the first spikes need to reach the output; when
the estimate leaves fewer than 4 readout steps it falls back to the last 5 steps).

SpikingJelly converts ``nn.ReLU`` modules only (``F.relu`` stays analog, silently: its issue
517) and rejects ``F.pad`` and strided slicing, so the network it gets is
:class:`SJReadyResNet`: the same weights with one ``nn.ReLU`` per call site and the option-A
shortcut as a fixed 1x1 conv; the script checks that it gives the ANN's logits exactly.

One simulation to the largest T gives every T' (the network is causal; the conversion does
not depend on T, and the delay is estimated for each T' on the first calibration batch).
``--offset`` / ``--merge`` split a long run into slices of the test images and pool their
JSONs. SpikingJelly is a bench-only dependency (``pip install --no-deps spikingjelly requests``);
the script exits with a message naming what to install when it cannot import it. Example::

    python bench/sj_convert.py --arch resnet20 --timesteps 8,16,32,64 --limit 500 \\
        --json docs/results/sj_resnet20_500.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

# first, before torch: the same OpenMP wait policy as every sresnet run (spikekernels/_threads.py)
import sresnet
import torch
import torch.nn as nn
from sresnet.models import CIFAR_DEPTHS, CifarBasicBlock, CifarResNet, PadShortcut

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
RECIPES = ("robust", "ltb")
READOUTS = ("plain", "delay")
# a horizon no run reaches: estimate_delay_start then returns its unclamped estimate
UNCLAMPED = 10**9
INSTALL_HINT = (
    "bench/sj_convert.py needs SpikingJelly 2.0 (a bench-only dependency, never one of the library): "
    "pip install --no-deps spikingjelly==2.0.0, then its small dependencies by name if an import "
    "still fails (e.g. pip install requests loguru)"
)


def import_spikingjelly() -> tuple[ModuleType, ModuleType]:
    """``(ann2snn, functional)`` from ``spikingjelly.activation_based``.

    Raises:
        SystemExit: SpikingJelly (or one of its own imports) is missing; the message names the
            missing module and the pip command.
    """
    try:
        from spikingjelly.activation_based import ann2snn, functional
    except ImportError as exc:
        raise SystemExit(f"error: cannot import {exc.name or 'spikingjelly'} ({exc}). {INSTALL_HINT}") from None
    return ann2snn, functional


def pad_as_conv(shortcut: PadShortcut, in_channels: int) -> nn.Conv2d:
    """The option-A shortcut as the fixed 1x1 convolution that computes it exactly.

    ``x[:, :, ::s, ::s]`` then ``pad`` zero channels on each side is a 1x1 conv of stride
    ``s`` whose weight copies input channel ``c`` to output channel ``pad + c``: one product
    by 1.0 per output, so the values are bit-identical. SpikingJelly's converter accepts
    ``nn.Conv2d`` but rejects ``F.pad`` and strided slicing.
    """
    out_channels = in_channels + 2 * shortcut.pad
    conv = nn.Conv2d(in_channels, out_channels, 1, shortcut.stride, bias=False)
    weight = torch.zeros(out_channels, in_channels, 1, 1)
    weight[shortcut.pad + torch.arange(in_channels), torch.arange(in_channels)] = 1.0
    conv.weight.data.copy_(weight)
    return conv.requires_grad_(False)


class _Block(nn.Module):
    """A ``CifarBasicBlock`` with one ``nn.ReLU`` per call site (same weights)."""

    def __init__(self, block: CifarBasicBlock):
        super().__init__()
        self.conv1, self.bn1, self.relu1 = block.conv1, block.bn1, nn.ReLU()
        self.conv2, self.bn2, self.relu2 = block.conv2, block.bn2, nn.ReLU()
        self.shortcut = block.shortcut
        if isinstance(block.shortcut, PadShortcut):
            self.shortcut = pad_as_conv(block.shortcut, block.conv1.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class SJReadyResNet(nn.Module):
    """sresnet's CIFAR ResNet written with the modules SpikingJelly's converter recognizes.

    SpikingJelly converts ``nn.ReLU`` modules only (``F.relu`` stays analog, silently: its
    issue 517) and its step-mode check rejects ``F.pad``, strided slicing and
    ``F.avg_pool2d``. So: one ``nn.ReLU`` per call site, the option-A shortcut as
    :func:`pad_as_conv`, ``nn.AvgPool2d`` and ``nn.Flatten`` for the head. Same weights (shared
    with ``ann``), same logits ``[B, classes]`` for images ``[B, 3, size, size]``.
    """

    def __init__(self, ann: CifarResNet, image_size: int = 32):
        super().__init__()
        self.conv1, self.bn1, self.relu = ann.conv1, ann.bn1, nn.ReLU()
        self.layer1 = nn.Sequential(*(_Block(b) for b in ann.layer1))
        self.layer2 = nn.Sequential(*(_Block(b) for b in ann.layer2))
        self.layer3 = nn.Sequential(*(_Block(b) for b in ann.layer3))
        # the ANN pools its whole last map: two stride-2 stages make it image_size / 4 wide
        self.pool = nn.AvgPool2d(image_size // 4)
        self.flatten = nn.Flatten()
        self.linear = ann.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(out)))


def make_recipe(ann2snn: ModuleType, name: str, calib: list[torch.Tensor]):
    """The SpikingJelly recipe called ``name`` ("robust" or "ltb"), calibrating on the batches ``calib``."""
    if name == "robust":
        return ann2snn.RateCodingRecipe(dataloader=calib, mode="99.9%", fuse_flag=True, channel_wise=True,
                                        pre_spike_maxpool=True, half_threshold=True)
    if name == "ltb":
        return ann2snn.LocalThresholdBalancingRecipe(dataloader=calib, fuse_flag=True)
    raise ValueError(f"recipe {name!r}; accepted: {', '.join(RECIPES)}")


@torch.no_grad()
def simulate(snn: nn.Module, functional: ModuleType, images: torch.Tensor, timesteps: int,
             batch_size: int) -> torch.Tensor:
    """The output of a SpikingJelly SNN at every step: ``[T, N, classes]`` float32.

    ``images [N, 3, H, W]`` is fed unchanged at every step (the first conv's current is the
    analog image, as in SpikingJelly's examples); the state is reset before each batch.
    """
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        functional.reset_net(snn)
        chunks.append(torch.stack([snn(x) for _ in range(timesteps)]))
    functional.reset_net(snn)
    return torch.cat(chunks, dim=1)


def delay_starts(ann2snn: ModuleType, snn: nn.Module, calib: list[torch.Tensor], timesteps: list[int],
                 device: str) -> tuple[dict[str, int], int]:
    """SpikingJelly's readout start for each T, and its unclamped estimate (same for every T)."""
    with warnings.catch_warnings():
        # it warns for each T whose estimate leaves fewer than 4 readout steps; the JSON records both values
        warnings.simplefilter("ignore", RuntimeWarning)
        starts = {str(t): int(ann2snn.estimate_delay_start(snn, calib, device, t)) for t in timesteps}
        raw = int(ann2snn.estimate_delay_start(snn, calib, device, UNCLAMPED))
    return starts, raw


def accuracy_at(outputs: torch.Tensor, labels: torch.Tensor, timesteps: int, start: int = 0) -> float:
    """Top-1 accuracy of the output summed over steps ``start .. timesteps-1`` of ``outputs [T, N, K]``."""
    return (outputs[start:timesteps].sum(0).argmax(1) == labels).float().mean().item()


def merge_reports(reports: list[dict]) -> dict:
    """One report from runs on consecutive slices of the test images (``--offset``), same settings.

    Accuracies are recombined from the correct-image counts (accuracy times images, rounded).

    Raises:
        ValueError: the runs differ in a setting or delay start, or their slices leave a gap
            or overlap.
    """
    same = ("arch", "checkpoint", "calib_size", "calib_batch_size", "ltb_batch_size", "ltb_passes", "timesteps",
            "delay_start", "delay_start_unclamped")
    reports = sorted(reports, key=lambda r: r.get("offset", 0))
    for r in reports[1:]:
        differ = [k for k in same if r.get(k) != reports[0].get(k)]
        if differ:
            raise ValueError(f"--merge: the runs differ in {', '.join(differ)}; accepted: runs with the same settings")
    for a, b in zip(reports, reports[1:]):
        if a.get("offset", 0) + a["num_images"] != b.get("offset", 0):
            raise ValueError(f"--merge: images {a.get('offset', 0)}..{a.get('offset', 0) + a['num_images'] - 1} "
                             f"are not followed by offset {b.get('offset', 0)}; accepted: consecutive slices")
    total = sum(r["num_images"] for r in reports)

    def pooled(values: list[float]) -> float:
        return sum(round(v * r["num_images"]) for v, r in zip(values, reports)) / total

    merged = dict(reports[0], num_images=total, offset=reports[0].get("offset", 0),
                  ann_accuracy=pooled([r["ann_accuracy"] for r in reports]),
                  merged_from=[r["command"] for r in reports])
    merged["snn_accuracy"] = {row: {t: pooled([r["snn_accuracy"][row][t] for r in reports]) for t in accs}
                              for row, accs in reports[0]["snn_accuracy"].items()}
    for key in ("convert_seconds", "simulate_seconds"):
        merged[key] = {name: round(sum(r[key][name] for r in reports), 2) for name in reports[0][key]}
    return merged


def _versions() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"python": platform.python_version(), "torch": torch.__version__, "spikingjelly": version("spikingjelly"),
            "numpy": version("numpy"), "sresnet": sresnet.__version__, "git_commit": commit}


def _timesteps(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--timesteps {text!r}: expected comma-separated positive ints") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--timesteps {text!r}: expected comma-separated positive ints")
    return sorted(set(values))


def _names(accepted: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        wrong = [v for v in values if v not in accepted]
        if not values or wrong:
            raise argparse.ArgumentTypeError(f"{text!r}: accepted a comma-separated subset of {','.join(accepted)}")
        return values

    return parse


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive int")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=list(CIFAR_DEPTHS), default="resnet20")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="default for resnet20 and resnet56: their file in ../shared/models")
    p.add_argument("--data-dir", type=Path, default=SHARED / "data")
    p.add_argument("--calib-size", type=_positive, default=1000,
                   help="first N images of data_batch_1 for calibration (default 1000)")
    p.add_argument("--calib-batch-size", type=_positive, default=100,
                   help="images per calibration batch of the robust recipe (its per-batch percentiles are averaged "
                        "with momentum 0.1) and of the delay estimate (first batch) (default 100)")
    # the local threshold-balancing rule moves each threshold once per batch (by twice the mean
    # overshoot above it), so its result depends on the number of updates: the authors' code runs
    # 4,000 batches of 100 ImageNet images; one pass over 1,000 images in batches of 100 is 10
    p.add_argument("--ltb-batch-size", type=_positive, default=10,
                   help="calibration images per local threshold-balancing update (default 10)")
    p.add_argument("--ltb-passes", type=_positive, default=10,
                   help="passes of the local threshold balancing over the calibration images (default 10)")
    p.add_argument("--limit", type=_positive, default=500, help="number of test images (default 500)")
    p.add_argument("--offset", type=int, default=0, help="index of the first test image (default 0)")
    p.add_argument("--timesteps", type=_timesteps, default=[8, 16, 32, 64], help="default 8,16,32,64")
    p.add_argument("--recipes", type=_names(RECIPES), default=list(RECIPES), help="default robust,ltb")
    p.add_argument("--batch-size", type=_positive, default=100, help="test images per simulated batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="instead of running: pool the JSONs of runs on consecutive --offset slices into --json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python bench/sj_convert.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.merge:
        try:
            merged = merge_reports([json.loads(path.read_text()) for path in args.merge])
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit(f"error: {exc}") from None
        merged["command"] = command
        print(json.dumps(merged["snn_accuracy"], indent=1))
        if args.json:
            args.json.write_text(json.dumps(merged, indent=2) + "\n")
        return 0
    if args.offset < 0:
        raise SystemExit(f"error: --offset {args.offset}: expected an image index >= 0")
    ann2snn, functional = import_spikingjelly()
    if args.checkpoint is None and args.arch not in CHECKPOINTS:
        raise SystemExit(f"error: --arch {args.arch} has no shared checkpoint; pass --checkpoint PATH")
    checkpoint = args.checkpoint or SHARED / "models" / CHECKPOINTS[args.arch]
    device = args.device
    calib_images, _ = sresnet.load_cifar(args.data_dir, "calib", limit=args.calib_size)
    images, labels = sresnet.load_cifar(args.data_dir, "test", limit=args.offset + args.limit)
    images, labels = images[args.offset:], labels[args.offset:]
    calib = [calib_images[i:i + args.calib_batch_size].to(device)
             for i in range(0, calib_images.shape[0], args.calib_batch_size)]
    ltb_calib = [calib_images[i:i + args.ltb_batch_size].to(device)
                 for i in range(0, calib_images.shape[0], args.ltb_batch_size)] * args.ltb_passes
    images, labels = images.to(device), labels.to(device)

    ann = sresnet.load_checkpoint(args.arch, checkpoint).to(device)
    with torch.no_grad():
        logits = torch.cat([ann(images[i:i + args.batch_size]) for i in range(0, len(images), args.batch_size)])
        rewritten = SJReadyResNet(ann).eval()(images[: args.batch_size])
    if not torch.equal(rewritten, logits[: args.batch_size]):
        raise RuntimeError("the SpikingJelly-ready rewrite changed the ANN's logits; SpikingJelly would convert another network")
    ann_accuracy = (logits.argmax(1) == labels).float().mean().item()
    print(f"{args.arch}: ANN accuracy {100 * ann_accuracy:.2f}% on {len(labels)} test images")

    T = max(args.timesteps)
    report: dict = {
        "arch": args.arch, "checkpoint": str(checkpoint), "num_images": len(labels), "offset": args.offset,
        "calib_size": calib_images.shape[0], "calib_batch_size": args.calib_batch_size,
        "ltb_batch_size": args.ltb_batch_size, "ltb_passes": args.ltb_passes,
        "batch_size": args.batch_size, "timesteps": args.timesteps, "ann_accuracy": ann_accuracy,
        "snn_accuracy": {}, "delay_start": {}, "delay_start_unclamped": {}, "convert_seconds": {},
        "simulate_seconds": {}, "device": device, "versions": _versions(),
        "command": command,
    }
    for name in args.recipes:
        started = time.perf_counter()
        snn = ann2snn.Converter(recipe=make_recipe(ann2snn, name, ltb_calib if name == "ltb" else calib), device=device).convert(
            SJReadyResNet(sresnet.load_checkpoint(args.arch, checkpoint)).to(device).eval())
        starts, raw = delay_starts(ann2snn, snn, calib, args.timesteps, device)
        report["convert_seconds"][name] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        outputs = simulate(snn, functional, images, T, args.batch_size)
        report["simulate_seconds"][name] = round(time.perf_counter() - started, 2)
        report["delay_start"][name] = starts
        report["delay_start_unclamped"][name] = raw
        for readout in READOUTS:
            row = {str(t): accuracy_at(outputs, labels, t, starts[str(t)] if readout == "delay" else 0)
                   for t in args.timesteps}
            report["snn_accuracy"][f"{name}+{readout}"] = row
            print(f"{name:6s} {readout:5s} " + "  ".join(f"T={t}: {100 * a:.2f}%" for t, a in row.items()))
        print(f"{name:6s} delay start per T {starts} (unclamped estimate {raw}); "
              f"convert {report['convert_seconds'][name]} s, simulate {report['simulate_seconds'][name]} s")
        if args.json:
            # after every recipe, so a run stopped early keeps what it finished
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
