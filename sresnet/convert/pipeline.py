"""The conversion pipeline behind :func:`sresnet.convert`."""

from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..network import READOUTS, Neuron, Readout
from ..simulate import SpikingNetwork
from . import compensate as comp
from . import lowlat, weights
from .fold import fold_batchnorm, split_call_sites
from ..distributed import shard_from
from .fuse import pool_analog_stem
from .normalize import normalize
from .observe import observe
from .trace import analyze, trace


def _check_percentile(p):
    if p in ("max", "search"):
        return p
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p <= 100) or not math.isfinite(p):
        raise ValueError(f"percentile must be a number in (0, 100], 'max' or 'search', got {p!r}")
    return float(p)


_HOOKS = {"_forward_pre_hooks": "forward pre-hook", "_forward_hooks": "forward hook"}


def _hooks(module: nn.Module) -> list[str]:
    return [what for attr, what in _HOOKS.items() if getattr(module, attr, None)]


def ann_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode with weight parametrizations baked in.

    The user's model is never touched (its training flags, parameters, buffers,
    requires_grad flags and hooks stay as they were). In the copy, ``torch.nn.utils``
    parametrizations (``parametrizations.weight_norm``, ``spectral_norm``, ...) and the
    old hook-based ``weight_norm`` / ``spectral_norm`` are replaced by the weight they give
    in eval mode, exactly what the model's forward uses.

    Raises:
        ValueError: a module of the model (or every module, globally) has another forward
            hook or forward pre-hook. torch.fx traces ``forward`` without hooks, so a hook
            that changes an output would be silently lost; the message names the module.
    """
    from torch.nn.modules import module as module_mod
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm, remove_spectral_norm
    from torch.nn.utils.weight_norm import WeightNorm, remove_weight_norm

    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        raise ValueError(
            "a global forward hook is registered (torch.nn.modules.module.register_module_forward_hook or "
            "..._pre_hook); convert traces forward() without hooks, so remove it before convert"
        )
    ann = copy.deepcopy(model)
    for name, mod in ann.named_modules():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                remove_weight_norm(mod, hook.name)
            elif isinstance(hook, SpectralNorm):
                remove_spectral_norm(mod, hook.name)
        found = _hooks(mod)
        if found:
            raise ValueError(
                f"module {name or type(model).__name__!r} ({type(mod).__name__}) has a "
                f"{' and a '.join(found)}; convert traces forward() "
                "without hooks, so a hook that changes an output would be silently lost. Remove it "
                "(handle.remove()) before convert and register it again afterwards"
            )
    ann = ann.cpu().float().eval()
    for mod in ann.modules():
        if parametrize.is_parametrized(mod):
            _bake_parametrizations(mod)
    return ann


def _bake_parametrizations(mod: nn.Module) -> None:
    """Replace a (copied) module's parametrized tensors by their current values.

    Not ``parametrize.remove_parametrizations``: it deletes the property from the module's
    class, which the deep copy shares with the user's module, and so breaks the user's model.
    """
    values = {name: getattr(mod, name).detach().clone() for name in mod.parametrizations}
    # parametrize wraps the class as type("Parametrized" + name, (cls,), ...): restore cls on the copy only
    mod.__class__ = type(mod).__bases__[0]
    del mod._modules["parametrizations"]
    for name, value in values.items():
        mod.register_parameter(name, nn.Parameter(value, requires_grad=False))


METHODS = ("lowlat", "s-resnet")


def _check_method(method, horizon, compensation, readout_delay) -> float:
    """Validate the method's arguments; returns the readout delay (a fraction of T) it uses."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}; accepted: {', '.join(map(repr, METHODS))}")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive int (the longest T the bias schedule is calibrated for), got {horizon!r}")
    plain = compensation is None or (isinstance(compensation, str) and compensation in ("auto", "off"))
    if method == "lowlat" and not plain:
        raise ValueError(f"compensation={compensation!r} applies to method='s-resnet'; method='lowlat' accepts "
                         "'auto' (its bias schedule) or None/'off' (no calibration)")
    if readout_delay is None:
        return lowlat.DEFAULT_READOUT_DELAY if method == "lowlat" else 0.0
    if isinstance(readout_delay, bool) or not isinstance(readout_delay, (int, float)) or not (0 <= readout_delay < 1):
        raise ValueError(f"readout_delay must be a fraction of T in [0, 1), got {readout_delay!r}")
    return float(readout_delay)


