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
