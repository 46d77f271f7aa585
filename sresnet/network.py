"""The description of a converted spiking network: what is computed, not how it is run.

A :class:`Network` is data: a list of :class:`Layer` (each a layer of spiking neurons fed by a
sum of :class:`Term`, or a gated max pool), the terms of the logits, the neuron parameters of
every layer (:class:`Neuron`: threshold, start membrane, reset, per-step bias schedule), the
readout (:class:`Readout`) and the conversion metadata (λ per site, compensation). Running it
is the job of :mod:`sresnet.executor`; saving it that of :mod:`sresnet.io` (``to_dict`` /
``from_dict`` give plain containers of tensors and primitives).

A new neuron kind or calibration adds fields here and one kernel call in the executor.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

READOUTS = ("membrane", "spikes")
RESETS = ("subtract", "zero")
# "if": binary spikes (the paper's IF neuron); opt-in, more than one bit per step:
# "burst": 0..max_spikes spikes per step (Li & Zeng, IJCAI 2022); "signed": +1/-1 spikes with
# memory, a negative spike only after a net positive count (SNM, Wang et al., IJCAI 2022)
NEURON_KINDS = ("if", "burst", "signed")
LAYER_KINDS = ("stem", "neuron", "maxpool")
# parameter-free ops a term may apply before/after its conv/linear (see executor.apply_op)
OPS = ("subsample", "chanpad", "avgpool", "gap", "flatten", "pad", "maxpool")


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


class Term:
    """One input of a layer: source spikes -> ``pre`` ops -> optional conv/linear -> ``post`` ops -> x ``scale``.

    Attributes:
        source: index of the layer whose spikes are read (-1: the analog image).
        pre, post: parameter-free ops, tuples such as ``("subsample", 2)`` (see :data:`OPS`).
        kind: "conv", "linear" or None (a weightless shortcut).
        weight, bias: normalized float32 tensors (conv ``[Cout, Cin, kh, kw]``, linear
            ``[Fout, Fin]``; bias ``[Cout]``), None for a shortcut.
        stride, padding: conv geometry (pairs).
        scale: weight of a weightless term (scalar or one per channel ``[C]``), None = 1.
    """

    __slots__ = ("source", "pre", "kind", "weight", "bias", "stride", "padding", "post", "scale")

    def __init__(self, source, pre, kind=None, weight=None, bias=None, stride=1, padding=0, post=(), scale=None):
        self.source, self.pre, self.kind = source, list(pre), kind
        self.weight, self.bias, self.stride, self.padding = weight, bias, stride, padding
        self.post, self.scale = list(post), scale

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply ``fn`` to every tensor of the term (device / dtype moves)."""
        self.weight = fn(self.weight) if self.weight is not None else None
        self.bias = fn(self.bias) if self.bias is not None else None
        self.scale = fn(self.scale) if self.scale is not None else None

    def multiply(self, c: float | torch.Tensor) -> None:
        """Scale this term's contribution by ``c`` (a number or one value per output channel)."""
        c = torch.as_tensor(c, dtype=torch.float32, device=self.weight.device if self.weight is not None else None)
        if self.kind is None:
            self.scale = (self.scale if self.scale is not None else torch.ones(())) * c
            return
        self.weight = self.weight * c.reshape(-1, *([1] * (self.weight.dim() - 1))) if c.dim() else self.weight * c
        if self.bias is not None:
            self.bias = self.bias * c

    def to_dict(self) -> dict:
        return {s: _plain(getattr(self, s)) for s in self.__slots__}

    @classmethod
    def from_dict(cls, d: dict) -> "Term":
        return cls(d["source"], d["pre"], d["kind"], d["weight"], d["bias"], d["stride"], d["padding"], d["post"],
                   d["scale"])