def convert(
    model: nn.Module,
    calib_images: torch.Tensor,
    percentile: float | str = 99.9,
    *,
    method: str = "lowlat",
    horizon: int = lowlat.DEFAULT_HORIZON,
    readout_delay: float | None = None,
    neuron: str = "if",
    max_spikes: int = 1,
    per_channel: bool | None = None,
    compensation: str | None | Mapping[str, float] | Sequence[float] = "auto",
    readout: str = "membrane",
    shortcut_norm: bool = True,
    batch_size: int = 128,
    calib_timesteps: int = comp.CALIB_TIMESTEPS,
    calib_subset: int = comp.CALIB_SUBSET,
    max_values: int = 2 ** 20,
    seed: int = 0,
    progress: bool = False,
    analog_stem_pool: bool = True,
    weight_calibration: bool | float | None = False,
    process_group=None,
) -> SpikingNetwork:
    """Convert a trained ReLU network (e.g. a ResNet) into a spiking network (S-ResNet).

    Steps: trace with torch.fx; fold BatchNorm into convs (eval statistics); observe the
    activations of every ReLU call site and the logits on ``calib_images``; normalize
    weights with the S-ResNet shortcut rule; build the spiking layers (IF neurons, θ = 1,
    v0 = θ/2); then, by ``method``:

    - "lowlat" (default): a per-step, per-channel bias schedule calibrated layer by layer
      up to ``horizon`` steps (:mod:`sresnet.convert.lowlat`) and a delayed readout; one
      network serves every T <= horizon, each T exactly as if calibrated for it alone.
    - "s-resnet": the paper's conversion with the constant compensation
      (:mod:`sresnet.convert.compensate`), exactly the pre-issue-12 default.

    The ANN itself is not modified: a copy is folded, and the model's training flags,
    parameters, buffers and hooks are left exactly as they were.

    Args:
        model: an FX-traceable network of conv, BatchNorm, ReLU, add, pooling, flatten,
            linear (CIFAR ResNets, torchvision-style ResNets, ...).
        calib_images: normalized images ``[N, C, H, W]`` for the statistics (e.g. 1000-5000
            training images).
        percentile: λ = this percentile of the positive activations of each site (99.9;
            99.99 or "max" also useful), or "search": per site (per channel with
            ``per_channel``) the λ with the least quantization error of an IF neuron over
            ``horizon`` steps ("lowlat") or ``calib_timesteps`` ("s-resnet"), after SNN
            Calibration's threshold search (:mod:`sresnet.convert.observe`;
            docs/accuracy.md measures it).
        method: "lowlat" or "s-resnet" (above).
        horizon: "lowlat": the longest T the schedule is calibrated for; later steps reuse a
            steady bias (docs/accuracy.md measures what that costs).
        readout_delay: fraction f in [0, 1) of the steps the readout skips (a run of T reads
            steps floor(f·T)+1..T; the skipped steps still count in T); None: the method's
            default (0.5 for "lowlat", 0 for "s-resnet").
        neuron: "if" (binary spikes, default), or opt-in "burst" (up to ``max_spikes`` spikes
            per step, Li & Zeng, IJCAI 2022) or "signed" (±1 spikes with memory, SNM, Wang et
            al., IJCAI 2022) for every spiking layer. These send more than one bit per neuron
            and step, so their T is not comparable with binary spikes (evaluation reports
            ``bits_per_neuron_step``); they need ``method="s-resnet"`` (the bias schedule is
            calibrated for binary IF neurons) and no gated max pool after the stem.
        max_spikes: spikes per step of a burst neuron (>= 1).
        per_channel: one λ per channel instead of one per site; None: the method's default
            (True for "lowlat", where it was measured better at every T <= 64 on ResNet-56
            and at T = 8 on ResNet-20, docs/accuracy.md; False for "s-resnet", the paper's
            per-layer λ).
        compensation: "auto": the method's calibration (for "s-resnet" the calibrated
            per-channel bias correction of :mod:`sresnet.convert.compensate`); None/"off":
            none (v0 = θ/2 only). Method "s-resnet" also takes "bias", "scale",
            "scale+bias", or user factors c (dict {site name: c} or a list, one per neuron
            layer in order) multiplying each neuron's input.
        readout: "membrane" (accumulated logits, default) or "spikes" (spike counts of an
            output IF layer, ties broken by its membrane).
        shortcut_norm: S-ResNet shortcut normalization (True) or the naive ablation.
        batch_size: images per ANN forward during observation.
        calib_timesteps: T of the calibration simulations (compensation).
        calib_subset: calibration images simulated by the compensation or the schedule.
        max_values: positive activations kept per site for the percentile (see observe).
        seed: seed of the activation subsampling.
        analog_stem_pool: move a max pool that directly follows the stem neuron in front of it
            (exact: the stem's current is constant over T, see :mod:`sresnet.convert.fuse`);
            False keeps a gated spiking max pool there, as the paper does.
        weight_calibration: opt-in, "lowlat" only: before its bias schedule, refit each
            layer's main conv/linear weight to the spike rates it receives from the calibrated
            layers below (least squares against the ANN's current, ridge regression towards
            the converted weight; :mod:`sresnet.convert.weights`, after SNN Calibration's
            advanced calibration). True: ridge :data:`sresnet.convert.weights.DEFAULT_RIDGE`;
            a float: that ridge (> 0; larger stays closer to the converted weights);
            False/None: off. The refit uses the rates over the whole ``horizon``, so the
            network is no longer the one calibrated for each shorter T alone.
            docs/accuracy.md measures it.
        process_group: an initialized ``torch.distributed`` group (default: the default group
            when one is initialized, e.g. under torchrun). The ranks share the observation of
            the calibration batches and the layer-by-layer calibration (each simulates a
            contiguous share of the ``calib_subset`` images) and merge them exactly
            (:mod:`sresnet.distributed`): the network is bit-identical to a single-process
            conversion. Every rank must pass the same ``calib_images``; ``calib_subset``
            must be at least the number of ranks.
        progress: a tqdm bar on stderr over the layers being calibrated (the calibration
            is most of the conversion time: minutes for ResNet-56 on 2 CPU cores).

    Returns:
        a :class:`sresnet.simulate.SpikingNetwork`; ``snn(images, timesteps=T)`` -> ``[B, classes]``.

    Example:
        >>> snn = convert(ann, calib_images, percentile=99.9)
        >>> per_step = snn(images, timesteps=64, per_step=True)   # [64, B, classes]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(calib_images, torch.Tensor) or calib_images.dim() != 4 or calib_images.shape[0] == 0:
        shape = tuple(calib_images.shape) if isinstance(calib_images, torch.Tensor) else type(calib_images).__name__
        raise ValueError(f"calib_images must be a non-empty tensor [N, C, H, W], got {shape}")
    if not bool(torch.isfinite(calib_images).all()):
        raise ValueError("calib_images contain NaN/Inf values")
    percentile = _check_percentile(percentile)
    if readout not in READOUTS:
        raise ValueError(f"readout={readout!r}; accepted: {', '.join(map(repr, READOUTS))}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    delay = _check_method(method, horizon, compensation, readout_delay)
    if per_channel is None:
        per_channel = method == "lowlat"
    elif not isinstance(per_channel, bool):
        raise TypeError(f"per_channel must be True, False or None (the method's default), got {per_channel!r}")
    kind = Neuron(kind=neuron, max_spikes=max_spikes).kind  # validates both
    if kind != "if" and method != "s-resnet":
        raise ValueError(f"neuron={neuron!r} needs method='s-resnet' (the low-latency bias schedule is calibrated "
                         "for binary IF neurons)")
    comp_method = comp.check_compensation(compensation)
    ridge = weights.check_ridge(weight_calibration)
    if ridge is not None and (method != "lowlat" or comp_method == "off"):
        raise ValueError(f"weight_calibration={weight_calibration!r} runs inside the low-latency calibration: it needs "
                         f"method='lowlat' with compensation 'auto' (got method={method!r}, "
                         f"compensation={compensation!r})")
    calib_images = calib_images.detach().float().cpu()
    shard = shard_from(process_group)
    with torch.no_grad():
        gm = trace(ann_copy(model))
        # one module per call site: folding must not change a weight another call also uses
        split_call_sites(gm)
        folded = fold_batchnorm(gm)
        try:
            program = analyze(gm, calib_images[: min(2, calib_images.shape[0])])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"the model cannot run on calib_images of shape {tuple(calib_images.shape)}: {first}"
            ) from exc
        pooled = pool_analog_stem(program) if analog_stem_pool else 0
        scales = observe(program, calib_images, percentile=percentile, per_channel=per_channel,
                         batch_size=batch_size, max_values=max_values, seed=seed, shard=shard,
                         search_timesteps=horizon if method == "lowlat" else calib_timesteps)
        layers, output = normalize(program, scales, shortcut_norm=shortcut_norm)
        info = dict(method=method, percentile=percentile, per_channel=per_channel, shortcut_norm=shortcut_norm,
                    compensation=compensation if isinstance(compensation, (str, type(None))) else "user",
                    folded_batchnorms=folded, analog_stem_pools=pooled, size_specific=list(program.size_specific))
        if method == "lowlat":
            info["horizon"] = horizon
        if ridge is not None:
            info["weight_calibration"] = ridge
        if kind != "if":
            if any(l.kind == "maxpool" for l in layers):
                raise ValueError(f"neuron={neuron!r}: the network has a gated spiking max pool, which is defined for "
                                 "binary spikes only; use neuron='if'")
            for layer in layers:
                layer.neuron = Neuron(kind=kind, max_spikes=max_spikes)
            info.update(neuron=kind, max_spikes=max_spikes)
        snn = SpikingNetwork(layers, output, scales["output"], program.input_shape,
                             readout=Readout(readout, delay_fraction=delay), info=info)
        snn.scales = {k: v.clone() for k, v in scales.items()}
        if method == "s-resnet":
            comp.compensate(snn, program, scales, calib_images, comp_method, compensation,
                            timesteps=calib_timesteps, subset=calib_subset, batch_size=batch_size,
                            progress=progress, shard=shard)
        elif comp_method != "off":
            lowlat.calibrate_schedule(snn, program, scales, calib_images[:calib_subset], horizon,
                                      batch_size=batch_size, progress=progress, shard=shard, weight_ridge=ridge)
        return snn
