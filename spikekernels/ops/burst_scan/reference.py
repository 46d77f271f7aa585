"""Pure-PyTorch burst IF scan: the ground truth the kernels are tested against.

Contract shared by every backend (the op in ``op.py`` prepares the arguments):

- ``x``: currents ``[Tx, N]`` (any float dtype), Tx = T, or 1 for a current constant over T;
- ``T``: number of steps;
- ``thr``: float32 ``[C]``; neuron n has threshold ``thr[(n // inner) % C]``;
- ``v``: float32 ``[N]`` membrane, read as the start state and overwritten with the final one;
- ``out``: spike counts ``[T, N]`` (float or uint8), fully overwritten;
- ``k``: the most spikes per step (int >= 1).

Every backend does these float32 operations in this order, so results are bit-identical.
"""

from __future__ import annotations

import torch

from ..if_scan.reference import per_neuron


def burst_scan(x, T: int, thr, inner: int, v, out, k: int) -> None:
    theta = per_neuron(thr, inner, v.numel())
    # j·θ rounded to float32 once, as the kernels do
    levels = [theta * float(j) for j in range(1, k + 1)]
    for t in range(T):
        v += x[t if x.shape[0] > 1 else 0].to(torch.float32)
        count = torch.zeros_like(v)
        for level in levels:
            count += (v >= level).to(torch.float32)
        v -= theta * count
        out[t] = count