class Neuron:
    """The integrate-and-fire neuron of a layer (DESIGN.md "Semantics").

    Per neuron and step t: ``v += x_t + b_t``; spike when ``v >= threshold``; reset by
    subtraction (or to 0 with reset="zero"); ``v`` starts at ``v0``.

    Attributes:
        threshold: θ > 0, a number or one value per channel ``[C]`` (1 after normalization).
        v0: start membrane: None (θ/2, the paper's half-threshold start), a number, or a
            tensor broadcastable to the per-image shape (``[C, 1, 1]`` per channel).
        reset: "subtract" (the paper's choice) or "zero".
        bias_schedule: None, or a per-step extra input current ``[H, C]`` float32: row t is added
            at step t (0-based); steps t >= H use row H-1. Calibrated forward-only, causally
            (row t depends only on steps <= t), so one schedule serves every T.
        kind: "if" (binary spikes), or opt-in "burst" (up to ``max_spikes`` spikes per step,
            :func:`spikekernels.burst_scan`) or "signed" (±1 spikes with memory,
            :func:`spikekernels.signed_scan`). Burst and signed neurons send more than one bit
            per neuron and step: their T is not comparable with binary spikes.
        max_spikes: spikes per step of a burst neuron (1 for the others).
    """

    __slots__ = ("threshold", "v0", "reset", "bias_schedule", "kind", "max_spikes")

    def __init__(self, threshold: float | torch.Tensor = 1.0, v0=None, reset: str = "subtract",
                 bias_schedule: torch.Tensor | None = None, kind: str = "if", max_spikes: int = 1):
        if reset not in RESETS:
            raise ValueError(f"reset={reset!r}; accepted: {', '.join(map(repr, RESETS))}")
        if kind not in NEURON_KINDS:
            raise ValueError(f"neuron kind {kind!r}; accepted: {', '.join(map(repr, NEURON_KINDS))}")
        if isinstance(max_spikes, bool) or not isinstance(max_spikes, int) or max_spikes < 1:
            raise ValueError(f"max_spikes must be an int >= 1 (spikes per step of a burst neuron), got {max_spikes!r}")
        if kind != "if" and reset != "subtract":
            raise ValueError(f"{kind} neurons reset by subtraction only; got reset={reset!r}")
        self.kind, self.max_spikes = kind, max_spikes
        if bias_schedule is not None and (not isinstance(bias_schedule, torch.Tensor) or bias_schedule.dim() != 2):
            raise ValueError("bias_schedule must be a float tensor [H, C] (one row per time step)")
        self.threshold, self.v0, self.reset, self.bias_schedule = threshold, v0, reset, bias_schedule

    @property
    def default(self) -> bool:
        """True for the plain IF neuron of the paper (θ = 1, v0 = θ/2, subtract, no schedule)."""
        return (not isinstance(self.threshold, torch.Tensor) and self.threshold == 1.0 and self.v0 is None
                and self.reset == "subtract" and self.bias_schedule is None and self.kind == "if")

    @property
    def binary(self) -> bool:
        """Whether the spikes are 0/1: counted as nonzero entries; otherwise as the sum of their magnitudes."""
        return self.kind == "if" or (self.kind == "burst" and self.max_spikes == 1)

    @property
    def bits(self) -> float:
        """Bits a neuron sends per step: 1 (IF), log2(max_spikes + 1) (burst), log2(3) (signed)."""
        if self.kind == "signed":
            return math.log2(3)
        return math.log2(self.max_spikes + 1) if self.kind == "burst" else 1.0

    def bias_rows(self, t0: int, steps: int) -> torch.Tensor | None:
        """Rows ``t0 .. t0+steps-1`` of the schedule ``[steps, C]`` (the last row repeats), or None."""
        b = self.bias_schedule
        if b is None:
            return None
        idx = torch.arange(t0, t0 + steps, device=b.device).clamp_max(b.shape[0] - 1)
        return b.index_select(0, idx)

    def apply(self, fn) -> None:
        for s in self.__slots__:
            v = getattr(self, s)
            if isinstance(v, torch.Tensor):
                setattr(self, s, fn(v))

    def to_dict(self) -> dict:
        return {s: _plain(getattr(self, s)) for s in self.__slots__}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Neuron":
        return cls(**d) if d else cls()


