"""Firing rates, synaptic operations and energy estimates of a spiking network.

Synaptic operations (SOPs) count, for every spike, the synapses it actually reaches: a spike
at input position (y, x) of a conv reaches ``Cout`` output channels at every output position
whose window covers (y, x), which is fewer at borders, with padding and with strides. Each
SOP is one accumulate (AC). The ANN does one multiply-accumulate (MAC) per weight use.

Energy defaults: 45 nm CMOS, 32-bit float, from M. Horowitz, "Computing's energy problem
(and what we can do about it)", ISSCC 2014: add 0.9 pJ, multiply 3.7 pJ, so AC = 0.9 pJ and
MAC = 3.7 + 0.9 = 4.6 pJ. These are the figures most conversion papers use; memory access
is not included, which favours neither side in the ratio only while both move similar data.
Override them with ``EnergyModel(e_ac=..., e_mac=...)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _fanout_1d(size: int, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """For each input index, how many output indices of a 1-D conv read it."""
    out = conv_output_size(size, kernel, stride, padding)
    starts = torch.arange(out) * stride - padding  # first input index of each window
    pos = torch.arange(size)
    covered = (pos[:, None] >= starts[None, :]) & (pos[:, None] < starts[None, :] + kernel)
    return covered.sum(1).to(torch.float64)


def conv_fanout(in_hw: Sequence[int], kernel, stride=1, padding=0) -> torch.Tensor:
    """``[H, W]``: number of output positions that each input position feeds (per output channel)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    fy = _fanout_1d(int(in_hw[0]), kh, sh, ph)
    fx = _fanout_1d(int(in_hw[1]), kw, sw, pw)
    return fy[:, None] * fx[None, :]


def conv_sops(spike_map: torch.Tensor, out_channels: int, kernel, stride=1, padding=0) -> float:
    """Synaptic operations of a conv fed by spikes.

    Args:
        spike_map: spike counts per input position, ``[..., H, W]`` (summed over whatever
            leading dims: time, batch, channel).
        out_channels: Cout of the conv.
    """
    fan = conv_fanout(spike_map.shape[-2:], kernel, stride, padding)
    per_pos = spike_map.to(torch.float64).reshape(-1, *spike_map.shape[-2:]).sum(0)
    return float((per_pos * fan).sum()) * out_channels


def conv_macs(in_channels: int, out_channels: int, kernel, out_hw: Sequence[int]) -> float:
    """Multiply-accumulates of one dense conv on one image (groups=1)."""
    kh, kw = _pair(kernel)
    return float(in_channels * out_channels * kh * kw * out_hw[0] * out_hw[1])


def linear_sops(spike_count: float, out_features: int) -> float:
    return float(spike_count) * out_features


def linear_macs(in_features: int, out_features: int) -> float:
    return float(in_features * out_features)


