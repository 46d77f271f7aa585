"""The one-command demo: train a small ResNet on scikit-learn's 8x8 digits, convert, simulate.

Everything runs on the CPU in about a minute, needs no download (the digits ship inside
scikit-learn) and is seeded, so two runs print the same table.
"""

from __future__ import annotations

import json
from pathlib import Path
import time
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

DEMO_TIMESTEPS = (8, 16, 32, 64, 128)


class DigitsBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut (identity, or 1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """A small residual network for 1x8x8 images: stem, two stages of residual blocks, head."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = DigitsBlock(width, width)
        self.layer2 = DigitsBlock(width, 2 * width, stride=2)
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def load_digits(seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's digits as normalized tensors: (x_train, y_train, x_test, y_test), x is [N, 1, 8, 8]."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ImportError("the demo needs scikit-learn: pip install 'spikekernels[demo]' (or scikit-learn)") from None
    data = sk_load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0, progress: bool = True) -> nn.Module:
    """Adam with a one-cycle schedule; light augmentation (random 1-pixel shifts)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batch = 64
    steps = epochs * ((len(y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    model.train()
    bar = tqdm(total=steps, desc="train ANN", unit="step", disable=not progress, leave=False)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            xb = x[idx]
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


def _table(report: dict) -> str:
    lines = [
        f"ANN accuracy            {100 * report['ann_accuracy']:6.2f}%   ({report['num_images']} held-out digits)",
        "",
        "   T   SNN accuracy   agrees with ANN",
    ]
    for t in report["timesteps"]:
        lines.append(f"{t:4d}   {100 * report['snn_accuracy'][str(t)]:10.2f}%   {100 * report['agreement'][str(t)]:13.2f}%")
    ips = report["images_per_second"]
    lines += [
        "",
        f"mean firing rate        {report['firing_rate']:.4f} spikes/neuron/step",
        f"simulation speed        {ips['snn']:.1f} images/s at T={report['timesteps'][-1]}"
        f" ({ips['snn'] * report['timesteps'][-1]:.0f} image-timesteps/s); ANN {ips['ann']:.0f} images/s",
    ]
    if "cost" in report:
        c = report["cost"]
        lines += [
            f"synaptic ops / image    {c['sops_per_image']:.3g} (SNN, T={report['timesteps'][-1]})"
            f" vs {c['ann_macs_per_image']:.3g} MACs (ANN)",
            f"energy / image          {1e6 * c['snn_energy_j_per_image']:.3g} uJ (SNN) vs"
            f" {1e6 * c['ann_energy_j_per_image']:.3g} uJ (ANN)  [{c['energy_model']}]",
        ]
    return "\n".join(lines)


def run_demo(out_dir: str | Path = "demo_out", *, quick: bool = False, timesteps: Sequence[int] | None = None,
             backend: str | None = None, seed: int = 0, progress: bool = True, echo=print) -> dict:
    """Train, convert, simulate and report; writes report.json and two plots to ``out_dir``.

    Args:
        out_dir: output folder (created).
        quick: a reduced run for tests (narrower net, 2 epochs, T up to 16).
        timesteps: T values to report (default 8..128, or 4, 8, 16 with ``quick``).
        backend: spikekernels backend (default auto).
        seed: seeds data split, initialization and training.
        progress: progress bars on stderr.
        echo: where the table goes (``print`` by default).

    Returns:
        the report dict (same keys as ``eval --json``).
    """
    from .convert import convert
    from .evaluate import evaluate_snn
    from . import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ts = list(timesteps or ((4, 8, 16) if quick else DEMO_TIMESTEPS))
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits(seed)
    model = DigitsResNet(width=8 if quick else 16)
    t0 = time.perf_counter()
    train(model, x_train, y_train, epochs=2 if quick else 15, seed=seed, progress=progress)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the schedule serves each T as if calibrated for it alone: no need to calibrate past the largest T
    snn = convert(model, x_train[:512], calib_subset=64 if quick else 128, horizon=min(64, max(ts)))
    convert_s = time.perf_counter() - t0
    report = evaluate_snn(model, snn, x_test, y_test, ts, batch_size=128, backend=backend, progress=progress,
                          cost=True)
    report.update({
        "arch": "digits-resnet",
        "timesteps": sorted(ts),
        "dataset": "scikit-learn digits (8x8), 20% held out",
        "train_seconds": train_s,
        "convert_seconds": convert_s,
        "seed": seed,
    })
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plots.accuracy_vs_timesteps(report, out / "accuracy_vs_T.png")
    plots.firing_rates(report, out / "firing_rates.png")
    echo(_table(report))
    echo(f"\nwrote {out / 'report.json'}, {out / 'accuracy_vs_T.png'}, {out / 'firing_rates.png'}")
    return report
