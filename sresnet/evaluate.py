"""Accuracy of an ANN and of its spiking conversion at several T from one simulation.

Evaluation streams: batches are read, simulated and dropped one at a time, so memory
does not depend on the number of images (ImageNet's 50,000 validation images never sit
in memory together).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from .convert import convert
from .convert.compensate import CALIB_SUBSET, CALIB_TIMESTEPS
from .data import take
from .datasets import Transformed, default_calibration, limit_batches, make_loader, open_dataset
from .metrics import cost_from_maps
from .models import load_checkpoint
from .preprocess import Preprocess, make_preprocess
from .diagnose import diagnose as run_diagnosis
from .distributed import shard_from, shard_range
from .simulate import SpikingNetwork, firing_rate


def _check_timesteps(timesteps) -> list[int]:
    ts = sorted({int(t) for t in timesteps}) if isinstance(timesteps, (list, tuple)) else None
    if not ts or any(t < 1 for t in ts) or any(isinstance(t, bool) for t in timesteps):
        raise ValueError(f"timesteps must be a non-empty list of positive ints, got {timesteps!r}")
    return ts


def _tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    for i in range(0, images.shape[0], batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]


def _topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per image (last-but-one axis of ``scores [..., B, classes]``): label among the k best."""
    k = min(k, scores.shape[-1])
    return (scores.topk(k, dim=-1).indices == labels.view(-1, 1)).any(-1)


