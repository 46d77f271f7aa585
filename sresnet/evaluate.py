"""Accuracy of an ANN and of its spiking conversion at several T from one simulation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from .convert import convert
from .convert.compensate import CALIB_SUBSET, CALIB_TIMESTEPS
from .data import load_cifar
from .metrics import cost_from_maps
from .models import load_checkpoint
from .simulate import SpikingNetwork, firing_rate


def _check_timesteps(timesteps) -> list[int]:
    ts = sorted({int(t) for t in timesteps}) if isinstance(timesteps, (list, tuple)) else None
    if not ts or any(t < 1 for t in ts) or any(isinstance(t, bool) for t in timesteps):
        raise ValueError(f"timesteps must be a non-empty list of positive ints, got {timesteps!r}")
    return ts


def evaluate_snn(ann: torch.nn.Module, snn: SpikingNetwork, images: torch.Tensor, labels: torch.Tensor,
                 timesteps: Sequence[int], *, batch_size: int = 32, backend: str | None = None,
                 progress: bool = False, cost: bool = False) -> dict:
    """ANN accuracy and SNN accuracy at every T in ``timesteps`` (one per-step run to max T).

    Args:
        ann: the original network (eval mode is used, its flag is restored).
        snn: its conversion.
        images: normalized ``[N, C, H, W]``; labels: ``[N]`` int.
        timesteps: the T values to report.
        batch_size: images per simulation.
        backend: spikekernels backend.
        progress: tqdm bar on stderr.
        cost: also count synaptic operations and energy over the same run (spike-count
            maps recorded per batch, see :func:`sresnet.network_cost`), under ``"cost"``.

    Returns:
        dict with ann_accuracy, snn_accuracy {str(T): fraction}, agreement {str(T): fraction
        of images where SNN and ANN predict the same class}, firing_rate (mean over all
        neurons, steps and images), firing_rate_per_layer, images_per_second {"ann", "snn"}
        (snn: simulating max T), num_images, and with ``cost`` the dict of
        :func:`sresnet.network_cost` for all the images at max T.
    """
    ts = _check_timesteps(list(timesteps))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    T = ts[-1]
    was_training = ann.training
    ann.eval()
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            ann_pred = torch.cat([ann(images[i : i + 256]).argmax(1) for i in range(0, images.shape[0], 256)])
            ann_time = time.perf_counter() - t0
    finally:
        ann.train(was_training)
    correct = {t: 0 for t in ts}
    agree = {t: 0 for t in ts}
    spikes: dict[str, int] = {}
    neurons: dict[str, int] = {}
    snn_time = 0.0
    maps: dict[int, torch.Tensor] | None = None
    idx = torch.tensor([t - 1 for t in ts])
    bar = tqdm(total=images.shape[0], desc=f"SNN T={T}", unit="img", disable=not progress, leave=False)
    for i in range(0, images.shape[0], batch_size):
        x, y, a = images[i : i + batch_size], labels[i : i + batch_size], ann_pred[i : i + batch_size]
        t0 = time.perf_counter()
        scores, stats = snn(x, timesteps=T, per_step=True, backend=backend, return_stats=True, record_maps=cost)
        snn_time += time.perf_counter() - t0
        if cost:
            if maps is None:
                maps = stats["maps"]
            else:
                for k, m in stats["maps"].items():
                    maps[k] += m
        pred = scores[idx].argmax(-1)  # [len(ts), B]
        for k, t in enumerate(ts):
            correct[t] += int((pred[k] == y).sum())
            agree[t] += int((pred[k] == a).sum())
        for name, c in stats["spikes"].items():
            spikes[name] = spikes.get(name, 0) + c
        neurons = stats["neurons"]
        bar.update(x.shape[0])
    bar.close()
    n = images.shape[0]
    total_neurons = sum(neurons.values())
    result = {
        "ann_accuracy": float((ann_pred == labels).float().mean()),
        "snn_accuracy": {str(t): correct[t] / n for t in ts},
        "agreement": {str(t): agree[t] / n for t in ts},
        "firing_rate": firing_rate({"spikes": spikes, "neurons": neurons, "timesteps": T, "batch": n}),
        "firing_rate_per_layer": {k: spikes[k] / (neurons[k] * T * n) for k in neurons},
        "images_per_second": {"ann": n / max(ann_time, 1e-9), "snn": n / max(snn_time, 1e-9)},
        "num_images": n,
        "neurons_per_image": total_neurons,
    }
    if cost:
        result["cost"] = cost_from_maps(snn, maps, n, images.shape[1:], T)
    return result


def evaluate(arch: str, checkpoint: str | Path, data_dir: str | Path, timesteps: Sequence[int], *,
             limit: int | None = None, batch_size: int = 32, backend: str | None = None, calib_size: int = 1000,
             percentile: float | str = 99.9, shortcut: str = "A", compensation="auto", readout: str = "membrane",
             per_channel: bool = False, shortcut_norm: bool = True, progress: bool = False, cost: bool = False,
             calib_timesteps: int = CALIB_TIMESTEPS, calib_subset: int = CALIB_SUBSET) -> dict:
    """Load a checkpoint and CIFAR data, convert, and measure ANN and SNN accuracy.

    Args:
        arch: model name (e.g. "resnet20"); checkpoint: its file; data_dir: CIFAR folder.
        timesteps: T values to report (one simulation to the largest, per-step readout).
        limit: first N test images (None: all); batch_size: images per simulation.
        backend: spikekernels backend; calib_size: calibration images from data_batch_1.
        percentile, shortcut, compensation, readout, per_channel, shortcut_norm,
            calib_timesteps, calib_subset: see
            :func:`sresnet.convert`.
        progress: tqdm bars on stderr (compensation calibration, then simulation).
        cost: also count synaptic operations and energy (see :func:`evaluate_snn`).

    Returns:
        the dict of :func:`evaluate_snn` plus arch, timesteps, the settings and
        convert_seconds.
    """
    ts = _check_timesteps(list(timesteps))
    if not isinstance(calib_size, int) or calib_size < 1:
        raise ValueError(f"calib_size must be a positive int, got {calib_size!r}")
    ann = load_checkpoint(arch, checkpoint, shortcut=shortcut)
    images, labels = load_cifar(data_dir, "test", limit=limit)
    calib, _ = load_cifar(data_dir, "calib", limit=calib_size)
    t0 = time.perf_counter()
    snn = convert(ann, calib, percentile, per_channel=per_channel, compensation=compensation, readout=readout,
                  shortcut_norm=shortcut_norm, calib_timesteps=calib_timesteps, calib_subset=calib_subset,
                  progress=progress)
    convert_s = time.perf_counter() - t0
    result = evaluate_snn(ann, snn, images, labels, ts, batch_size=batch_size, backend=backend, progress=progress,
                          cost=cost)
    result.update({
        "arch": arch,
        "timesteps": ts,
        "checkpoint": str(checkpoint),
        "calib_size": int(calib.shape[0]),
        "percentile": percentile,
        "per_channel": per_channel,
        "shortcut_norm": shortcut_norm,
        "compensation": compensation if isinstance(compensation, (str, type(None))) else "user",
        "readout": readout,
        "calib_timesteps": calib_timesteps,
        "calib_subset": min(calib_subset, int(calib.shape[0])),
        "backend": backend or "auto",
        "convert_seconds": convert_s,
    })
    return result
