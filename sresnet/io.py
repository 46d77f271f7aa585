"""Saving and loading converted spiking networks, so conversion is done once.

The file is ``torch.save`` of plain containers (dict, list, tuple, str, int, float, bool,
None) and tensors only, so ``torch.load(..., weights_only=True)`` reads it without running
any code from the file. It holds every layer's normalized weights and biases (compensation
included), shortcut scales, pooling geometry, the output scale λ, the readout, the
conversion settings and metadata (λ per site, percentile, what the compensation applied),
the neuron parameters and readout delay, and the library version.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .network import Layer, Network, Term
from .simulate import SpikingNetwork

FORMAT = "sresnet.snn"
# 2: the whole description (neuron parameters, readout delay, λ per site, compensation);
# 1: layers and weights only (still read: their neurons are the paper's defaults)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
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


def save(snn: SpikingNetwork, path: str | Path) -> Path:
    """Write a converted network to ``path`` (see the module docstring for the format).

    Raises:
        TypeError: ``snn`` is not a SpikingNetwork, or its ``info`` holds values other than
            tensors, numbers, strings and containers (named in the message).
    """
    from . import __version__

    if not isinstance(snn, SpikingNetwork):
        raise TypeError(f"save() takes a SpikingNetwork (from sresnet.convert), got {type(snn).__name__}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sresnet_version": __version__,
        "network": _plain(snn.network.to_dict(), "network"),
    }
    path = Path(path)
    torch.save(payload, path)
    return path


def _network_v1(payload: dict) -> Network:
    layers = [
        Layer(d["kind"], d["name"], d["shape"], main=Term.from_dict(d["main"]) if d["main"] else None,
              others=[Term.from_dict(t) for t in d["others"]], bias=d["bias"], pool=d["pool"], source=d["source"])
        for d in payload["layers"]
    ]
    return Network(layers, [Term.from_dict(t) for t in payload["output"]], payload["output_scale"],
                   payload["input_shape"], payload["readout"], payload["info"])


def load(path: str | Path) -> SpikingNetwork:
    """Read a network written by :func:`save` (safe: ``weights_only=True``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a converted network, has a format version this sresnet
            cannot read, or is damaged (non-finite weights, missing fields).
    """
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
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path} has format version {version}; this sresnet reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))} (a newer sresnet wrote it: upgrade sresnet)")
    try:
        net = _network_v1(payload) if version == 1 else Network.from_dict(payload["network"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is a damaged converted network: {type(exc).__name__}: {exc}") from None
    for layer in net.layers:
        for t in layer.terms():
            if t.weight is not None and not bool(torch.isfinite(t.weight).all()):
                raise ValueError(f"{path}: layer {layer.name} has non-finite weights")
    if not math.isfinite(float(net.output_scale.max())):
        raise ValueError(f"{path}: non-finite output scale")
    return SpikingNetwork(net)
