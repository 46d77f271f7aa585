"""Numba CPU kernel of the burst IF scan: neurons in blocks across threads, time loop inside.

Same layout as the IF scan's kernel (``ops/if_scan/numba.py``); compiled without fastmath so
the float32 operations match the reference bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

from ..if_scan.numba import as_numpy_f32, spike_buffer

BLOCK = 2048


@numba.njit(parallel=True, cache=True, fastmath=False)
def _burst_scan_kernel(x, T, thr, inner, v, out, k):
    n = v.shape[0]
    const = x.shape[0] == 1
    n_chan = thr.shape[0]
    one = np.float32(1.0)
    nblk = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(nblk):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        th = np.empty(hi - lo, np.float32)
        for i in range(lo, hi):
            th[i - lo] = thr[(i // inner) % n_chan]
        vb = v[lo:hi]
        for t in range(T):
            xt = x[0, lo:hi] if const else x[t, lo:hi]
            ot = out[t, lo:hi]
            for i in range(hi - lo):
                vi = vb[i] + xt[i]
                c = np.float32(0.0)
                for j in range(1, k + 1):
                    # float32 * float32 keeps j·θ in float32, as the reference
                    if vi >= np.float32(j) * th[i]:
                        c += one
                    else:
                        break
                ot[i] = c
                vb[i] = vi - th[i] * c


def burst_scan(x, T: int, thr, inner: int, v, out, k: int) -> None:
    buf, stage = spike_buffer(out)
    _burst_scan_kernel(as_numpy_f32(x), T, thr.numpy(), inner, v.numpy(), buf, k)
    if stage is not None:
        out.copy_(stage)
