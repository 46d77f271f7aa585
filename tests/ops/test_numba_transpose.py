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


@pytest.mark.parametrize("P, ct", [b for b in numba_transpose.BLOCKS if b[0] > 1])
def test_block_plan_is_the_transpose(P, ct):
    """A block of P < 64 pixels: each 64-byte output vector holds 64 / P whole channel rows."""
    flat = np.array([[p * ct + c for p in range(P)] for c in range(ct)]).reshape(-1, 64)
    assert np.array_equal(numba_transpose.plan_check(ct, P), flat)
    stages, _ = numba_transpose._plan(ct, P)
    n = P * ct // 64
    assert len(stages) == max(1, n.bit_length() - 1)


@numba.njit
def _block(src, dst, d0, P, ct):
    numba_transpose.block_rows(src, 0, dst, d0, P, ct)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("P, ct", numba_transpose.BLOCKS)
def test_block_rows(P, ct, dtype):
    """block_rows writes exactly the [ct, P] block at d0 (bytes or floats), nothing around it."""
    rng = np.random.default_rng(P * ct)
    for d0 in (0, 3):
        # d0 = 0 on a 64-byte aligned buffer: the non-temporal stores; 3: the unaligned ones
        sp = (rng.random(P * ct) < 0.4).astype(np.uint8)
        dst = numba_rows.aligned_zeros((P * ct + 10,), dtype)
        dst[:] = 7
        _block(sp.view(np.uint64), dst, d0, P, ct)
        want = np.full_like(dst, 7)
        want[d0:d0 + P * ct] = sp.reshape(P, ct).T.reshape(-1)
        assert np.array_equal(dst, want), d0
    assert numba_transpose.block_fits(P, ct)


def test_block_fits_only_blocks():
    fits = {(P, ct) for P in range(1, 70) for ct in range(1, 70) if numba_transpose.block_fits(P, ct)}
    assert fits == set(numba_transpose.BLOCKS)


@numba.njit
def _out(spw, ct, nc, P, ot, c0, spread, mode):
    # the block's offset split between o0 (elements) and c0 (channels): both are added
    numba_rows._spikes_out(spw, ct, nc, P, ot.reshape(-1), c0 // 2 * P, c0 - c0 // 2, spread, mode)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("ct", numba_transpose.WIDTHS + (24,))
@pytest.mark.parametrize("P", [64, 192, 1024, 72, 1, 2, 3, 4, 8, 12, 16, 32, 49, 196])
def test_spikes_out_rows(ct, P, dtype):
    """Rows c0 .. c0+nc of [Cout, P] from channels-last bytes, the other rows untouched (uint8,
    P a multiple of 64: the shuffles; P = 1: the channel-row copy; others: the bit-matrix
    transpose, whole 8-pixel words and a tail of 1-7; float32: rows from the table), with a
    tile that is full, one short of a whole 8-channel group and one past it."""
    rng = np.random.default_rng(ct * P)
    mode = numba_rows.OUT_WORDS if dtype == np.uint8 else numba_rows.OUT_F32_ROWS
    for nc, c0 in ((ct, 0), (ct - 3, 5), (ct - 8, 3), (1, 7)):
        sp = (rng.random(P * ct) < 0.3).astype(np.uint8)
        ot = np.full((c0 + ct + 2, P), 9, dtype)
        _out(sp.view(np.uint64), ct, nc, P, ot, c0, numba_rows._SPREAD, mode)
        want = np.full_like(ot, 9)
        want[c0:c0 + nc] = sp.reshape(P, ct).T[:nc]
        assert np.array_equal(ot, want), (nc, c0)