def evaluate_snn(ann: nn.Module, snn: SpikingNetwork, data, labels: torch.Tensor | Sequence[int] | None = None,
                 timesteps: Sequence[int] | None = None, *, batch_size: int = 32, backend: str | None = None,
                 progress: bool = False, cost: bool = False, limit: int | None = None, process_group=None) -> dict:
    """ANN accuracy and SNN accuracy at every T in ``timesteps`` (one per-step run to max T), streamed.

    Two call forms: ``evaluate_snn(ann, snn, images, labels, timesteps)`` with tensors, or
    ``evaluate_snn(ann, snn, batches, timesteps)`` with any iterable of ``(images, labels)``
    batches, e.g. a ``torch.utils.data.DataLoader`` (a torchvision dataset with its own
    transforms works as is). Each batch is run through the ANN and the SNN and dropped, so
    memory does not grow with the number of images.

    Args:
        ann: the original network (eval mode is used, its flag is restored).
        snn: its conversion.
        data: normalized images ``[N, C, H, W]`` float, or an iterable of ``(images [B, C, H, W],
            labels [B])`` batches; a map-style ``Dataset`` of ``(image, label)`` tensors is
            batched with ``batch_size``.
        labels: ``[N]`` int class indices with an images tensor; omit it with batches.
        timesteps: the T values to report.
        batch_size: images per simulation (larger loader batches are simulated in slices).
        backend: spikekernels backend.
        progress: tqdm bar on stderr.
        cost: also count synaptic operations and energy over the same run (spike-count
            maps recorded per batch, see :func:`sresnet.network_cost`), under ``"cost"``.
        limit: stop after this many images (None: all).
        process_group: an initialized ``torch.distributed`` group (default: the default group
            when one is initialized, e.g. under torchrun; else one process). Each rank evaluates
            a disjoint share (a contiguous block of an images tensor or of a DataLoader's
            map-style dataset, else every world-th batch), nothing padded or repeated; the
            counts are summed over ranks, so every rank returns the numbers one process would.

    Returns:
        dict with ann_accuracy, snn_accuracy {str(T): fraction}, ann_top5, snn_top5 {str(T):
        fraction with the label among the 5 highest scores}, agreement {str(T): fraction of
        images where SNN and ANN predict the same class}, world_size, neuron (kind), max_spikes,
        bits_per_neuron_step (1 for binary spikes; burst and signed neurons send more, so
        their T is not comparable), firing_rate (spikes, a burst counting each of its spikes) (mean over all neurons,
        steps and images), firing_rate_per_layer, images_per_second {"ann", "snn"} (snn:
        simulating max T), num_images, num_classes (outputs of the network), neurons_per_image, and with ``cost`` the dict of
        :func:`sresnet.network_cost` for all the images at max T.

    Raises:
        ValueError: bad timesteps, images and labels of different lengths, a label outside
            the network's outputs, no images, or more processes than images.
        TypeError: labels given with batches (they come inside the batches).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(data, torch.Tensor):
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a tensor [N] with an images tensor, got {type(labels).__name__}")
        if data.shape[0] != labels.shape[0]:
            raise ValueError(f"{data.shape[0]} images but {labels.shape[0]} labels")
        batches: Iterable = _tensor_batches(data, labels, batch_size)
        total = data.shape[0]
    else:
        if timesteps is None and isinstance(labels, (list, tuple)):
            timesteps, labels = labels, None
        if labels is not None:
            raise TypeError("labels are given with an images tensor only; batches already hold (images, labels)")
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
            data = make_loader(data, batch_size)
        batches = data
        try:
            total = len(data.dataset) if isinstance(data, torch.utils.data.DataLoader) else None
        except TypeError:
            total = None
    if timesteps is None:
        raise ValueError("timesteps is missing: give the T values to report, e.g. [32, 64, 128]")
    ts = _check_timesteps(list(timesteps))
    if limit is not None:
        total = limit if total is None else min(total, limit)
    shard = shard_from(process_group)
    if shard.active:
        batches, total = _shard_batches(data, labels, batches, total, limit, batch_size, shard)
        limit = None
    T = ts[-1]
    idx = torch.tensor([t - 1 for t in ts])
    n = ann_correct = ann_top5 = 0
    correct, top5, agree = ({t: 0 for t in ts} for _ in range(3))
    spikes: dict[str, int] = {}
    neurons: dict[str, int] = {}
    ann_time = snn_time = 0.0
    maps: dict[int, torch.Tensor] | None = None
    in_shape = num_classes = None
    # loaders yield CPU batches: they go where the network's weights are
    device = next((p.device for p in ann.parameters()), torch.device("cpu"))
    bar = tqdm(total=total, desc=f"SNN T={T}", unit="img", disable=not progress, leave=False)
    was_training = ann.training
    ann.eval()
    try:
        for images, y in limit_batches(batches, limit):
            images, y = images.to(device), torch.as_tensor(y).to(device)
            in_shape = tuple(images.shape[1:])
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = ann(images)
            ann_time += time.perf_counter() - t0
            if int(y.max()) >= logits.shape[1] or int(y.min()) < 0:
                raise ValueError(f"label {int(y.max()) if int(y.max()) >= logits.shape[1] else int(y.min())} is "
                                 f"outside the network's {logits.shape[1]} outputs: the data has other classes "
                                 "than the model (check --num-classes and the dataset)")
            num_classes = logits.shape[1]
            a = logits.argmax(1)
            ann_correct += int((a == y).sum())
            ann_top5 += int(_topk_hits(logits, y, 5).sum())
            for j in range(0, images.shape[0], batch_size):
                x, yj, aj = images[j : j + batch_size], y[j : j + batch_size], a[j : j + batch_size]
                t0 = time.perf_counter()
                scores, stats = snn(x, timesteps=T, per_step=True, backend=backend, return_stats=True,
                                    record_maps=cost)
                snn_time += time.perf_counter() - t0
                if cost:
                    if maps is None:
                        maps = stats["maps"]
                    else:
                        for k, m in stats["maps"].items():
                            maps[k] += m
                sel = scores[idx]  # [len(ts), B, classes]
                pred = sel.argmax(-1)
                hits5 = _topk_hits(sel, yj, 5)
                for k, t in enumerate(ts):
                    correct[t] += int((pred[k] == yj).sum())
                    agree[t] += int((pred[k] == aj).sum())
                    top5[t] += int(hits5[k].sum())
                for name, c in stats["spikes"].items():
                    spikes[name] = spikes.get(name, 0) + c
                neurons = stats["neurons"]
                n += x.shape[0]
                bar.update(x.shape[0])
    finally:
        ann.train(was_training)
        bar.close()
    if shard.active:
        # integer counts: the sums are exact whatever the number of processes
        merged = shard.sum({"n": n, "ann_correct": ann_correct, "ann_top5": ann_top5,
                            "correct": torch.tensor([correct[t] for t in ts]),
                            "top5": torch.tensor([top5[t] for t in ts]), "agree": torch.tensor([agree[t] for t in ts])})
        n, ann_correct, ann_top5 = merged["n"], merged["ann_correct"], merged["ann_top5"]
        correct, top5, agree = ({t: int(merged[key][k]) for k, t in enumerate(ts)} for key in ("correct", "top5", "agree"))
        parts = shard.gather((spikes, neurons, num_classes, in_shape, maps, ann_time, snn_time))
        spikes = {}
        for sp, *_ in parts:
            for k, c in sp.items():
                spikes[k] = spikes.get(k, 0) + c
        neurons = next((p[1] for p in parts if p[1]), neurons)
        num_classes = next((p[2] for p in parts if p[2] is not None), None)
        in_shape = next((p[3] for p in parts if p[3] is not None), None)
        if cost:
            maps = None
            for p in parts:
                if p[4] is not None:
                    maps = {k: v.clone() for k, v in p[4].items()} if maps is None else {k: maps[k] + v for k, v in p[4].items()}
        # the job's wall time is that of its slowest rank
        ann_time, snn_time = max(p[5] for p in parts), max(p[6] for p in parts)
    if n == 0:
        raise ValueError("no images to evaluate: the data yielded no batches")
    counts = {"ann_correct": ann_correct, "ann_top5": ann_top5, "snn_correct": {str(t): correct[t] for t in ts},
              "snn_top5": {str(t): top5[t] for t in ts}, "agreement": {str(t): agree[t] for t in ts},
              "spikes": dict(spikes), "neurons": dict(neurons)}
    result = {
        **_from_counts(counts, n, T, {"ann": ann_time, "snn": snn_time}),
        "world_size": shard.world,
        "num_classes": num_classes,
        "neurons_per_image": sum(neurons.values()),
        **_neuron_info(snn),
    }
    if cost:
        result["cost"] = cost_from_maps(snn, maps, n, in_shape, T)
    return result


def _from_counts(counts: dict, n: int, T: int, seconds: dict) -> dict:
    """The fractions of a result from its integer ``counts`` (see :func:`evaluate_snn`) over
    ``n`` images simulated to ``T``, and images per second from ``seconds`` {"ann", "snn"}."""
    ts = list(counts["snn_correct"])
    spikes, neurons = counts["spikes"], counts["neurons"]
    return {
        "ann_accuracy": counts["ann_correct"] / n,
        "snn_accuracy": {t: counts["snn_correct"][t] / n for t in ts},
        "ann_top5": counts["ann_top5"] / n,
        "snn_top5": {t: counts["snn_top5"][t] / n for t in ts},
        "agreement": {t: counts["agreement"][t] / n for t in ts},
        "firing_rate": firing_rate({"spikes": spikes, "neurons": neurons, "timesteps": T, "batch": n}),
        "firing_rate_per_layer": {k: spikes[k] / (neurons[k] * T * n) for k in neurons},
        "images_per_second": {k: n / max(v, 1e-9) for k, v in seconds.items()},
        "num_images": n,
        # the integers behind the fractions: parts of one evaluation add up exactly (sresnet merge)
        "counts": counts,
    }


def _first_images(data, preprocess, n: int) -> torch.Tensor:
    """The first ``n`` test images (for the diagnosis), read again from the start."""
    if isinstance(data, torch.Tensor):
        return data[:n]
    if isinstance(data, (str, Path, torch.utils.data.Dataset)):
        return take(_open(data, "test", preprocess, min(n, 256), 0, n)[0], n)[0]
    raise ValueError("diagnose needs data as a path, a dataset or an images tensor (batches from a "
                     "loader can only be read once)")


def _load_network(path) -> SpikingNetwork:
    from .io import load

    if not isinstance(path, (str, Path)):
        raise TypeError(f"network must be a SpikingNetwork or the path of a saved one, got {type(path).__name__}")
    return load(path)


_CONVERSION_DEFAULTS: dict | None = None


def _check_no_conversion_args(given: dict) -> None:
    """ValueError naming the conversion arguments that differ from their defaults."""
    import inspect

    global _CONVERSION_DEFAULTS
    if _CONVERSION_DEFAULTS is None:
        _CONVERSION_DEFAULTS = {k: p.default for k, p in inspect.signature(evaluate).parameters.items()}
    changed = [k for k, v in given.items() if not (v is _CONVERSION_DEFAULTS[k] or (
        not isinstance(v, torch.Tensor) and v == _CONVERSION_DEFAULTS[k]))]
    if changed:
        raise ValueError(f"network is already converted, so {', '.join(changed)} cannot be given with it (the "
                         "network's own conversion settings are used and reported); convert again to change them")


def _neuron_info(snn: SpikingNetwork) -> dict:
    """The neuron kind and the bits a neuron sends per step (1 for binary IF spikes)."""
    layers = [l for l in snn.layers if l.kind != "maxpool"]
    kinds = sorted({l.neuron.kind for l in layers})
    total = sum(l.neurons for l in layers)
    bits = sum(l.neurons * l.neuron.bits for l in layers) / max(1, total)
    return {"neuron": kinds[0] if len(kinds) == 1 else kinds,
            "max_spikes": max(l.neuron.max_spikes for l in layers) if layers else 1,
            "bits_per_neuron_step": bits}


def _shard_batches(data, labels, batches, total, limit, batch_size: int, shard):
    """This rank's share of the evaluation data and the global image count (None if unknown)."""
    if total is not None and total < shard.world:
        raise ValueError(f"{shard.world} processes for {total} images: run at most one process per image "
                         "(fewer --nproc-per-node, or more images)")
    if isinstance(data, torch.Tensor):
        keep = shard_range(total, shard)
        return _tensor_batches(data[keep.start : keep.stop], labels[keep.start : keep.stop], batch_size), total
    if isinstance(data, torch.utils.data.DataLoader) and not isinstance(data.dataset, torch.utils.data.IterableDataset) \
            and isinstance(data.batch_sampler, torch.utils.data.BatchSampler) \
            and isinstance(data.sampler, torch.utils.data.SequentialSampler):
        n = len(data.dataset) if limit is None else min(limit, len(data.dataset))
        keep = shard_range(n, shard)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(data.dataset, keep), batch_size=data.batch_size, shuffle=False,
            num_workers=data.num_workers, collate_fn=data.collate_fn, worker_init_fn=data.worker_init_fn,
            drop_last=data.drop_last)
        return loader, n
    # any other iterable: every rank reads it, each keeps every world-th batch
    return (b for i, b in enumerate(limit_batches(batches, limit)) if shard.owns(i)), total