class Readout:
    """How the logits are read out of the output currents.

    Attributes:
        kind: "membrane" (mean output current, the ANN's logits / λ_out) or "spikes" (spike
            counts of an output IF layer, ties broken by its membrane).
        delay: the readout of T' steps starts after ``delay_for(T')`` steps: the output
            accumulated over steps ``d+1 .. T'`` only (the arrival delay of a deep network's
            first spikes is skipped). 0 = from the first step (the paper). The skipped steps
            still count in T.
        delay_fraction: the delay also grows with T' as ``floor(delay_fraction · T')``; the
            larger of the two rules applies, capped at T' - 1.
    """

    __slots__ = ("kind", "delay", "delay_fraction")

    def __init__(self, kind: str = "membrane", delay: int = 0, delay_fraction: float = 0.0):
        if kind not in READOUTS:
            raise ValueError(f"readout={kind!r}; accepted: {', '.join(map(repr, READOUTS))}")
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise ValueError(f"readout delay must be an int >= 0 (time steps), got {delay!r}")
        if not (0.0 <= float(delay_fraction) < 1.0):
            raise ValueError(f"readout delay_fraction must be in [0, 1), got {delay_fraction!r}")
        self.kind, self.delay, self.delay_fraction = kind, delay, float(delay_fraction)

    def delay_for(self, T: int) -> int:
        """Steps skipped by the readout of a T-step run, in ``[0, T-1]``."""
        return min(T - 1, max(self.delay, int(math.floor(self.delay_fraction * T))))

    def to_dict(self) -> dict:
        return {s: getattr(self, s) for s in self.__slots__}


class Layer:
    """A spiking layer: kind "stem" (IF over the conv of the analog image), "neuron" (IF over a
    sum of terms) or "maxpool" (gated max pooling of a layer's spikes).

    Attributes:
        name: the ReLU call site (fx node name) it replaces; shape: per-image output shape
            at the conversion's image size.
        main: the conv/linear term fused with the neuron (None when there is none);
            others: the other terms (shortcuts; their sum enters the fused kernel).
        bias: extra constant input current ``[C]`` of a layer without a main term.
        pool, source: max-pool geometry ``{"kernel", "stride", "padding"}`` (pairs; optional
            ``"ceil_mode": True``, torch's ceil_mode, see :func:`sresnet.executor.ceil_mode_pad`)
            and input layer.
        neuron: the :class:`Neuron` parameters.
    """

    __slots__ = ("kind", "name", "shape", "main", "others", "bias", "pool", "source", "neuron")

    def __init__(self, kind, name, shape, main=None, others=(), bias=None, pool=None, source=-1, neuron=None):
        if kind not in LAYER_KINDS:
            raise ValueError(f"layer kind {kind!r}; accepted: {', '.join(LAYER_KINDS)}")
        self.kind, self.name, self.shape = kind, name, tuple(shape)
        self.main, self.others, self.bias = main, list(others), bias
        self.pool, self.source = pool, source
        self.neuron = neuron if neuron is not None else Neuron()

    @property
    def residual_spikes(self) -> bool:
        """One weightless shortcut beside the main term: its spikes enter the fused kernel as they are."""
        return (self.main is not None and len(self.others) == 1 and self.others[0].kind is None
                and not self.others[0].post)

    @property
    def neurons(self) -> int:
        return math.prod(int(d) for d in self.shape)

    def terms(self) -> list[Term]:
        return ([self.main] if self.main is not None else []) + self.others

    def sources(self) -> list[int]:
        if self.kind == "maxpool":
            return [self.source]
        return [t.source for t in self.terms()]

    def add_bias(self, delta: torch.Tensor) -> None:
        """Add a constant input current per channel ``[C]`` (bias correction)."""
        if self.main is not None:
            b = self.main.bias if self.main.bias is not None else torch.zeros(self.shape[0])
            self.main.bias = b + delta
        else:
            self.bias = (self.bias if self.bias is not None else torch.zeros(self.shape[0])) + delta

    def multiply(self, c) -> None:
        """Scale every input of the layer by ``c`` (a number or one value per channel)."""
        for t in self.terms():
            t.multiply(c)
        if self.bias is not None:
            self.bias = self.bias * torch.as_tensor(c, dtype=torch.float32)

    def apply(self, fn) -> None:
        for t in self.terms():
            t.apply(fn)
        if self.bias is not None:
            self.bias = fn(self.bias)
        self.neuron.apply(fn)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "shape": list(self.shape),
                "main": self.main.to_dict() if self.main is not None else None,
                "others": [t.to_dict() for t in self.others], "bias": _plain(self.bias),
                "pool": _plain(self.pool), "source": self.source, "neuron": self.neuron.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Layer":
        return cls(d["kind"], d["name"], d["shape"], main=Term.from_dict(d["main"]) if d["main"] else None,
                   others=[Term.from_dict(t) for t in d["others"]], bias=d["bias"], pool=d["pool"],
                   source=d["source"], neuron=Neuron.from_dict(d.get("neuron")))


