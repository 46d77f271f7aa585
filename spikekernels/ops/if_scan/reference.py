"""Pure-PyTorch integrate-and-fire scan: the ground truth the kernels are tested against.

Contract shared by every backend (the op in ``op.py`` prepares the arguments):

- ``x``: currents ``[Tx, N]`` (any float dtype), Tx = T, or 1 for a current constant over T;
- ``T``: number of steps;
- ``thr``: float32 ``[C]``; neuron n (flat index over all dims after T) has threshold
  ``thr[(n // inner) % C]``;
- ``v``: float32 ``[N]`` membrane, read as the start state and overwritten with the final one;
- ``out``: spikes ``[T, N]`` (float, uint8 or bool), fully overwritten;
- ``sb``: None, or a float32 ``[T, Cs]`` bias per step and channel added to the current:
  ``v = v + (x[t] + sb[t, (n // inner) % Cs])`` (those float32 operations in that order).
"""

from __future__ import annotations

import torch


def per_neuron(thr: torch.Tensor, inner: int, n: int) -> torch.Tensor:
    """Expand a [C] per-channel vector to [N] neurons (channel of neuron i is (i // inner) % C)."""
    idx = torch.arange(n, device=thr.device) // inner % thr.numel()
    return thr[idx]


def if_scan(x, T: int, thr, inner: int, v, out, reset_zero: bool, v_reset: float, sb=None) -> None:
    theta = per_neuron(thr, inner, v.numel())
    for t in range(T):
        xt = x[t if x.shape[0] > 1 else 0].to(torch.float32)
        v += xt if sb is None else xt + per_neuron(sb[t], inner, v.numel())
        s = v >= theta
        if reset_zero:
            v.masked_fill_(s, v_reset)
        else:
            v -= torch.where(s, theta, torch.zeros_like(theta))
        out[t] = s