def _resolve_preprocess(preprocess) -> Preprocess:
    if isinstance(preprocess, Preprocess):
        return preprocess
    if isinstance(preprocess, str):
        return make_preprocess(preprocess)
    raise TypeError(f"preprocess must be a preset name or a sresnet.preprocess.Preprocess, got {preprocess!r}")


def _open(data, split: str, preprocess, batch_size: int, workers: int, limit: int | None, skip: int = 0):
    """(batches, description) for a path, a Dataset or an iterable of batches.

    The description holds kind, source (the file or folder read), split and preprocessing.
    """
    if isinstance(data, (str, Path)):
        prep = _resolve_preprocess("cifar-imagenet-stats" if preprocess is None else preprocess)
        ds = open_dataset(data, split, prep)
        info = {"kind": ds.kind, "source": ds.source, "split": split, "preprocessing": prep.describe()}
        return make_loader(ds, batch_size, workers, limit, skip=skip), info
    info = {"kind": type(data).__name__, "source": None, "split": split, "preprocessing": None}
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        if preprocess is not None:
            prep = _resolve_preprocess(preprocess)
            data, info["preprocessing"] = Transformed(data, prep), prep.describe()
        return make_loader(data, batch_size, workers, limit, balanced=False, skip=skip), info
    if preprocess is not None:
        raise ValueError("preprocess applies to paths and datasets; batches from a loader are used as they are")
    return limit_batches(data, limit, skip), info


