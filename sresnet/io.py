"""Saving and loading converted spiking networks, so conversion is done once.

The file is ``torch.save`` of plain containers (dict, list, tuple, str, int, float, bool,
None) and tensors only, so ``torch.load(..., weights_only=True)`` reads it without running
any code from the file. It holds every layer's normalized weights and biases (compensation
included), shortcut scales, pooling geometry, the output scale λ, the readout, the
conversion settings (λ per site, percentile, compensation) and the library version.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .simulate import RLayer, RTerm, SpikingNetwork

FORMAT = "sresnet.snn"
FORMAT_VERSION = 1
_PRIMITIVES = (str, int, float, bool, type(None))


def _plain(value, where: str):
    """``value`` as containers of primitives and tensors (what weights_only loading accepts)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"cannot save {where} of type {type(value).__name__}: only tensors, numbers, strings and containers")


def _term(t: RTerm | None):
    if t is None:
        return None
    return {s: _plain(getattr(t, s), s) for s in RTerm.__slots__}


def _unterm(d) -> RTerm | None:
    if d is None:
        return None
    return RTerm(d["source"], d["pre"], d["kind"], d["weight"], d["bias"], d["stride"], d["padding"], d["post"], d["scale"])


def save(snn: SpikingNetwork, path: str | Path) -> Path:
    """Write a converted network to ``path`` (see the module docstring for the format)."""
    from . import __version__

    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"save() takes a SpikingNetwork (from sresnet.convert), got {type(snn).__name__}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sresnet_version": __version__,
        "readout": snn.readout,
        "output_scale": snn.output_scale.clone(),
        "input_shape": list(snn.input_shape),
        "info": _plain(snn.info, "info"),
        "layers": [
            {"kind": l.kind, "name": l.name, "shape": list(l.shape), "main": _term(l.main),
             "others": [_term(t) for t in l.others], "bias": _plain(l.bias, "bias"),
             "pool": _plain(l.pool, "pool"), "source": l.source}
            for l in snn.layers
        ],
        "output": [_term(t) for t in snn.output],
    }
    path = Path(path)
    torch.save(payload, path)
    return path


def load(path: str | Path) -> SpikingNetwork:
    """Read a network written by :func:`save` (safe: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no converted network at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable converted network ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a converted sresnet network (no '{FORMAT}' format tag); "
                         "make one with `python -m sresnet convert` or sresnet.save()")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {payload.get('format_version')}; this sresnet reads version {FORMAT_VERSION}")
    try:
        layers = [
            RLayer(d["kind"], d["name"], d["shape"], main=_unterm(d["main"]), others=[_unterm(t) for t in d["others"]],
                   bias=d["bias"], pool=d["pool"], source=d["source"])
            for d in payload["layers"]
        ]
        output = [_unterm(t) for t in payload["output"]]
        snn = SpikingNetwork(layers, output, payload["output_scale"], payload["input_shape"],
                             readout=payload["readout"], info=payload["info"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is a damaged converted network: {type(exc).__name__}: {exc}") from None
    for layer in layers:
        for t in ([layer.main] if layer.main else []) + layer.others:
            if t.weight is not None and not bool(torch.isfinite(t.weight).all()):
                raise ValueError(f"{path}: layer {layer.name} has non-finite weights")
    if not math.isfinite(float(snn.output_scale.max())):
        raise ValueError(f"{path}: non-finite output scale")
    return snn
