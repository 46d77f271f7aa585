"""Compensation of the systematic conversion error, calibrated layer by layer.

A converted IF neuron fires at a rate close to, but not exactly, the normalized ANN
activation clip(a/λ, 0, 1): rates lag at the start of a run, inputs that are themselves
spike trains carry quantization noise, and neurons whose input changes sign fire where
the ReLU of the mean would not. The errors add up over depth (and the deep ResNet-56
loses most). The calibration measures them and cancels them in the mean:

1. Run the ANN on ``subset`` calibration images and record, per neuron layer and channel,
   the mean of clip(a/λ, 0, 1) (the rate the SNN should have).
2. Simulate the SNN on the same images for ``timesteps`` steps, **layer by layer in
   order**, each layer reading the spikes of already-compensated earlier layers. For
   layer l measure its mean rate per channel r and correct it:
   - "bias": add δ = target − r to the channel's input current (a per-channel bias),
     twice (the second pass corrects the part absorbed by silent / saturated neurons);
   - "scale": multiply the layer's input (weights, bias, shortcut weight) by
     c = mean target / mean rate (one factor per layer, clipped to [0.5, 2]);
   - "scale+bias": the scale, then the bias correction.
   then simulate layer l again and keep its spikes for the next layers.

"auto" is "bias" (the most accurate in docs/accuracy.md). The start membrane stays
v0 = θ/2 in every mode; "off" keeps only that.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.fx as fx
from tqdm import tqdm

CALIB_TIMESTEPS = 128
CALIB_SUBSET = 32
METHODS = ("auto", "bias", "scale", "scale+bias", "off")
BIAS_PASSES = 2


def check_compensation(compensation) -> str:
    """The compensation method name ("user" for explicit factors)."""
    if compensation is None or compensation == "off":
        return "off"
    if isinstance(compensation, str):
        if compensation not in METHODS:
            raise ValueError(f"compensation={compensation!r}; accepted: {', '.join(map(repr, METHODS))}, None, "
                             "a dict {site: factor} or a list of factors")
        return "bias" if compensation == "auto" else compensation
    if isinstance(compensation, (Mapping, Sequence)):
        return "user"
    raise TypeError(f"compensation must be a str, None, a dict or a list, got {type(compensation).__name__}")


class _MeanClip:
    """Mean of clip(x/λ, 0, 1) per channel; one float32 sum per batch, added in batch order
    (so that shares of the batches observed by several ranks merge to the same float sums)."""

    def __init__(self, lam: torch.Tensor):
        self.lam, self.parts, self.counts = lam, {}, {}
        self.batch = 0

    def update(self, x: torch.Tensor) -> None:
        lam = self.lam.view(1, -1, *([1] * (x.dim() - 2))) if self.lam.dim() else self.lam
        y = (x.float() / lam).clamp_(0, 1)
        dims = [0] + list(range(2, x.dim()))
        self.parts[self.batch] = y.sum(dim=dims)
        self.counts[self.batch] = y.numel() // y.shape[1]

    def merge(self, shard) -> None:
        """Join the per-batch sums of every rank of ``shard`` (:meth:`mean` adds them in batch order)."""
        if not shard.active:
            return
        for parts, counts in shard.gather((self.parts, self.counts)):
            self.parts.update(parts)
            self.counts.update(counts)

    def mean(self) -> torch.Tensor:
        total = None
        for b in sorted(self.parts):
            total = self.parts[b] if total is None else total + self.parts[b]
        return total / sum(self.counts.values())


class _Recorder(fx.Interpreter):
    def __init__(self, gm, stats):
        super().__init__(gm)
        self.stats = stats

    def run_node(self, n):
        result = super().run_node(n)
        if n.name in self.stats:
            self.stats[n.name].update(result)
        return result


def ann_targets(program, scales: dict, images: torch.Tensor, batch_size: int, shard=None) -> dict:
    """Per neuron layer: mean over images and positions of clip(a/λ, 0, 1), per channel ``[C]``.

    ``shard`` (a :class:`sresnet.distributed.Shard`): this rank runs batches b with
    b mod world = rank; the per-batch sums are gathered and added in batch order, so every
    rank gets the float32 means one process computes.
    """
    stats = {l.name: _MeanClip(scales[l.name]) for l in program.layers if l.kind == "neuron"}
    rec = _Recorder(program.graph_module, stats)
    for b, i in enumerate(range(0, images.shape[0], batch_size)):
        if shard is not None and not shard.owns(b):
            continue
        for st in stats.values():
            st.batch = b
        rec.run(images[i : i + batch_size])
    if shard is not None:
        for st in stats.values():
            st.merge(shard)
    return {k: s.mean() for k, s in stats.items()}


def _run_layer(snn, i: int, outs_full: list, T: int, chunk: int, images: torch.Tensor, shard=None, n_images=None):
    """Layer i over all T (in chunks) on stored inputs: spikes [T, B, ...] and mean rate per channel.

    With ``shard``, ``images`` are this rank's share of ``n_images``: the spike counts are
    summed over the ranks (integers, exact) before the rate is taken.
    """
    layer = snn.layers[i]
    # the stem's current depends on its (possibly just corrected) bias: recompute it
    stems = snn.stem_currents(images) if layer.kind == "stem" else {}
    out = None
    state = None
    counts = None
    for t0 in range(0, T, chunk):
        steps = min(chunk, T - t0)
        view = [o[t0 : t0 + steps] if o is not None else None for o in outs_full]
        s, state = snn.step_layer(i, view, steps, state, stems.get(i))
        if out is None:
            out = torch.empty((T,) + tuple(s.shape[1:]), dtype=s.dtype)
        out[t0 : t0 + steps] = s
        dims = [0, 1] + list(range(3, s.dim()))
        # the spikes sent (a count per step for burst neurons, ±1 for signed ones; 0/1 for IF)
        c = s.sum(dim=dims, dtype=torch.int64) if layer.kind != "maxpool" else None
        counts = c if counts is None else (counts + c if c is not None else None)
    if counts is not None and shard is not None:
        counts = shard.reduce(counts)
    per = T * (n_images or out.shape[1]) * (out[0, 0, 0].numel() if out.dim() > 3 else 1)
    rate = counts.double().div(per).float() if counts is not None else None
    return out, rate


def targets_and_share(program, scales: dict, images: torch.Tensor, batch_size: int, shard) -> tuple:
    """The ANN targets of :func:`ann_targets` over all ``images`` and this rank's contiguous
    share of them for the layer-by-layer simulation (all of them without ``shard``).

    Raises:
        ValueError: fewer images than ranks (checked before any collective runs).
    """
    n = images.shape[0]
    active = shard is not None and shard.active
    if active and n < shard.world:
        raise ValueError(f"{shard.world} processes share {n} calibration images (calib_subset): every process "
                         f"needs at least one; pass more calibration images or run at most {n} processes")
    targets = ann_targets(program, scales, images, batch_size, shard)
    return targets, images[shard.block(n)] if active else images


def apply_factors(snn, factors) -> None:
    """Multiply each neuron layer's input by a user factor (dict by site name or list in order)."""
    neurons = [l for l in snn.layers if l.kind != "maxpool"]
    if isinstance(factors, Mapping):
        names = {l.name: l for l in neurons}
        unknown = sorted(set(factors) - set(names))
        if unknown:
            raise ValueError(f"compensation factors for unknown sites {unknown}; sites: {list(names)}")
        pairs = [(names[k], v) for k, v in factors.items()]
    else:
        factors = list(factors)
        if len(factors) != len(neurons):
            raise ValueError(f"compensation has {len(factors)} factors but the network has {len(neurons)} neuron layers")
        pairs = list(zip(neurons, factors))
    for layer, c in pairs:
        c = torch.as_tensor(c, dtype=torch.float32)
        if not bool(torch.isfinite(c).all()) or bool((c <= 0).any()):
            raise ValueError(f"compensation factor for {layer.name!r} must be finite and > 0, got {c.tolist()}")
        layer.multiply(c)


