"""Tasks of the multi-process tests (each runs identically in one process or on every rank)."""

import torch

import sresnet
from sresnet.convert.observe import observe
from sresnet.convert.fold import fold_batchnorm
from sresnet.convert.trace import analyze, trace
from sresnet.distributed import shard_from

from _sresnet_nets import make


def _calib(n: int, hw: int = 8):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(2))


def scales(kind: str, n: int, percentile, per_channel: bool, batch_size: int, max_values: int) -> dict:
    gm = trace(make(kind).eval())
    fold_batchnorm(gm)
    program = analyze(gm, _calib(2))
    return observe(program, _calib(n), percentile=percentile, per_channel=per_channel, batch_size=batch_size,
                   max_values=max_values, shard=shard_from())


def network(kind: str, n: int, **kw) -> dict:
    snn = sresnet.convert(make(kind), _calib(n), **kw)
    return snn.network.to_dict()


def evaluation(kind: str, n_calib: int, n_test: int, form: str, timesteps: list) -> dict:
    """evaluate_snn on every rank; the converted network is the same on every rank (one conversion)."""
    model = make(kind).eval()
    snn = sresnet.convert(model, _calib(n_calib), calib_timesteps=4)
    g = torch.Generator().manual_seed(7)
    images = torch.randn(n_test, 3, 8, 8, generator=g)
    labels = torch.randint(0, 5, (n_test,), generator=g)
    if form == "tensor":
        data, lab = images, labels
    elif form == "loader":
        ds = torch.utils.data.TensorDataset(images, labels)
        data, lab = torch.utils.data.DataLoader(ds, batch_size=3), None
    else:  # a plain iterable of batches
        data, lab = [(images[i : i + 4], labels[i : i + 4]) for i in range(0, n_test, 4)], None
    r = sresnet.evaluate_snn(model, snn, data, lab, timesteps, batch_size=4, cost=True)
    for k in ("images_per_second", "cost"):
        r.pop(k)
    return r


def kth(rows: int, n: int, seed: int) -> dict:
    """kth_largest over values split unevenly between the ranks (rank r holds a contiguous block)."""
    from sresnet.convert.lowlat import kth_largest

    shard = shard_from()
    u, k = kth_case(rows, n, seed)
    return {"kth": kth_largest(u[:, shard.block(n)], k, shard)}


def kth_case(rows: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(rows, n, generator=g)
    u[0, : n // 3] = 0.0  # ties, and -0.0 beside +0.0
    u[0, n // 3 : n // 2] = -0.0
    u[1] = u[1].round()  # many ties
    k = torch.randint(1, n + 1, (rows,), generator=g)
    k[-1] = n  # the smallest value
    return u, k
