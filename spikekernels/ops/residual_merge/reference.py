"""Pure-PyTorch residual merge neuron: the ground truth the kernels are tested against.

Contract shared by every backend (the op in ``op.py`` prepares the arguments):

- ``x``: branch currents ``[Tx, N]`` (any float dtype), Tx = T, or 1 when constant over T;
- ``y``: shortcut ``[Ty, N]`` (any float dtype, or uint8 spikes; bool arrives as uint8),
  Ty = T, or 1 when constant over T;
- ``T``: number of steps;
- ``thr``: float32 ``[C]``; neuron n has threshold ``thr[(n // inner) % C]``;
- ``scale``: float32 ``[Cs]`` with Cs = 1 or C, indexed like ``thr``;
- ``v``: float32 ``[N]`` membrane, read as the start state and overwritten with the final one;
- ``out``: spikes ``[T, N]`` (float, uint8 or bool), fully overwritten.

Every backend computes, in float32 and in this order: ``i = x + scale * y``, ``v = v + i``.
"""

from __future__ import annotations

import torch

from ..if_scan.reference import per_neuron


def residual_merge(x, y, T: int, thr, scale, inner: int, v, out, reset_zero: bool, v_reset: float) -> None:
    theta = per_neuron(thr, inner, v.numel())
    sc = per_neuron(scale, inner, v.numel())
    for t in range(T):
        xt = x[t if x.shape[0] > 1 else 0].to(torch.float32)
        yt = y[t if y.shape[0] > 1 else 0].to(torch.float32)
        current = xt + sc * yt
        v += current
        s = v >= theta
        if reset_zero:
            v.masked_fill_(s, v_reset)
        else:
            v -= torch.where(s, theta, torch.zeros_like(theta))
        out[t] = s
