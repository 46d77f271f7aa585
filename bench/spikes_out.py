"""The spike transpose of the Numba conv kernels alone: channels-last bytes -> channel rows.

``numba_rows._spikes_out`` (uint8 output) takes the vector-shuffle transpose of
``numba_transpose`` when the output map has a multiple of 64 pixels and the tile 8, 16, 32 or
64 channels, and the 8 x 8 bit-matrix transpose otherwise. This times both on one thread, per
spike slot (channel x pixel), on maps of 1024 pixels (shuffles) and 1016 (bit matrix: the
largest multiple of 8 below), checking the result against numpy first.

    PYTHONPATH=. NUMBA_NUM_THREADS=1 .venv/bin/python bench/spikes_out.py
"""

from __future__ import annotations

import statistics
import time

import numba
import numpy as np

from spikekernels.ops.spike_conv import numba_rows


@numba.njit
def _loop(n, spw, ct, P, ot, spread):
    for _ in range(n):
        numba_rows._spikes_out(spw, ct, ct, P, ot.reshape(-1), 0, 0, spread, numba_rows.OUT_WORDS)


def main() -> None:
    rng = np.random.default_rng(0)
    for ct in (8, 16, 32, 64):
        res = {}
        for P in (1024, 1016):
            sp = (rng.random(P * ct) < 0.1).astype(np.uint8)
            ot = np.zeros((ct, P), np.uint8)
            n = 2 * 10**7 // (P * ct)
            _loop(1, sp.view(np.uint64), ct, P, ot, numba_rows._SPREAD)
            assert np.array_equal(ot, sp.reshape(P, ct).T)
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                _loop(n, sp.view(np.uint64), ct, P, ot, numba_rows._SPREAD)
                times.append(time.perf_counter() - t0)
            res[P] = statistics.median(times) / (n * P * ct) * 1e9
        print(f"{ct:3d} channels: shuffles (1024 pixels) {res[1024]:.3f} ns per spike slot, "
              f"bit matrix (1016 pixels) {res[1016]:.3f} ns ({res[1016] / res[1024]:.1f}x)")


if __name__ == "__main__":
    main()
