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
