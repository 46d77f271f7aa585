"""Comparison helpers for spike trains and currents, shipped for users' tests and ours.

Spikes from two backends agree exactly except where the membrane lands within a few ulp
of the threshold (the order of float32 summation differs). A flip there changes that
neuron's later membrane by θ, so later differences of that neuron follow from the first.
``assert_spikes_match`` therefore checks, per neuron, that the *first* disagreement
happens where the reference membrane was near the threshold, counts such neurons and
bounds their number; all other neurons must agree exactly.
"""

from __future__ import annotations

import torch

from ._checks import inner_size, prepare_threshold


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6, name: str = "tensor") -> None:
    """Elementwise |a - e| <= atol + rtol * |e|, with NaN/Inf in ``actual`` never passing
    unless ``expected`` has the same non-finite value there."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    nonfinite = ~torch.isfinite(a) | ~torch.isfinite(e)
    bad_nonfinite = nonfinite & ~((a == e) | (torch.isnan(a) & torch.isnan(e)))
    if bool(bad_nonfinite.any()):
        idx = bad_nonfinite.nonzero()[0].tolist()
        raise AssertionError(
            f"{name}: {int(bad_nonfinite.sum())} non-finite mismatches, first at {idx}: "
            f"actual {a[tuple(idx)].item()} expected {e[tuple(idx)].item()}"
        )
    err = (a - e).abs().masked_fill(nonfinite, 0.0)
    bound = atol + rtol * e.abs().masked_fill(nonfinite, 0.0)
    bad = err > bound
    if bool(bad.any()):
        idx = (err - bound).flatten().argmax().item()
        pos = list(torch.unravel_index(torch.tensor(idx), a.shape))
        pos = [int(p) for p in pos]
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{a.numel()} elements out of tolerance (rtol={rtol}, atol={atol}); "
            f"worst at {pos}: actual {a.flatten()[idx].item()!r} expected {e.flatten()[idx].item()!r}; "
            f"max abs err {err.max().item():.3e}"
        )


def membrane_trace(x: torch.Tensor, threshold=1.0, v0=None, reset: str = "subtract", v_reset: float = 0.0) -> torch.Tensor:
    """Pre-spike membrane ``[T, ...]`` (v after integrating step t) in float64, for flip analysis.

    Follows the reference's own spike decisions so it describes the reference trajectory.
    """
    x64 = x.detach().to(torch.float64)
    thr = prepare_threshold(threshold, x).to(torch.float64)
    shape = [1] * (x.dim() - 1)
    if thr.numel() > 1:
        shape[1] = thr.numel()
    theta = thr.view(shape) if thr.numel() > 1 else thr[0]
    if v0 is None:
        v = (theta * 0.5) * torch.ones(x.shape[1:], dtype=torch.float64, device=x.device)
    else:
        v = torch.as_tensor(v0, dtype=torch.float64, device=x.device).expand(x.shape[1:]).clone()
    trace = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    for t in range(x.shape[0]):
        v = v + x64[t]
        trace[t] = v
        s = v >= theta
        v = torch.where(s, torch.full_like(v, v_reset), v) if reset == "zero" else v - theta * s
    return trace


def assert_spikes_match(
    actual: torch.Tensor,
    expected: torch.Tensor,
    membrane: torch.Tensor | None = None,
    threshold=1.0,
    tol: float = 1e-4,
    max_flip_fraction: float = 1e-3,
    name: str = "spikes",
) -> int:
    """Spikes equal, except neurons whose first disagreement is near the threshold.

    Args:
        actual, expected: spike trains ``[T, ...]`` (any dtype holding 0/1).
        membrane: the reference's pre-spike membrane ``[T, ...]`` (see ``membrane_trace``).
            Without it every spike must match exactly.
        threshold: scalar or per-channel (dim 2) threshold used by the run.
        tol: a neuron may differ when ``|v - θ| <= tol * max(θ, |v|)`` at its first disagreement.
        max_flip_fraction: most neurons (fraction of all, at least 1) allowed to flip.

    Returns:
        The number of neurons that flipped near the threshold (0 when all agree).
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().cpu().to(torch.uint8)
    e = expected.detach().cpu().to(torch.uint8)
    if bool(((a > 1) | (e > 1)).any()):
        raise AssertionError(f"{name}: spikes must be 0 or 1")
    diff = (a != e).reshape(a.shape[0], -1)
    if not bool(diff.any()):
        return 0
    T, n = diff.shape
    if membrane is None:
        first = diff.nonzero()[0].tolist()
        raise AssertionError(f"{name}: {int(diff.sum())} spikes differ, first at step {first[0]}, neuron {first[1]}")
    v = membrane.detach().cpu().to(torch.float64).reshape(T, -1)
    thr = prepare_threshold(threshold, membrane.cpu()).to(torch.float64)
    channel = torch.arange(n) // inner_size(actual.shape) % thr.numel()
    theta = thr[channel]
    neurons = diff.any(0).nonzero().flatten()
    t_first = diff[:, neurons].to(torch.int8).argmax(0)
    v_first = v[t_first, neurons]
    margin = (v_first - theta[neurons]).abs()
    allowed = margin <= tol * torch.maximum(theta[neurons], v_first.abs())
    where = [(int(t), int(i), float(m)) for t, i, m in zip(t_first[:5], neurons[:5], margin[:5])]
    if not bool(allowed.all()):
        k = int((~allowed).nonzero()[0])
        raise AssertionError(
            f"{name}: neuron {int(neurons[k])} first differs at step {int(t_first[k])} where the reference "
            f"membrane is {float(v_first[k])!r}, {float(margin[k]):.3e} from the threshold (tolerance {tol}); "
            f"{len(neurons)} neurons differ in all"
        )
    limit = max(1, int(max_flip_fraction * n))
    if len(neurons) > limit:
        raise AssertionError(f"{name}: {len(neurons)} neurons flipped near the threshold, more than {limit}: {where}")
    print(f"{name}: {len(neurons)} near-threshold flips (step, neuron, |v-θ|): {where}")
    return len(neurons)