def evaluate(model: str | nn.Module, checkpoint: str | Path | None, data, timesteps: Sequence[int], *,
             num_classes: int | None = None, calib_data=None, preprocess: str | Preprocess | None = None,
             limit: int | None = None, batch_size: int = 32, workers: int = 0, backend: str | None = None,
             calib_size: int = 1000, percentile: float | str = 99.9, shortcut: str = "A", compensation="auto",
             readout: str = "membrane", per_channel: bool | None = None, shortcut_norm: bool = True,
             progress: bool = False, cost: bool = False, calib_timesteps: int = CALIB_TIMESTEPS,
             calib_subset: int = CALIB_SUBSET, method: str = "lowlat", horizon: int | None = None,
             readout_delay: float | None = None, weight_calibration: bool | float | None = False,
             process_group=None, diagnose: int = 0, skip: int = 0,
             network: SpikingNetwork | str | Path | None = None) -> dict:
    """Load a network and data, convert with calibration images, and measure ANN and SNN accuracy.

    Args:
        model: a name ("resnet20" ... "resnet110", "resnet18" ... "resnet152",
            "wide_resnet50_2", "wide_resnet101_2"), a factory "package.module:factory" (see
            :func:`sresnet.models.build_model`), or an ``nn.Module`` (then ``checkpoint`` is None).
        checkpoint: its state dict file (see :func:`sresnet.load_checkpoint`).
        data: the test images: a path (CIFAR pickle folder, ImageFolder root or ``.npz``, see
            :func:`sresnet.datasets.open_dataset`), a map-style dataset of ``(image, label)``, or
            an iterable of ``(images [B, C, H, W], labels [B])`` batches (used as they are).
        timesteps: T values to report (one simulation to the largest, per-step readout).
        num_classes: outputs of the model's head (default: from the checkpoint).
        calib_data: calibration images, same forms as ``data`` or an images tensor ``[N, C, H,
            W]``; default (``data`` a path): the training images beside it (CIFAR:
            ``data_batch_1``; ImageFolder: a ``train/`` sibling), never the test images.
        preprocess: a preset name ("imagenet", "cifar", "cifar-imagenet-stats") or a
            :class:`sresnet.preprocess.Preprocess`, for paths and datasets; None: paths get
            "cifar-imagenet-stats" (the pytorch_resnet_cifar10 convention, this function's
            behaviour before presets existed), datasets and batches are used as they are.
        limit: first N test images (ImageFolders: the classes in turn); batch_size: images per
            batch; workers: DataLoader processes decoding images (0: in this process).
        skip: leave out the first ``skip`` test images of that order, so a long evaluation runs
            in parts (``skip=0, limit=500``, ``skip=500, limit=500``, ...) whose JSONs
            ``sresnet merge`` adds up; the result records it as ``first_image``.
        network: an already converted network (a :class:`SpikingNetwork` or a file written by
            :func:`sresnet.save` / ``sresnet convert``): no calibration runs, and the
            conversion arguments below must stay at their defaults (the network's own settings
            are reported). Every part of a split evaluation then simulates the same network.
        backend: spikekernels backend; calib_size: calibration images (the first ones;
            ImageFolders: the classes in turn).
        percentile, shortcut, compensation, readout, per_channel, shortcut_norm,
            calib_timesteps, calib_subset, method, horizon, readout_delay, weight_calibration: see
            :func:`sresnet.convert`; ``horizon=None`` is the largest T: the schedule serves
            each T <= horizon as if calibrated for it alone, so every reported T is calibrated
            (steps past a horizon reuse a steady bias, which can cost accuracy: tv ResNet-18 at
            T=128 lost 2.6 points with horizon 64, see README).
        process_group: several processes (torchrun): the conversion's observation and the
            evaluation are sharded and merged exactly (see :func:`evaluate_snn`); every rank
            returns the same numbers. Default: the default group when one is initialized.
        progress: tqdm bars on stderr (compensation calibration, then simulation).
        cost: also count synaptic operations and energy (see :func:`evaluate_snn`).
        diagnose: with N > 0, also the per-layer rate error and first-spike delay at the largest
            T on the first N test images (:func:`sresnet.diagnose.diagnose`), under
            ``"diagnosis"``; ``data`` must then be a path, a dataset or an images tensor.

    Returns:
        the dict of :func:`evaluate_snn` plus arch and model (the name given), dataset and calibration ({"kind", "source", "split"}), preprocessing, timesteps, the
        settings and convert_seconds (with ``network``: the time ``sresnet convert`` recorded
        in the file, None for a network from elsewhere).

    Raises:
        ValueError: no calibration data can be found (the message says what to pass),
            calibration data that is the test data itself, a conversion argument given with
            ``network``, a ``network`` converted from another architecture, and the errors of
            the loaders, :func:`sresnet.load_checkpoint`, :func:`sresnet.convert` and
            :func:`sresnet.load`.
    """
    ts = _check_timesteps(list(timesteps))
    if network is not None:
        _check_no_conversion_args(dict(calib_data=calib_data, calib_size=calib_size, percentile=percentile,
                                       compensation=compensation, readout=readout, per_channel=per_channel,
                                       shortcut_norm=shortcut_norm, calib_timesteps=calib_timesteps,
                                       calib_subset=calib_subset, method=method, horizon=horizon,
                                       readout_delay=readout_delay, weight_calibration=weight_calibration))
    if isinstance(calib_size, bool) or not isinstance(calib_size, int) or calib_size < 1:
        raise ValueError(f"calib_size must be a positive int, got {calib_size!r}")
    if isinstance(model, nn.Module):
        ann, model_name = model.eval(), type(model).__name__
    else:
        ann, model_name = load_checkpoint(model, checkpoint, shortcut=shortcut, num_classes=num_classes), model
    batches, data_info = _open(data, "test", preprocess, batch_size, workers, limit, skip)
    if network is not None:
        snn = network if isinstance(network, SpikingNetwork) else _load_network(network)
        arch = snn.info.get("arch")
        if arch is not None and isinstance(model, str) and arch != model:
            raise ValueError(f"network was converted from {arch!r}, not from model {model!r}")
        # the saved network's own settings (``sresnet convert`` records its calibration too)
        info = snn.info
        settings = {k: info.get(k) for k in ("calibration", "calib_size", "percentile", "per_channel", "shortcut_norm",
                                             "compensation", "method", "horizon", "calib_timesteps", "calib_subset")}
        # the conversion's own time, as `sresnet convert` recorded it (None for other networks)
        settings.update(network_file=None if isinstance(network, SpikingNetwork) else str(network),
                        convert_seconds=info.get("convert_seconds"))
    else:
        snn, settings = _convert_for_eval(
            ann, data, data_info, calib_data, calib_size, preprocess, workers, ts, progress, process_group,
            percentile=percentile, per_channel=per_channel, compensation=compensation, readout=readout,
            shortcut_norm=shortcut_norm, calib_timesteps=calib_timesteps, calib_subset=calib_subset, method=method,
            horizon=horizon, readout_delay=readout_delay, weight_calibration=weight_calibration)
    result = evaluate_snn(ann, snn, batches, timesteps=ts, batch_size=batch_size, backend=backend,
                          progress=progress, cost=cost, process_group=process_group)
    if diagnose:
        result["diagnosis"] = run_diagnosis(snn, _first_images(data, preprocess, diagnose), ts[-1], backend=backend)
    result.update({
        "arch": model_name,
        "model": model_name,
        "preprocessing": data_info.pop("preprocessing"),
        "dataset": data_info,
        "timesteps": ts,
        "first_image": skip,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "readout": snn.readout,
        "readout_delay": snn.network.readout.delay_fraction,
        "weight_calibration": snn.info.get("weight_calibration"),
        "backend": backend or "auto",
        **settings,
    })
    return result


