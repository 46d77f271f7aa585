"""Numba CPU kernel of the signed IF scan with memory: neuron blocks across threads, T inside.

Same layout as the IF scan's kernel (``ops/if_scan/numba.py``), with the int32 net spike
count m kept beside the membrane; no fastmath, so it matches the reference bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ..if_scan.numba import as_numpy_f32

BLOCK = 2048


@numba.njit(parallel=True, cache=True, fastmath=False)
def _signed_scan_kernel(x, T, thr, inner, v, m, out):
    n = v.shape[0]
    const = x.shape[0] == 1
    n_chan = thr.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(nblk):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        th = np.empty(hi - lo, np.float32)
        for i in range(lo, hi):
            th[i - lo] = thr[(i // inner) % n_chan]
        vb = v[lo:hi]
        mb = m[lo:hi]
        for t in range(T):
            xt = x[0, lo:hi] if const else x[t, lo:hi]
            ot = out[t, lo:hi]
            for i in range(hi - lo):
                vi = vb[i] + xt[i]
                if vi >= th[i]:
                    vi = vi - th[i]
                    mb[i] += 1
                    ot[i] = 1
                elif vi <= -th[i] and mb[i] > 0:
                    vi = vi + th[i]
                    mb[i] -= 1
                    ot[i] = -1
                else:
                    ot[i] = 0
                vb[i] = vi


def signed_scan(x, T: int, thr, inner: int, v, m, out) -> None:
    # float32 and int8 spikes are written in place; other dtypes through an int8 staging buffer
    stage = None if out.dtype in (torch.float32, torch.int8) else torch.empty(out.shape, dtype=torch.int8)
    buf = (out if stage is None else stage).numpy()
    _signed_scan_kernel(as_numpy_f32(x), T, thr.numpy(), inner, v.numpy(), m.numpy(), buf)
    if stage is not None:
        out.copy_(stage)
