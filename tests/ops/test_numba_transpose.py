"""The shuffle network of numba_transpose (spikes channels-last -> channel rows)."""

import numba
import numpy as np
import pytest

from spikekernels.ops.spike_conv import numba_rows, numba_transpose


@pytest.mark.parametrize("ct", numba_transpose.WIDTHS)
def test_plan_is_the_transpose(ct):
    expected = np.array([[p * ct + c for p in range(64)] for c in range(ct)])
    assert np.array_equal(numba_transpose.plan_check(ct), expected)
    stages, _ = numba_transpose._plan(ct)
    assert len(stages) == ct.bit_length() - 1 and all(len(ops) == ct for ops in stages)


@numba.njit
def _out(spw, ct, nc, P, ot, ow, c0, spread):
    numba_rows._spikes_out(spw, ct, nc, P, ot, ow, c0, spread, numba_rows.OUT_WORDS)


@pytest.mark.parametrize("ct", numba_transpose.WIDTHS)
@pytest.mark.parametrize("P", [64, 192, 1024, 72])
def test_spikes_out_rows(ct, P):
    """Rows c0 .. c0+nc of [Cout, P] from channels-last bytes, the other rows untouched (P a
    multiple of 64: the shuffles; 72: the bit-matrix transpose)."""
    rng = np.random.default_rng(ct * P)
    nc, c0 = ct - 3, 5
    sp = (rng.random(P * ct) < 0.3).astype(np.uint8)
    ot = np.full((c0 + ct + 2, P), 9, np.uint8)
    _out(sp.view(np.uint64), ct, nc, P, ot, ot.view(np.uint64), c0, numba_rows._SPREAD)
    want = np.full_like(ot, 9)
    want[c0:c0 + nc] = sp.reshape(P, ct).T[:nc]
    assert np.array_equal(ot, want)