def _convert_for_eval(ann, data, data_info: dict, calib_data, calib_size: int, preprocess, workers: int, ts: list,
                      progress: bool, process_group, **kw) -> tuple[SpikingNetwork, dict]:
    """Convert ``ann`` on calibration images for :func:`evaluate` (never its test images):
    the network and the settings the result reports."""
    if calib_data is None:
        if not isinstance(data, (str, Path)):
            raise ValueError("calib_data is required when data is not a path: calibrate on training images, "
                             "never on the test images")
        calib_data = default_calibration(data)
    if isinstance(calib_data, torch.Tensor):
        calib = calib_data[:calib_size]
        calib_info = {"kind": "tensor", "source": None, "split": "calib", "preprocessing": None}
    else:
        calib_batches, calib_info = _open(calib_data, "calib", preprocess, min(calib_size, 256), workers, calib_size)
        if calib_info["source"] is not None and calib_info["source"] == data_info["source"]:
            raise ValueError(f"the calibration data is the evaluated data ({data_info['source']}): calibrate on "
                             "training images, never on the test images (give another --calib-data)")
        calib, _ = take(calib_batches, calib_size)
    if kw["horizon"] is None:
        kw["horizon"] = ts[-1]
    t0 = time.perf_counter()
    percentile = kw.pop("percentile")
    snn = convert(ann, calib, percentile, progress=progress, process_group=process_group, **kw)
    convert_s = time.perf_counter() - t0
    calib_info.pop("preprocessing")
    compensation = kw["compensation"]
    return snn, {
        "calibration": calib_info,
        "network_file": None,
        "calib_size": int(calib.shape[0]),
        "percentile": percentile,
        "per_channel": snn.info["per_channel"],
        "shortcut_norm": kw["shortcut_norm"],
        "compensation": compensation if isinstance(compensation, (str, type(None))) else "user",
        "method": kw["method"],
        "horizon": kw["horizon"] if kw["method"] == "lowlat" else None,
        "calib_timesteps": kw["calib_timesteps"],
        "calib_subset": min(kw["calib_subset"], int(calib.shape[0])),
        "convert_seconds": convert_s,
    }