def compensate(snn, program, scales, images, method: str, raw, *, timesteps: int, subset: int, batch_size: int,
               progress: bool = False, shard=None) -> dict:
    """Apply the compensation ``method`` to ``snn`` in place; returns what was applied per layer.

    ``shard`` (a :class:`sresnet.distributed.Shard`): each rank simulates a contiguous share
    of the ``subset`` images and the spike counts are summed exactly, so every rank applies
    what one process would (given per-image currents that do not depend on the other images
    of a call; see :func:`sresnet.convert.lowlat.calibrate_schedule` for when that holds).

    Raises:
        ValueError: fewer calibration images than ranks.
    """
    if method == "off":
        return {}
    if method == "user":
        apply_factors(snn, raw)
        return {}
    images = images[:subset]
    n = images.shape[0]
    targets, images = targets_and_share(program, scales, images, batch_size, shard)
    T = timesteps
    # the chunk one process would use for all n images: the same steps go together on every rank
    chunk = min(T, snn.default_chunk(n, tuple(images.shape[2:])))
    outs_full: list = [None] * len(snn.layers)
    applied = {}
    bar = tqdm(snn.layers, desc=f"compensation ({method}, T={T})", unit="layer", disable=not progress, leave=False)
    for i, layer in enumerate(bar):
        if layer.kind != "maxpool":
            target = targets[layer.name]
            if "scale" in method:
                _, rate = _run_layer(snn, i, outs_full, T, chunk, images, shard, n)
                c = float((target.mean() / rate.mean().clamp_min(1e-6)).clamp(0.5, 2.0))
                layer.multiply(c)
                applied.setdefault(layer.name, {})["scale"] = c
            if "bias" in method:
                total = torch.zeros_like(target)
                for _ in range(BIAS_PASSES):
                    _, rate = _run_layer(snn, i, outs_full, T, chunk, images, shard, n)
                    delta = target - rate
                    layer.add_bias(delta)
                    total += delta
                applied.setdefault(layer.name, {})["bias"] = total
        outs_full[i], _ = _run_layer(snn, i, outs_full, T, chunk, images, shard, n)
        for j in snn._free[i]:
            outs_full[j] = None
    snn.compensation = applied
    return applied