def _spatial_flatten(layers: list[Layer], output: list[Term]) -> bool:
    """Whether some term flattens (or feeds a linear layer with) a map wider than 1x1: then
    the network depends on the image size it was converted for."""
    for t in [t for l in layers if l.kind != "maxpool" for t in l.terms()] + list(output):
        if t.source < 0:
            continue
        spatial = len(layers[t.source].shape) == 3
        for op in t.pre + ([("weighted",)] if t.kind == "linear" else []) + t.post:
            if op[0] == "gap":
                spatial = False
            elif op[0] in ("flatten", "weighted") and spatial:
                return True
    return False


class Network:
    """A converted spiking network as data (see the module docstring).

    Attributes:
        layers: list of :class:`Layer` in execution order; output: terms of the logits;
        output_scale: λ of the logits (0-dim float32); input_shape: ``(C, H, W)`` of the
        images it was converted for; readout: :class:`Readout`; info: conversion settings;
        scales: λ per site name; compensation: what the calibration applied per layer.
    """

    def __init__(self, layers, output, output_scale, input_shape, readout: Readout | str = "membrane",
                 info: dict | None = None, scales: dict | None = None, compensation: dict | None = None):
        self.layers: list[Layer] = list(layers)
        self.output: list[Term] = list(output)
        self.output_scale = torch.as_tensor(output_scale, dtype=torch.float32)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.readout = readout if isinstance(readout, Readout) else Readout(readout)
        self.info = dict(info or {})
        self.scales = dict(scales or {})
        self.compensation = dict(compensation or {})
        # info["size_specific"]: ops whose windows the converter fixed for the conversion's map
        # size (adaptive pooling to k x k); like a flattened map, they pin the image size
        self.size_agnostic = not _spatial_flatten(self.layers, self.output) and not self.info.get("size_specific")
        self.free_after = self._plan()

    def _plan(self) -> list[list[int]]:
        """``free_after[i]``: layers whose spikes nobody reads after layer i (len(layers): the output)."""
        last = {}
        for i, layer in enumerate(self.layers):
            for s in layer.sources():
                if s >= 0:
                    last[s] = i
        n = len(self.layers)
        for t in self.output:
            last[t.source] = n
        return [[j for j, k in last.items() if k == i] for i in range(n + 1)]

    def apply(self, fn) -> None:
        """Apply ``fn`` to every tensor (device / dtype moves)."""
        for layer in self.layers:
            layer.apply(fn)
        for t in self.output:
            t.apply(fn)
        self.output_scale = fn(self.output_scale)

    def to_dict(self) -> dict:
        return {"layers": [l.to_dict() for l in self.layers], "output": [t.to_dict() for t in self.output],
                "output_scale": _plain(self.output_scale), "input_shape": list(self.input_shape),
                "readout": self.readout.to_dict(), "info": _plain(self.info), "scales": _plain(self.scales),
                "compensation": _plain(self.compensation)}

    @classmethod
    def from_dict(cls, d: dict) -> "Network":
        r = d["readout"]
        readout = Readout(**r) if isinstance(r, dict) else Readout(r)
        return cls([Layer.from_dict(l) for l in d["layers"]], [Term.from_dict(t) for t in d["output"]],
                   d["output_scale"], d["input_shape"], readout, d.get("info"), d.get("scales"),
                   d.get("compensation"))
