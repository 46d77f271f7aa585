"""spikekernels._checks.donate: a start state given away is updated in place, with the same result."""

import pytest
import torch

import spikekernels as sk
from spikekernels import _checks


def _conv_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(5, 2, 8, 6, 6, generator=g) < 0.3).to(torch.uint8)
    w = torch.randn(8, 8, 3, 3, generator=g) * 0.3
    return s, w


def _ops():
    s, w = _conv_case()
    x = torch.rand(5, 2, 8, 6, 6, generator=torch.Generator().manual_seed(1))
    return {
        "spike_conv2d": lambda v0: sk.spike_conv2d(s, w, None, 1, 1, v0=v0, return_state=True),
        "if_scan": lambda v0: sk.if_scan(x, 0.7, v0, return_state=True),
        "burst_scan": lambda v0: sk.burst_scan(x, 0.5, v0, 3, return_state=True),
        "signed_scan": lambda v0: sk.signed_scan(x - 0.5, 0.5, v0, return_state=True),
    }


@pytest.mark.parametrize("op", ["spike_conv2d", "if_scan", "burst_scan", "signed_scan"])
def test_donated_state_is_updated_in_place_with_the_same_result(op):
    run = _ops()[op]
    _, state = run(None)
    # signed_scan's state is (membrane, net count): the membrane is what is given away
    v1 = state[0] if isinstance(state, tuple) else state
    keep = v1.clone()
    s_plain, st_plain = run(state)
    assert torch.equal(v1, keep)  # not given away: the caller's tensor is untouched
    with _checks.donate(v1):
        s_don, st_don = run(state)
    v_don, v_plain = (st_don[0], st_plain[0]) if isinstance(state, tuple) else (st_don, st_plain)
    assert v_don.data_ptr() == v1.data_ptr()
    assert torch.equal(s_don, s_plain) and torch.equal(v_don, v_plain)


def test_only_the_donated_tensor_of_the_exact_state_is_taken():
    run = _ops()["spike_conv2d"]
    _, v1 = run(None)
    other = v1.clone()
    with _checks.donate(other):  # another tensor is donated: v1 is copied as usual
        _, v = run(v1)
    assert v.data_ptr() != v1.data_ptr()
    half = v1.double()
    with _checks.donate(half):  # float64: converted, not taken
        _, v = run(half)
    assert v.data_ptr() != half.data_ptr() and v.dtype == torch.float32
    assert _checks.donated(None, (1,), torch.device("cpu")) is False


def test_a_donated_state_is_not_checked_for_nan_but_a_given_one_is():
    run = _ops()["if_scan"]
    _, v1 = run(None)
    v1[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="v0 contains NaN or Inf"):
        run(v1)
    with _checks.donate(v1):
        run(v1)  # an op's own state: no pass over it


def test_donated_pool_count():
    s = (torch.rand(4, 2, 3, 6, 6, generator=torch.Generator().manual_seed(2)) < 0.4).to(torch.uint8)
    _, c1 = sk.spike_max_pool2d(s, 2, 2, 0, return_state=True)
    keep = c1.clone()
    o_plain, c_plain = sk.spike_max_pool2d(s, 2, 2, 0, count=c1, return_state=True)
    assert torch.equal(c1, keep)
    with _checks.donate(c1):
        o_don, c_don = sk.spike_max_pool2d(s, 2, 2, 0, count=c1, return_state=True)
    assert c_don.data_ptr() == c1.data_ptr()
    assert torch.equal(o_don, o_plain) and torch.equal(c_don, c_plain)


def test_donate_nests_and_restores():
    a, b = torch.zeros(2), torch.zeros(2)
    with _checks.donate(a):
        with _checks.donate(b):
            assert _checks.donated(b, (2,), b.device) and not _checks.donated(a, (2,), a.device)
        assert _checks.donated(a, (2,), a.device)
    assert not _checks.donated(a, (2,), a.device)
