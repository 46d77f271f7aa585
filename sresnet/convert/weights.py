"""Layer-wise weight calibration (opt-in, issue 12): refit each layer's weights to its spiking input.

The bias schedule (:mod:`sresnet.convert.lowlat`) makes every channel emit its target count,
but a channel's spikes are not spread over its neurons, nor correlated between channels,
exactly as the ANN's activations are: the rates ``r`` a layer receives differ from the
normalized ANN activations ``a`` per neuron. Like SNN Calibration's advanced calibration
(Li et al., ICML 2021, section 4.2), which tunes each layer's weights so that its output on
the spiking input matches the ANN's, this refits the weights of the layer's main conv (or
linear) term, in closed form: with ``P_r`` / ``P_a`` the receptive fields (rows of the
unfolded input, ``[N, K]`` over the calibration images and output positions, ``K = Cin·kh·kw``)
of the spiking rates and of the ANN activations, and ``W`` the normalized weight ``[Cout, K]``,

    W' = argmin ||P_r W'ᵀ - P_a Wᵀ||² + ρ ||W' - W||²
       = (P_rᵀP_r + ρ I)⁻¹ (P_rᵀP_a + ρ I) Wᵀ,     ρ = ridge · mean diagonal of P_rᵀP_r

(ridge regression towards the converted weights: the fit has ``K`` unknowns per output
channel and a few thousand rows per layer, so ``ridge`` keeps ``W'`` close to ``W`` where
the rates say little). ``r`` is a neuron's spike count over the calibration horizon divided
by the horizon; ``a`` is the ANN's activation over λ, unclipped (:meth:`Executor.analog_layers`
of the converted description before any refit: the current the ANN sends). The layer's bias
and its shortcut are left as they are; the bias schedule of the layer is then calibrated on
the refitted weights.

Exactness across processes: per image, ``P_rᵀP_r`` and ``P_rᵀP_a`` are computed in float64
and rounded to multiples of 2**-30, then summed as int64 (exact in any order), so sharded
calibrations (several processes, :mod:`sresnet.distributed`) give the network one process
computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..executor import apply_op

# ridge of weight_calibration=True: of the two measured (1 and 0.1), the one with the larger gain
# on ResNet-20 at T = 8 (docs/accuracy.md, "Weight calibration (mechanism 5)")
DEFAULT_RIDGE = 1.0
# fixed-point step of the per-image Gram sums (entries are at most the output positions per
# image, so 2**30 leaves 2**20 images of room in int64)
_FIXED = 2.0 ** 30
# float64 bytes of per-image Gram matrices built at once
_CHUNK_BYTES = 2 ** 27


def check_ridge(weight_calibration) -> float | None:
    """The ridge strength of ``weight_calibration`` (False/None: off, True: :data:`DEFAULT_RIDGE`)."""
    if weight_calibration is None or weight_calibration is False:
        return None
    if weight_calibration is True:
        return DEFAULT_RIDGE
    w = weight_calibration
    if isinstance(w, (int, float)) and w == w and 0 < w < float("inf"):
        return float(w)
    raise ValueError(f"weight_calibration must be False/None (off), True (ridge {DEFAULT_RIDGE}) or a ridge "
                     f"strength > 0 (relative to the mean diagonal of the input Gram matrix), got {w!r}")


def calibratable(layer) -> bool:
    """Whether the layer has a conv/linear main term reading spikes (not the analog image)."""
    m = layer.main
    return layer.kind == "neuron" and m is not None and m.kind in ("conv", "linear") and m.source >= 0


def _rows(x: torch.Tensor, term) -> torch.Tensor:
    """Receptive fields ``[B, L, K]`` float64 of the term's (pre-op'd) input ``[1, B, ...]``."""
    for op in term.pre:
        x = apply_op(op, x)
    x = x[0].double()
    if term.kind == "linear":
        return x.reshape(x.shape[0], 1, -1)
    kh, kw = term.weight.shape[2:]
    cols = F.unfold(x, (kh, kw), padding=term.padding, stride=term.stride)  # [B, K, L]
    return cols.transpose(1, 2)


def _gram(pr: torch.Tensor, pa: torch.Tensor) -> tuple:
    """Σ over images of round(P_rᵀP_r · 2**30) and round(P_rᵀP_a · 2**30), int64 ``[K, K]``."""
    B, _, K = pr.shape
    step = max(1, _CHUNK_BYTES // (8 * K * K))
    A = torch.zeros(K, K, dtype=torch.int64)
    G = torch.zeros(K, K, dtype=torch.int64)
    for i in range(0, B, step):
        r, a = pr[i : i + step], pa[i : i + step]
        rt = r.transpose(1, 2)
        A += torch.bmm(rt, r).mul_(_FIXED).round_().long().sum(0)
        G += torch.bmm(rt, a).mul_(_FIXED).round_().long().sum(0)
    return A, G


def refit(layer, spikes: torch.Tensor, act: torch.Tensor, horizon: int, ridge: float, shard=None) -> dict:
    """Refit ``layer.main.weight`` in place (module docstring); returns a summary.

    Args:
        layer: a :class:`sresnet.network.Layer` with :func:`calibratable` true.
        spikes: the spikes of the main term's source over the horizon ``[H, B, ...]`` (this
            rank's images).
        act: the ANN activation over λ of the same source ``[1, B, ...]`` float32.
        horizon: H (the rate is count / H).
        ridge: ρ relative to the mean diagonal of ``P_rᵀP_r`` (> 0).
        shard: a :class:`sresnet.distributed.Shard` whose ranks hold shares of the images.

    Returns:
        ``{"change": ||W' - W|| / ||W||}``, or ``{"skipped": reason}`` when the input never spiked.
    """
    term = layer.main
    rate = spikes.sum(0, dtype=torch.float32)[None] / horizon
    A, G = _gram(_rows(rate, term), _rows(act, term))
    if shard is not None:
        A, G = shard.reduce(A), shard.reduce(G)
    A, G = A.double() / _FIXED, G.double() / _FIXED
    K = A.shape[0]
    scale = float(A.diagonal().mean())
    if scale <= 0:
        return {"skipped": "no input spikes on the calibration images"}
    rho = ridge * scale
    W = term.weight.double().reshape(term.weight.shape[0], K)  # [Cout, K]
    eye = torch.eye(K, dtype=torch.float64)
    Wn = torch.linalg.solve(A + rho * eye, (G + rho * eye) @ W.T).T
    new = Wn.float().reshape(term.weight.shape)
    change = float((new - term.weight).norm() / term.weight.norm().clamp_min(1e-30))
    term.weight = new
    return {"change": change}