# what must agree between parts of one evaluation (the same network on the same test set)
_SAME = ("arch", "checkpoint", "timesteps", "dataset", "preprocessing", "calibration", "calib_size", "percentile",
         "per_channel", "shortcut_norm", "compensation", "readout", "method", "horizon", "readout_delay",
         "weight_calibration", "calib_timesteps", "calib_subset", "neuron", "max_spikes", "num_classes",
         "neurons_per_image")


def merge_results(parts: Sequence[dict], names: Sequence[str] | None = None) -> dict:
    """One result from the results of parts of an evaluation (``evaluate(..., skip=, limit=)``).

    The counts are added, so the merged accuracies, firing rates and images per second are
    exactly those of one run over all the parts' images (the simulation of an image does not
    depend on the other images of its run when the parts' edges fall on batch edges; torch's
    dense convolution can round a batch of 1 image and of 32 differently in the last bit).

    Args:
        parts: result dicts of :func:`evaluate` (e.g. the ``--json`` files of ``sresnet eval``),
            each with ``counts`` and ``first_image``.
        names: a label per part for the error messages (e.g. the file names).

    Returns:
        the result dict of :func:`evaluate` for the union of the parts' images, with ``parts``
        (per part: name, first_image, num_images) and ``images`` (the merged image ranges as
        ``[first, stop)`` pairs, in order; one pair when the parts are contiguous).

    Raises:
        ValueError: no parts, a part without counts (written by an older sresnet) or with
            ``cost``, parts that differ in a setting of :data:`_SAME` (named), or parts whose
            images overlap.
    """
    parts = list(parts)
    names = list(names) if names is not None else [f"part {i + 1}" for i in range(len(parts))]
    if not parts:
        raise ValueError("no results to merge")
    for name, p in zip(names, parts):
        if "counts" not in p or "first_image" not in p:
            raise ValueError(f"{name} has no counts or first_image: it is not a result of `sresnet eval --json`, or "
                             "one written by an sresnet older than merge; evaluate it again")
        if "cost" in p:
            raise ValueError(f"{name} holds --cost results, which merge does not add up; run --cost on one part "
                             "(or on all the images) alone")
    first = parts[0]
    for name, p in zip(names[1:], parts[1:]):
        diff = [k for k in _SAME if p.get(k) != first.get(k)]
        if diff:
            k = diff[0]
            raise ValueError(f"{name} differs from {names[0]} in {', '.join(diff)} ({k}: {p.get(k)!r} vs "
                             f"{first.get(k)!r}): only parts of the same evaluation can be merged")
    order = sorted(range(len(parts)), key=lambda i: parts[i]["first_image"])
    images: list[list[int]] = []
    for i in order:
        a, b = parts[i]["first_image"], parts[i]["first_image"] + parts[i]["num_images"]
        if images and a < images[-1][1]:
            other = next(j for j in order if parts[j]["first_image"] <= a < parts[j]["first_image"]
                         + parts[j]["num_images"] and j != i)
            raise ValueError(f"{names[i]} (images {a}..{b - 1}) overlaps {names[other]}: each image may be "
                             "counted once")
        if images and a == images[-1][1]:
            images[-1][1] = b
        else:
            images.append([a, b])
    ts = [str(t) for t in first["timesteps"]]
    n = sum(p["num_images"] for p in parts)
    neurons = first["counts"]["neurons"]
    counts = {k: sum(p["counts"][k] for p in parts) for k in ("ann_correct", "ann_top5")}
    counts.update({k: {t: sum(p["counts"][k][t] for p in parts) for t in ts}
                   for k in ("snn_correct", "snn_top5", "agreement")})
    counts.update(spikes={k: sum(p["counts"]["spikes"].get(k, 0) for p in parts) for k in neurons}, neurons=neurons)
    # each part's time from its speed (the counts hold integers only)
    seconds = {k: sum(p["num_images"] / p["images_per_second"][k] for p in parts) for k in ("ann", "snn")}
    worlds = {p.get("world_size", 1) for p in parts}
    merged = dict(first)
    merged.update({
        **_from_counts(counts, n, first["timesteps"][-1], seconds),
        "first_image": images[0][0],
        "world_size": worlds.pop() if len(worlds) == 1 else sorted(worlds),
        "parts": [{"name": names[i], "first_image": parts[i]["first_image"], "num_images": parts[i]["num_images"]}
                  for i in order],
        "images": images,
    })
    return merged
