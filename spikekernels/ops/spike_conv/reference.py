"""Pure-PyTorch spiking convolution: ``torch.nn.functional.conv2d`` then the IF scan.

Contract shared by every backend (``op.py`` prepares the arguments):

- ``s``: input ``[T, B, Cin, H, W]`` contiguous, uint8 (0/1 spikes) or float32;
- ``weight``: float32 ``[Cout, Cin, kh, kw]`` contiguous; ``bias``: float32 ``[Cout]``;
- ``stride``, ``padding``: pairs of ints;
- ``thr``: float32 ``[Cout]`` or ``[1]``;
- ``v``: float32 ``[B * Cout * H' * W']`` membrane, read as the start state and overwritten
  with the final one (untouched when ``neuron`` is False);
- ``out``: ``[T, B, Cout, H', W']`` spikes (float, uint8 or bool), or float32 currents when
  ``neuron`` is False; fully overwritten;
- ``residual``: None, or ``[Tr, B * Cout * H' * W']`` contiguous (uint8 or float32) with
  Tr in {1, T} (1: constant over T); ``res_scale``: float32 ``[Cout]`` or ``[1]``.

The neuron integrates ``x_t = conv(s_t) + bias + res_scale * residual_t``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..if_scan.reference import if_scan


def currents(s, weight, bias, stride, padding, residual, res_scale) -> torch.Tensor:
    """The float32 input current ``[T, B, Cout, H', W']`` of the neurons, computed densely."""
    T, B = s.shape[:2]
    x = F.conv2d(s.flatten(0, 1).to(torch.float32), weight, bias, stride=stride, padding=padding)
    x = x.view((T, B) + x.shape[1:])
    if residual is not None:
        scale = res_scale.view(-1, 1, 1) if res_scale.numel() > 1 else res_scale
        x = x + scale * residual.to(torch.float32).view((residual.shape[0], B) + x.shape[2:])
    return x


def spike_conv2d(s, weight, bias, stride, padding, thr, v, out, reset_zero: bool, v_reset: float,
                 residual, res_scale, neuron: bool) -> None:
    x = currents(s, weight, bias, stride, padding, residual, res_scale)
    T = s.shape[0]
    if not neuron:
        out.copy_(x)
        return
    inner = x.shape[3] * x.shape[4]
    if_scan(x.reshape(T, -1), T, thr, inner, v, out.view(T, -1), reset_zero, v_reset)
