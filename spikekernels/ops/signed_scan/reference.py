"""Pure-PyTorch signed IF scan with memory: the ground truth the kernels are tested against.

Contract shared by every backend (the op in ``op.py`` prepares the arguments):

- ``x``: currents ``[Tx, N]`` (any float dtype), Tx = T, or 1 for a current constant over T;
- ``T``: number of steps;
- ``thr``: float32 ``[C]``; neuron n has threshold ``thr[(n // inner) % C]``;
- ``v``: float32 ``[N]`` membrane, read as the start state and overwritten with the final one;
- ``m``: int32 ``[N]`` net spike count (>= 0), read and overwritten like ``v``;
- ``out``: spikes ``[T, N]`` of -1/0/+1 (float or int8), fully overwritten.

Every backend does these float32 operations in this order, so results are bit-identical.
"""

from __future__ import annotations

import torch

from ..if_scan.reference import per_neuron


def signed_scan(x, T: int, thr, inner: int, v, m, out) -> None:
    theta = per_neuron(thr, inner, v.numel())
    zero = torch.zeros_like(theta)
    for t in range(T):
        v += x[t if x.shape[0] > 1 else 0].to(torch.float32)
        pos = v >= theta
        neg = ~pos & (v <= -theta) & (m > 0)
        v -= torch.where(pos, theta, zero)
        v += torch.where(neg, theta, zero)
        step = pos.to(torch.int32) - neg.to(torch.int32)
        m += step
        out[t] = step
