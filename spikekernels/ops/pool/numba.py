"""Numba CPU kernels of spiking pooling: one thread per feature-map plane, windows inside.

avg: each plane's outputs are window sums in row-major window order from 0, divided by
kh*kw (a true division, not a multiply by the reciprocal, to match the reference bit for bit).

max: a thread owns whole planes ``[H, W]`` of one (sample, channel) and runs all T steps
on them, so the running counts are updated before any window of the step reads them
and no two threads touch the same count.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ..if_scan.numba import as_numpy_f32


@numba.njit(parallel=True, cache=True)
def _avg_pool_kernel(s, out, kh, kw, sh, sw, ph, pw):
    P, H, W = s.shape
    ho, wo = out.shape[1], out.shape[2]
    div = np.float32(kh * kw)
    for p in numba.prange(P):
        for i in range(ho):
            r0 = i * sh - ph
            for j in range(wo):
                c0 = j * sw - pw
                acc = np.float32(0.0)
                for di in range(kh):
                    r = r0 + di
                    if r < 0 or r >= H:
                        continue
                    for dj in range(kw):
                        c = c0 + dj
                        if c >= 0 and c < W:
                            acc += np.float32(s[p, r, c])
                out[p, i, j] = acc / div


@numba.njit(parallel=True, cache=True)
def _max_pool_kernel(s, count, out, kh, kw, sh, sw, ph, pw):
    T, P, H, W = s.shape
    ho, wo = out.shape[2], out.shape[3]
    for p in numba.prange(P):
        cnt = count[p]
        for t in range(T):
            st = s[t, p]
            for r in range(H):
                for c in range(W):
                    cnt[r, c] += np.float32(st[r, c])
            ot = out[t, p]
            for i in range(ho):
                r0 = i * sh - ph
                for j in range(wo):
                    c0 = j * sw - pw
                    best = -np.inf
                    br = 0
                    bc = 0
                    for di in range(kh):
                        r = r0 + di
                        if r < 0 or r >= H:
                            continue
                        for dj in range(kw):
                            c = c0 + dj
                            # strict '>' keeps the first of equal counts
                            if c >= 0 and c < W and cnt[r, c] > best:
                                best = cnt[r, c]
                                br = r
                                bc = c
                    ot[i, j] = st[br, bc]


def _in(s: torch.Tensor) -> np.ndarray:
    return s.contiguous().numpy() if s.dtype == torch.uint8 else as_numpy_f32(s)


def avg_pool(s, out, geom) -> None:
    _avg_pool_kernel(_in(s), out.numpy(), *geom)


def max_pool(s, count, out, geom) -> None:
    direct = out.dtype in (torch.float32, torch.uint8)
    buf = out if direct else torch.empty(out.shape, dtype=torch.float32)
    _max_pool_kernel(_in(s), count.numpy(), buf.numpy(), *geom)
    if not direct:
        out.copy_(buf)
