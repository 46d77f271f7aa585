"""``count_spikes``: how many spikes a spike tensor holds."""

from __future__ import annotations

import numpy as np
import torch

from . import _checks


def count_spikes(s: torch.Tensor) -> int:
    """Number of spikes in a spike tensor: its nonzero entries.

    Args:
        s: spikes of any shape (``[T, B, C, H, W]`` from the ops here), any dtype, 0/1 values
            (for burst counts or signed spikes, sum ``s.abs()`` instead).

    Returns:
        the count, an int.

    A neuron output of the Numba spiking convolution (``spike_conv2d`` / ``spike_linear`` on
    CPU, gather kernel) was counted by the kernel as it wrote it: that count is returned
    without reading the tensor, as long as nothing changed it since (same checks as the reuse
    of its bits by the next conv: version counter, sampled values; see spike_conv/README.md).
    Otherwise numpy's count of a CPU tensor (about 3x torch's), torch's on other devices.

    Raises:
        TypeError: ``s`` is not a tensor.
    """
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"s must be a torch.Tensor of spikes, got {type(s).__name__}")
    s = s.detach()
    if s.device.type != "cpu":
        return int(torch.count_nonzero(s))
    if s.dim() == 5:
        from .ops.spike_conv.numba_gather import spike_count

        known = spike_count(s)
        if known is not None:
            return known
    _checks.kept_guard(s)  # a view of an output that holds its spikes only as bits: written first
    if s.dtype in (torch.bfloat16, torch.float16):
        return int(torch.count_nonzero(s))
    return int(np.count_nonzero(s.numpy()))
