"""Low-latency calibration: a causal per-step, per-channel bias schedule (issue 12).

A converted IF neuron starts silent: deep layers wait for spikes from the layers below, and
the rate over a short run lags the ANN activation it stands for. A constant bias tuned at
one T cannot fix a transient. Here every neuron layer gets a bias ``b_t`` per step t and
channel c (in the spirit of FTBC, Wu et al., ECCV 2024, but solved exactly step by step):

1. Run the ANN on the calibration images: per layer and channel the target rate
   ``r_c`` = mean of clip(a/λ, 0, 1) over images and positions.
2. Layer by layer, in network order, on the spikes of the already calibrated layers below,
   simulate the layer step by step from v0 = θ/2. At step t let ``u = v + x_t`` (membrane
   plus input current of every neuron of channel c over all calibration images and
   positions, M values). The count the channel should have emitted by step t is
   ``t · r_c · M``; ``k`` = that minus what it emitted so far (rounded, clipped to [0, M]).
   ``b_t`` is the smallest-magnitude bias with which exactly the k largest ``u`` reach the
   threshold (:func:`step_bias`). Then ``v ← v + x_t + b_t``, spike, subtract.
3. Simulate the layer with its schedule and move on.

Matching the cumulative count (not the rate of each step) removes the start-up deficit at
every prefix: the channel has emitted its target count by each step t, so a run of any
T' <= H reads a near-stationary rate. ``b_t`` depends only on steps <= t, hence a schedule
calibrated for horizon H, cut at T', is the one calibrated for T' alone (tested bit for bit):
one network serves every T' <= H. The stored schedule has H + 1 rows: the last, the mean of
the last ``max(1, H // 4)`` calibrated rows, serves every step past H (the executor repeats
the last row), where the start-up transient has passed and the mean smooths the
step-to-step jitter of the count matching.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from tqdm import tqdm

from ..executor import Executor
from . import weights
from .compensate import targets_and_share

DEFAULT_HORIZON = 64
# measured best fraction of T skipped by the readout with the schedule (docs/accuracy.md)
DEFAULT_READOUT_DELAY = 0.5


def _keys(u: torch.Tensor) -> torch.Tensor:
    """int64 keys in the order of the float32 values ``u`` (IEEE bits, negatives mirrored)."""
    i = u.contiguous().view(torch.int32).long()
    return torch.where(i < 0, -(i & 0x7FFFFFFF) - 1, i)


def _values(key: torch.Tensor) -> torch.Tensor:
    """The float32 values of :func:`_keys`."""
    i = torch.where(key < 0, (-key - 1) - 2 ** 31, key)
    return i.to(torch.int32).view(torch.float32)


# pivots per searched position and round of :func:`kth_largest`: each round narrows the key
# interval (PIVOTS + 1)-fold, so the 2**32 keys of float32 take 4 rounds (one all-reduce each)
PIVOTS = 255
_KEY_LO = -0x7F800000 - 1  # the key of -inf
_KEY_HI = 0x7F800000  # the key of +inf


def kth_largest(u: torch.Tensor, k: torch.Tensor, shard) -> torch.Tensor:
    """The k-th largest values per row of the union of every rank's ``u``, exactly.

    Args:
        u: this rank's values ``[R, m]`` float32 (m >= 1; no NaN).
        k: ``[R]`` or ``[R, J]`` int64 in [1, M], M the total row length over the ranks.
        shard: a :class:`sresnet.distributed.Shard`.

    Returns:
        float32 shaped like ``k``: the values a descending sort of the whole rows would put
        at positions k (-0.0 is returned as +0.0, an equal value). Found by a
        (PIVOTS+1)-ary search on the values' ordered bit patterns: per round, the counts
        ``#(u >= x)`` at PIVOTS evenly spaced keys x of each interval, summed over the ranks
        by one integer all-reduce (4 rounds for any data, the same on every rank; no
        values travel).
    """
    R = u.shape[0]
    kk = k.view(R, -1)
    J = kk.shape[1]
    srt = (u + 0.0).sort(dim=1).values  # + 0.0 turns -0.0 into +0.0: keys ascend with the floats
    m = srt.shape[1]
    lo = torch.full((R, J), _KEY_LO, dtype=torch.int64)  # #(u >= -inf) = M >= k
    hi = torch.full((R, J), _KEY_HI, dtype=torch.int64)
    steps = torch.arange(1, PIVOTS + 1, dtype=torch.int64)
    # invariant: the answer (the largest key x with #(u >= x) >= k) lies in [lo, hi]
    while bool((lo < hi).any()):
        width = hi - lo
        # PIVOTS keys in (lo, hi], evenly spaced (repeats where the interval is narrow)
        piv = torch.minimum(lo[..., None] + (width[..., None] * steps + PIVOTS) // (PIVOTS + 1), hi[..., None])
        below = torch.searchsorted(srt, _values(piv).view(R, J * PIVOTS)).view(R, J, PIVOTS)
        ok = shard.reduce(m - below) >= kk[..., None]  # True then False along the pivots
        n_ok = ok.sum(-1, keepdim=True)
        top = piv.gather(-1, (n_ok - 1).clamp_min(0)).squeeze(-1)
        nxt = piv.gather(-1, n_ok.clamp_max(PIVOTS - 1)).squeeze(-1)
        n_ok = n_ok.squeeze(-1)
        # the answer is >= the last pivot that still counts k and < the first that does not
        lo = torch.where(n_ok > 0, top, lo)
        hi = torch.maximum(torch.where(n_ok < PIVOTS, nxt - 1, hi), lo)
    return _values(lo).view(k.shape)


@numba.njit(parallel=True, cache=True)
def _kth_pair(u, k, kth, nxt):  # pragma: no cover - compiled
    """Per row c of ``u`` [C, M]: the k[c]-th and (k[c]+1)-th largest values (+inf for
    k = 0, -inf past M), by one O(M) selection (a sort is O(M log M) and was three quarters
    of the calibration time)."""
    C, M = u.shape
    for c in numba.prange(C):
        kc = k[c]
        if kc == 0:
            kth[c] = np.inf
            nxt[c] = u[c].max()
        elif kc == M:
            kth[c] = u[c].min()
            nxt[c] = -np.inf
        else:
            # a copy with the (M - kc)-th smallest in place and only smaller-or-equal values before it
            row = np.partition(u[c], M - kc)
            kth[c] = row[M - kc]
            nxt[c] = row[: M - kc].max()


def _order_stats(u: torch.Tensor, k: torch.Tensor, shard, M: int) -> tuple:
    """The k-th and (k+1)-th largest u per channel (+inf for k = 0, -inf past M, the number
    of values per channel over all ranks)."""
    C = u.shape[0]
    if shard is None or not shard.active:
        kth, nxt = np.empty(C, np.float32), np.empty(C, np.float32)
        _kth_pair(np.ascontiguousarray(u.numpy()), k.numpy(), kth, nxt)
        return torch.from_numpy(kth), torch.from_numpy(nxt)
    both = torch.stack([k, k + 1], 1)  # [C, 2]
    vals = kth_largest(u, both.clamp(1, M), shard)
    vals = torch.where(both < 1, float("inf"), torch.where(both > M, -float("inf"), vals))
    return vals[:, 0], vals[:, 1]


def step_bias(u: torch.Tensor, k: torch.Tensor, shard=None, total: int | None = None) -> torch.Tensor:
    """The smallest-magnitude bias per channel with which exactly ``k`` values reach 1.

    Args:
        u: membranes before the bias ``[C, M]`` float32 (M neurons per channel).
        k: spikes wanted per channel ``[C]`` int64 in [0, M].
        shard: a :class:`sresnet.distributed.Shard` whose ranks each hold a share of the M
            neurons (``k`` counts over all of them); every rank gets the same ``b``, the one
            one process computes from the whole ``u``.
        total: with ``shard``, M over all ranks when the caller knows it (saves an all-reduce).

    Returns:
        ``b`` ``[C]`` float32: ``u + b >= 1`` holds for the k largest u of each channel and for
        no other value (ties with the k-th largest also fire; the threshold tie rule is ≥).
        The admissible interval is ``[1 - u_(k), 1 - u_(k+1))`` (u sorted in decreasing order,
        u_(0) = +inf, u_(M+1) = -inf); ``b`` is its point nearest 0.
    """
    if shard is None or not shard.active:
        M = u.shape[1]
    else:
        M = total if total is not None else int(shard.reduce(torch.tensor(u.shape[1])))
    kth, nxt = _order_stats(u, k, shard, M)
    lo, hi = 1.0 - kth, 1.0 - nxt
    # 1 - u is rounded: step to the neighbouring floats until u_(k) + lo reaches the threshold
    # and u_(k+1) + hi stays under it in float32
    for _ in range(4):
        lo = torch.where(kth + lo < 1.0, torch.nextafter(lo, torch.full_like(lo, float("inf"))), lo)
        hi = torch.where(nxt + hi >= 1.0, torch.nextafter(hi, torch.full_like(hi, -float("inf"))), hi)
    return torch.maximum(torch.minimum(torch.zeros_like(lo), hi), lo)


def _layer_inputs(snn, i: int, outs: list, H: int, chunk: int, stem) -> torch.Tensor:
    """Input current of layer i over all H steps ``[H, B, C, ...]`` (chunked like a run)."""
    ex = Executor(snn.network)
    x = None
    for t0 in range(0, H, chunk):
        steps = min(chunk, H - t0)
        view = [o[t0 : t0 + steps] if o is not None else None for o in outs]
        c = ex.layer_current(snn.layers[i], view, steps, stem)
        if x is None:
            x = torch.empty((H,) + tuple(c.shape[1:]), dtype=torch.float32)
        x[t0 : t0 + steps] = c
    return x


def _run(snn, i: int, outs: list, H: int, chunk: int, stem) -> torch.Tensor:
    """Spikes of layer i over H steps ``[H, B, ...]`` uint8 with its schedule, as a run computes them."""
    out, state = None, None
    for t0 in range(0, H, chunk):
        steps = min(chunk, H - t0)
        view = [o[t0 : t0 + steps] if o is not None else None for o in outs]
        s, state = snn.step_layer(i, view, steps, state, stem, None, t0)
        if out is None:
            out = torch.empty((H,) + tuple(s.shape[1:]), dtype=s.dtype)
        out[t0 : t0 + steps] = s
    return out


def schedule_for(x: torch.Tensor, target: torch.Tensor, shard=None) -> torch.Tensor:
    """The cumulative-count bias schedule of one layer (step 2 of the module docstring).

    Args:
        x: input current ``[H, B, C, ...]`` float32 of the layer without schedule.
        target: target rate per channel ``[C]`` (mean clip(a/λ, 0, 1) of the ANN).
        shard: a :class:`sresnet.distributed.Shard` whose ranks each pass the current of a
            share of the images: counts are summed over the ranks and the order statistics
            taken over the union (:func:`kth_largest`), so every rank gets the schedule one
            process computes from all images.

    Returns:
        ``[H, C]`` float32; row t-1 is the bias of step t.
    """
    H, B, C = x.shape[:3]
    xs = x.reshape(H, B, C, -1).permute(0, 2, 1, 3).reshape(H, C, -1)  # [H, C, M]
    m = xs.shape[2]
    M = int(shard.reduce(torch.tensor(m, dtype=torch.int64))) if shard is not None else m
    v = torch.full((C, m), 0.5)
    emitted = torch.zeros(C, dtype=torch.float64)
    wanted = target.double().clamp(0, 1) * M
    b = torch.empty(H, C)
    for t in range(H):
        k = ((t + 1) * wanted - emitted).round().clamp(0, M).long()
        bt = step_bias(v + xs[t], k, shard, M)
        b[t] = bt
        # as a run adds them: the bias joins the current before the membrane (the count kept
        # here can still differ from the run's by near-threshold rounding)
        v = v + (xs[t] + bt[:, None])
        s = v >= 1.0
        v = v - s.float()
        n_spk = s.sum(1)
        emitted += (shard.reduce(n_spk) if shard is not None else n_spk).double()
    return b


def calibrate_schedule(snn, program, scales: dict, images: torch.Tensor, horizon: int, *, batch_size: int = 128,
                       progress: bool = False, shard=None, weight_ridge: float | None = None) -> dict:
    """Give every neuron layer of ``snn`` a bias schedule ``[horizon + 1, C]`` (in place).

    Args:
        snn: a :class:`sresnet.simulate.SpikingNetwork` fresh from normalization.
        program: its analyzed ANN (for the targets).
        scales: λ per site (from observe).
        images: calibration images ``[N, C, H, W]`` (training data, never test images).
        horizon: H, the longest run the schedule is calibrated for (>= 1).
        batch_size: images per ANN forward for the targets.
        progress: a tqdm bar over the layers.
        shard: a :class:`sresnet.distributed.Shard`: each rank simulates a contiguous share of
            the images; the targets, counts and order statistics are merged exactly, so the
            schedule is bit-identical to one process's, given per-image currents that do not
            depend on the other images of a call: true of spikekernels' CPU kernels (the
            executor pins one conv path per input kind, see
            :meth:`sresnet.executor.Executor.input_path`; the dense conv runs a share of one
            image as two, whose rounding torch's conv gives any larger batch).
        weight_ridge: opt-in layer-wise weight calibration: before its schedule, each layer's
            main conv/linear weight is refitted to the spike rates of the calibrated layers
            below (:mod:`sresnet.convert.weights`, ridge ``weight_ridge``). The refit uses the
            rates over the whole horizon, so a network calibrated with it for H is no longer
            the one calibrated for each T' < H alone (the schedule alone is).

    Returns:
        ``{layer name: schedule [H + 1, C]}``, also stored as each layer's
        ``neuron.bias_schedule`` (row H: the steady row for later steps).

    Raises:
        ValueError: a layer's neuron is not the plain IF neuron (θ = 1, v0 = θ/2, subtract
            reset) the count matching assumes; fewer images than ranks.
    """
    n = images.shape[0]
    targets, images = targets_and_share(program, scales, images, batch_size, shard)
    # the chunk one process would use for all n images: the same steps go together on every rank
    chunk = min(horizon, snn.default_chunk(n, tuple(images.shape[2:])))
    stems = snn.stem_currents(images)
    # the ANN's activations over λ in the converted description, before any refit
    acts = Executor(snn.network).analog_layers(images) if weight_ridge is not None else None
    outs: list = [None] * len(snn.layers)
    applied = {}
    refits = {}
    bar = tqdm(snn.layers, desc=f"bias schedule (H={horizon})", unit="layer", disable=not progress, leave=False)
    for i, layer in enumerate(bar):
        if layer.kind != "maxpool":
            nrn = layer.neuron
            nrn.bias_schedule = None
            if not nrn.default:
                raise ValueError(f"layer {layer.name!r}: the bias schedule is calibrated for the plain IF neuron "
                                 "(threshold 1, v0 = θ/2, subtract reset); this one differs")
            if weight_ridge is not None and weights.calibratable(layer):
                src = layer.main.source
                refits[layer.name] = weights.refit(layer, outs[src], acts[src], horizon, weight_ridge, shard)
            x = _layer_inputs(snn, i, outs, horizon, chunk, stems.get(i))
            b = schedule_for(x, targets[layer.name], shard)
            steady = b[horizon - max(1, horizon // 4) :].mean(0, keepdim=True)
            nrn.bias_schedule = torch.cat([b, steady])
            applied[layer.name] = nrn.bias_schedule
            del x
        outs[i] = _run(snn, i, outs, horizon, chunk, stems.get(i))
        for j in snn._free[i]:
            outs[j] = None
            if acts is not None:
                acts[j] = None
    if weight_ridge is not None:
        snn.info["weight_refits"] = refits
    return applied
