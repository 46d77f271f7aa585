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
  Tr in {1, T} (1: constant over T); ``res_scale``: float32 ``[Cout]`` or ``[1]``;
- ``step_bias``: None, or float32 ``[T, Cout]`` contiguous: a bias per step and channel.

The neuron integrates ``x_t = (conv(s_t) + bias) + (step_bias[t] + res_scale * residual_t)``
in float32, in that order (terms not given are left out, not added as zeros); every backend
computes ``step_bias[t] + res_scale * residual_t`` first, so passing the per-step bias here is
bit-identical to folding it into a float residual with ``res_scale = 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..if_scan.reference import if_scan


def step_convs(s, weight, bias, stride, padding) -> torch.Tensor:
    """``F.conv2d`` of each step of ``s [T, B, Cin, H, W]`` on its own: ``[T * B, Cout, H', W']``
    float32.

    One call per step (a batch of B images), never the T·B folded batch: torch's conv rounds
    differently for different batch sizes (on CPU one image and two differ in the last bit
    for most inputs), so folding steps into the batch would make a call split into chunks of
    steps differ from one call over all of them, which every op promises not to. A batch of
    one image runs as two copies of it: torch 2.13's CPU conv rounded a batch of one
    differently from a batch of 32 on every ResNet-20 shape tried, while batches of 2-31
    matched it, so an image's current is then the same alone as in a batch.
    """
    T, B = s.shape[:2]

    def conv(x):
        if B == 1:
            return F.conv2d(x.expand(2, *x.shape[1:]), weight, bias, stride=stride, padding=padding)[:1]
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)

    steps = [conv(s[t].to(torch.float32)) for t in range(T)]
    return steps[0] if T == 1 else torch.cat(steps)


def currents(s, weight, bias, stride, padding, residual, res_scale, step_bias=None) -> torch.Tensor:
    """The float32 input current ``[T, B, Cout, H', W']`` of the neurons, computed densely."""
    T, B = s.shape[:2]
    x = step_convs(s, weight, bias, stride, padding)
    x = x.view((T, B) + x.shape[1:])
    extra = None if step_bias is None else step_bias.view(T, 1, -1, 1, 1)
    if residual is not None:
        scale = res_scale.view(-1, 1, 1) if res_scale.numel() > 1 else res_scale
        r = scale * residual.to(torch.float32).view((residual.shape[0], B) + x.shape[2:])
        extra = r if extra is None else extra + r
    return x if extra is None else x + extra


def spike_conv2d(s, weight, bias, stride, padding, thr, v, out, reset_zero: bool, v_reset: float,
                 residual, res_scale, neuron: bool, step_bias=None) -> None:
    x = currents(s, weight, bias, stride, padding, residual, res_scale, step_bias)
    T = s.shape[0]
    if not neuron:
        out.copy_(x)
        return
    inner = x.shape[3] * x.shape[4]
    if_scan(x.reshape(T, -1), T, thr, inner, v, out.view(T, -1), reset_zero, v_reset)