def firing_rate(spikes: float, neurons: int, timesteps: int, batch: int) -> float:
    """Spikes per neuron per step."""
    denom = neurons * timesteps * batch
    if denom <= 0:
        raise ValueError(f"firing_rate needs neurons, timesteps and batch >= 1, got {neurons}, {timesteps}, {batch}")
    return float(spikes) / denom


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in joules (defaults: Horowitz 2014, 45 nm, 32-bit float)."""

    e_ac: float = 0.9e-12
    e_mac: float = 4.6e-12

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"EnergyModel.{name} must be > 0 joules, got {value!r}")

    def snn(self, sops: float, analog_macs: float = 0.0) -> float:
        """Energy of a spiking run: one AC per SOP plus the MACs of layers fed analog input."""
        return sops * self.e_ac + analog_macs * self.e_mac

    def ann(self, macs: float) -> float:
        return macs * self.e_mac


def _map_through(op: tuple, m: torch.Tensor) -> torch.Tensor:
    """Carry a spike-count map ``[C, H, W]`` through a parameter-free op that precedes a synapse.

    Sum pooling (not average) so that every spike stays counted once per pooled position it
    reaches: exact for non-overlapping pools, an upper bound for overlapping ones.
    """
    kind = op[0]
    if kind == "subsample":
        return m[:, :: op[1], :: op[1]]
    if kind == "chanpad":
        return torch.nn.functional.pad(m, (0, 0, 0, 0, op[1], op[2]))
    if kind == "avgpool":
        k, s, p = _pair(op[1]), _pair(op[2] or op[1]), _pair(op[3])
        return torch.nn.functional.avg_pool2d(m[None], k, s, p)[0] * (k[0] * k[1])
    if kind == "gap":
        return m.sum((-2, -1))
    if kind == "flatten":
        return m.reshape(-1)
    raise ValueError(f"unknown op {kind!r} in a synapse path")


def layer_costs(snn, maps: dict[int, torch.Tensor], images: int, in_shape: Sequence[int]) -> list[dict]:
    """Per-synapse-layer SOPs (from spike-count maps) and ANN MACs, both per image.

    Args:
        snn: a :class:`sresnet.SpikingNetwork`.
        maps: layer index -> spike counts of that layer's output ``[C, H, W]`` (or ``[F]``)
            summed over time and images.
        images: how many images the maps cover.
        in_shape: the image shape ``[C, H, W]``.
    """
    rows = []
    shapes = {i: tuple(l.shape) for i, l in enumerate(snn.layers)}
    for i, layer in enumerate(snn.layers):
        terms = ([layer.main] if layer.main is not None else []) + list(layer.others)
        for term in terms:
            if term.kind is None and term.source == -1:
                continue
            src_shape = tuple(in_shape) if term.source == -1 else shapes[term.source]
            analog = term.source == -1
            m = torch.ones(src_shape, dtype=torch.float64) if analog else maps[term.source].to(torch.float64)
            for op in term.pre:
                m = _map_through(op, m)
            cin_hw = tuple(m.shape)
            if term.kind == "conv":
                cout, cin, kh, kw = term.weight.shape
                out_hw = (conv_output_size(cin_hw[-2], kh, term.stride[0], term.padding[0]),
                          conv_output_size(cin_hw[-1], kw, term.stride[1], term.padding[1]))
                macs = conv_macs(cin, cout, (kh, kw), out_hw)
                sops = 0.0 if analog else conv_sops(m, cout, (kh, kw), term.stride, term.padding) / images
            elif term.kind == "linear":
                fout, fin = term.weight.shape
                macs = linear_macs(fin, fout)
                sops = 0.0 if analog else linear_sops(float(m.sum()), fout) / images
            else:  # a scaled shortcut into the merge neuron: one add per spike
                macs = 0.0
                sops = float(m.sum()) / images
            rows.append({"layer": layer.name, "kind": term.kind or "shortcut", "analog": analog,
                         "sops": sops, "macs": macs})
    for term in snn.output:
        m = maps[term.source].to(torch.float64)
        for op in term.pre:
            m = _map_through(op, m)
        fout, fin = term.weight.shape if term.kind == "linear" else (0, 0)
        rows.append({"layer": "output", "kind": term.kind or "shortcut", "analog": False,
                     "sops": linear_sops(float(m.sum()), fout) / images if term.kind == "linear" else float(m.sum()) / images,
                     "macs": linear_macs(fin, fout) if term.kind == "linear" else 0.0})
    return rows


def cost_from_maps(snn, maps: dict[int, torch.Tensor], images: int, in_shape: Sequence[int], timesteps: int,
                   energy: EnergyModel | None = None) -> dict:
    """Synaptic operations and energy per image from spike-count maps of a run.

    Args:
        snn: the :class:`sresnet.SpikingNetwork` that produced the maps.
        maps: layer index -> spike counts summed over time and images (the ``"maps"`` of a
            ``record_maps=True`` run, or their sum over several batches).
        images: how many images the maps cover; in_shape: the image shape ``[C, H, W]``.
        timesteps: T of the run; energy: the :class:`EnergyModel` (default 45 nm figures).

    Returns:
        the dict of :func:`network_cost`.
    """
    energy = energy or EnergyModel()
    rows = layer_costs(snn, maps, images, in_shape)
    sops = sum(r["sops"] for r in rows)
    analog = sum(r["macs"] for r in rows if r["analog"])
    macs = sum(r["macs"] for r in rows)
    e_snn, e_ann = energy.snn(sops, analog), energy.ann(macs)
    return {
        "sops_per_image": sops,
        "analog_macs_per_image": analog,
        "ann_macs_per_image": macs,
        "snn_energy_j_per_image": e_snn,
        "ann_energy_j_per_image": e_ann,
        "energy_ratio": e_ann / e_snn if e_snn else float("inf"),
        "energy_model": f"AC {energy.e_ac * 1e12:g} pJ, MAC {energy.e_mac * 1e12:g} pJ (Horowitz 2014, 45 nm)",
        "per_layer": rows,
        "timesteps": int(timesteps),
        "images": int(images),
    }


def network_cost(snn, images: torch.Tensor, timesteps: int, *, backend: str | None = None,
                 energy: EnergyModel | None = None) -> dict:
    """Simulate ``images`` for ``timesteps`` steps and count synaptic operations and energy.

    SNN: every spike times its real fan-out (:func:`conv_sops`), plus the MACs of layers fed
    by the analog image, which run once per image (not T times). ANN: MACs of every conv and
    linear layer. Energy per :class:`EnergyModel`. To get the cost of an accuracy run
    without simulating twice, use ``sresnet.evaluate_snn(..., cost=True)``.

    Returns:
        dict with sops_per_image, analog_macs_per_image, ann_macs_per_image,
        snn_energy_j_per_image, ann_energy_j_per_image, energy_ratio (ANN / SNN),
        energy_model, per_layer (list of dicts), timesteps, images.
    """
    _, stats = snn(images, timesteps=timesteps, backend=backend, return_stats=True, record_maps=True)
    return cost_from_maps(snn, stats["maps"], images.shape[0], images.shape[1:], timesteps, energy)
