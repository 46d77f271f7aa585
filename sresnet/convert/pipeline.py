"""The conversion pipeline behind :func:`sresnet.convert`."""

from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ..network import READOUTS
from ..simulate import SpikingNetwork
from . import compensate as comp
from .fold import fold_batchnorm, split_call_sites
from .fuse import pool_analog_stem
from .normalize import normalize
from .observe import observe
from .trace import analyze, trace


def _check_percentile(p):
    if p == "max":
        return p
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p <= 100) or not math.isfinite(p):
        raise ValueError(f"percentile must be a number in (0, 100] or 'max', got {p!r}")
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


def convert(
    model: nn.Module,
    calib_images: torch.Tensor,
    percentile: float | str = 99.9,
    *,
    per_channel: bool = False,
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
) -> SpikingNetwork:
    """Convert a trained ReLU network (e.g. a ResNet) into a spiking network (S-ResNet).

    Steps: trace with torch.fx; fold BatchNorm into convs (eval statistics); observe the
    activations of every ReLU call site and the logits on ``calib_images``; normalize
    weights with the S-ResNet shortcut rule; compensate; build the spiking layers
    (IF neurons, θ = 1, v0 = θ/2). The ANN itself is not modified: a copy is folded, and
    the model's training flags, parameters, buffers and hooks are left exactly as they were.

    Args:
        model: an FX-traceable network of conv, BatchNorm, ReLU, add, pooling, flatten,
            linear (CIFAR ResNets, torchvision-style ResNets, ...).
        calib_images: normalized images ``[N, C, H, W]`` for the statistics (e.g. 1000-5000
            training images).
        percentile: λ = this percentile of the positive activations of each site (99.9;
            99.99 or "max" also useful).
        per_channel: one λ per channel instead of one per site.
        compensation: "auto" (default: calibrated per-channel bias correction, see
            :mod:`sresnet.convert.compensate`), "bias", "scale", "scale+bias", None/"off"
            (v0 = θ/2 only), or user factors c (dict {site name: c} or a list, one per
            neuron layer in order) multiplying each neuron's input.
        readout: "membrane" (accumulated logits, default) or "spikes" (spike counts of an
            output IF layer, ties broken by its membrane).
        shortcut_norm: S-ResNet shortcut normalization (True) or the naive ablation.
        batch_size: images per ANN forward during observation.
        calib_timesteps: T of the calibration simulations (compensation).
        calib_subset: calibration images used by the compensation simulations.
        max_values: positive activations kept per site for the percentile (see observe).
        seed: seed of the activation subsampling.
        analog_stem_pool: move a max pool that directly follows the stem neuron in front of it
            (exact: the stem's current is constant over T, see :mod:`sresnet.convert.fuse`);
            False keeps a gated spiking max pool there, as the paper does.
        progress: a tqdm bar on stderr over the layers being calibrated (the compensation
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
    method = comp.check_compensation(compensation)
    calib_images = calib_images.detach().float().cpu()
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
                         batch_size=batch_size, max_values=max_values, seed=seed)
        layers, output = normalize(program, scales, shortcut_norm=shortcut_norm)
        snn = SpikingNetwork(layers, output, scales["output"], program.input_shape, readout=readout,
                             info=dict(percentile=percentile, per_channel=per_channel, shortcut_norm=shortcut_norm,
                                       compensation=compensation if isinstance(compensation, (str, type(None))) else "user",
                                       folded_batchnorms=folded, analog_stem_pools=pooled,
                                       size_specific=list(program.size_specific)))
        snn.scales = {k: v.clone() for k, v in scales.items()}
        comp.compensate(snn, program, scales, calib_images, method, compensation,
                        timesteps=calib_timesteps, subset=calib_subset, batch_size=batch_size,
                        progress=progress)
        return snn
