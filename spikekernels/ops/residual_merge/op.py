"""Public ``residual_merge``: argument checks, layout, dispatch."""

from __future__ import annotations

import torch

from ... import _checks, _dispatch
from ...surrogate import Surrogate
from ..if_scan import autograd

IMPLS = {
    "reference": "spikekernels.ops.residual_merge.reference.residual_merge",
    "numba": "spikekernels.ops.residual_merge.numba.residual_merge",
    "triton": "spikekernels.ops.residual_merge.triton.residual_merge",
}


def residual_merge(
    current: torch.Tensor,
    shortcut: torch.Tensor,
    scale: float | torch.Tensor = 1.0,
    threshold: float | torch.Tensor = 1.0,
    v0: float | torch.Tensor | None = None,
    reset: str = "subtract",
    return_state: bool = False,
    *,
    v_reset: float = 0.0,
    spike_dtype: torch.dtype | None = None,
    surrogate: Surrogate | str | None = None,
    detach_reset: bool = False,
    backend: str | None = None,
):
    """Integrate-and-fire neuron over the sum of a branch current and a scaled shortcut.

    The merge of a spiking residual block: per neuron and step, in float32,
    ``i = current[t] + scale * shortcut[t]``, ``v += i``, spike when ``v >= threshold``,
    then ``v -= threshold`` (reset="subtract") or ``v = v_reset`` (reset="zero"). One pass,
    no intermediate ``[T, ...]`` sum tensor.

    Args:
        current: branch currents ``[T, B, C, ...]`` (float16/bfloat16/float32/float64).
        shortcut: same shape: spikes or currents (any float dtype, uint8 or bool). Either
            input may be constant over time, passed as ``c.expand(T, ...)`` (not copied).
        scale: weight of the shortcut: a number or one value per channel ``[C]`` (dim 2).
        threshold: a positive number, or one value per channel ``[C]``.
        v0: start membrane: None for θ/2, a number, or a tensor broadcastable to
            ``current.shape[1:]`` (e.g. the state returned by an earlier call).
        reset: "subtract" (default) or "zero".
        return_state: also return the final membrane ``[B, C, ...]`` float32.
        v_reset: membrane after a spike when reset="zero".
        spike_dtype: dtype of the spikes (default current's dtype; uint8 or bool store one
            byte per spike).
        surrogate, detach_reset: the backward's spike derivative and reset handling, as in
            :func:`spikekernels.if_scan`.
        backend: "auto", "reference", "numba" or "triton" for this call (default:
            SPIKEKERNELS_BACKEND, else auto).

    Returns:
        spikes ``[T, B, C, ...]`` of 0/1, and the membrane ``[B, C, ...]`` when ``return_state``.

    Gradients: when an input, a scale, threshold or v0 tensor requires grad (or under
    torch.compile) the current ``current + scale * shortcut`` is formed with torch ops in
    float32 (the same arithmetic as the kernels, so the same spikes) and the neuron runs
    the training path of :func:`spikekernels.if_scan`.

    Example:
        >>> branch = torch.rand(8, 2, 4, 5, 5)
        >>> skip = (torch.rand(8, 2, 4, 5, 5) < 0.3).to(torch.uint8)
        >>> s = residual_merge(branch, skip, scale=0.8, threshold=1.0)
    """
    _checks.check_tensor(current, "current", min_dim=2, layout="[T, B, C, ...]")
    train = autograd.needed(current, shortcut, scale, threshold, v0)
    _checks.check_tensor(shortcut, "shortcut", min_dim=2, dtypes=_checks.SPIKE_DTYPES, layout="[T, B, C, ...]")
    if shortcut.shape != current.shape:
        raise ValueError(
            f"shortcut has shape {tuple(shortcut.shape)} but current has {tuple(current.shape)}; "
            "they must match exactly (pass a constant one as c.expand(T, ...))"
        )
    _checks.same_device("shortcut", shortcut, "current", current)
    if train:
        channels = current.shape[2] if current.dim() >= 3 else None
        sc = autograd.vector(scale, "scale", channels, current.device, positive=False, shape=current.shape)
        if sc.numel() > 1:
            sc = sc.view((-1,) + (1,) * (current.dim() - 3))
        x = current.to(torch.float32) + sc * shortcut.to(torch.float32)
        return autograd.if_scan(x, threshold, v0, reset, return_state, v_reset,
                                _checks.check_spike_dtype(spike_dtype, current.dtype), surrogate, detach_reset, backend)
    reset_zero = _checks.check_reset(reset, v_reset)
    thr = _checks.prepare_threshold(threshold, current)
    sc = _checks.channel_vector(scale, "scale", current.shape[2] if current.dim() >= 3 else None, current.device,
                                positive=False, shape=current.shape)
    spike_dtype = _checks.check_spike_dtype(spike_dtype, current.dtype)
    T = current.shape[0]
    v = _checks.initial_membrane(v0, thr, current.shape[1:], current.device)
    out = _checks.new_output(current.shape, spike_dtype, current.device)
    y = _checks.time_source(shortcut)
    if y.dtype == torch.bool:
        y = y.view(torch.uint8)
    impl = _dispatch.resolve("residual_merge", current.device, IMPLS, backend)
    impl(
        _checks.time_source(current), y, T, thr, sc, _checks.inner_size(current.shape),
        v.view(-1), out.view(T, -1), reset_zero, float(v_reset),
    )
    return (out, v) if return_state else out
