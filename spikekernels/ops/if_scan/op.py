"""Public ``if_scan``: argument checks, layout, dispatch."""

from __future__ import annotations

import torch

from ... import _checks, _dispatch
from ...surrogate import Surrogate
from . import autograd

IMPLS = {
    "reference": "spikekernels.ops.if_scan.reference.if_scan",
    "numba": "spikekernels.ops.if_scan.numba.if_scan",
    "triton": "spikekernels.ops.if_scan.triton.if_scan",
}


def if_scan(
    x: torch.Tensor,
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
    step_bias: torch.Tensor | None = None,
):
    """Multi-step integrate-and-fire neuron over a time-major current.

    Per neuron and step: ``v += x[t]``; spike when ``v >= threshold``; then
    ``v -= threshold`` (reset="subtract") or ``v = v_reset`` (reset="zero"). The membrane
    is float32 whatever the input dtype.

    Args:
        x: currents ``[T, B, ...]`` (float16/bfloat16/float32/float64). A current constant
            over time may be passed as ``c.expand(T, ...)``: it is read without copying.
        threshold: a positive number, or one value per channel ``[C]`` (C = dim 2).
        v0: start membrane: None for θ/2 (half-threshold start), a number, or a tensor
            broadcastable to ``x.shape[1:]`` (e.g. the state returned by an earlier call).
        reset: "subtract" (default) or "zero".
        return_state: also return the final membrane ``[B, ...]`` float32.
        v_reset: membrane after a spike when reset="zero".
        spike_dtype: dtype of the spikes (default x's dtype; torch.uint8 or torch.bool store
            one byte per spike).
        surrogate: the spike's surrogate derivative for backpropagation: None (default,
            ``sk.surrogate.Sigmoid(alpha=4)`` as SpikingJelly), "sigmoid", "atan", "triangle"
            or an instance such as ``sk.surrogate.ATan(alpha=2)``. Forward spikes never change.
        detach_reset: True treats the spike in the reset as a constant in backpropagation
            (SpikingJelly's ``detach_reset``); False (default) propagates through it.
        backend: "auto", "reference", "numba" or "triton" for this call (default:
            SPIKEKERNELS_BACKEND, else auto).
        step_bias: None, or a bias per time step and channel ``[T, C]`` (float, any float
            dtype, used as float32; C = dim 2 of x, so x needs at least 3 dims) added to the
            current inside the kernel: ``v += (x[t] + step_bias[t, c])``, the float32
            operations of passing ``x + step_bias[:, None, :, None, ...]`` as the current, so
            a constant current ``c.expand(T, ...)`` with a per-step bias (a converted
            network's analog first layer under a bias schedule) is never materialized T
            times. Split calls pass the rows of the steps they cover.

    Returns:
        spikes ``[T, B, ...]`` of 0/1, and the membrane ``[B, ...]`` when ``return_state``.

    Gradients: when x, a threshold tensor, a v0 tensor or step_bias requires grad (grad
    mode on), or under torch.compile, the spikes and membrane carry a grad_fn:
    backpropagation through time with the surrogate derivative (equations in
    ops/if_scan/README.md), giving dL/dx, dL/dthreshold and dL/dv0 (v0=None is θ/2, so it
    feeds dL/dthreshold too); a step_bias is then added to x by torch first (materialized),
    so dL/dstep_bias comes through that sum. The spike dtype must then be a float dtype.
    Otherwise the inference kernel runs unchanged.

    Raises:
        TypeError / ValueError: a bad x, threshold, v0, reset, spike_dtype or backend, or a
            step_bias that is not a finite float tensor of shape ``[T, C]`` on x's device
            (or given with an x of fewer than 3 dims).

    Example:
        >>> x = torch.rand(8, 2, 4)
        >>> s, v = if_scan(x, threshold=1.0, return_state=True)
        >>> s2, _ = if_scan(x[4:], v0=if_scan(x[:4], return_state=True)[1], return_state=True)
    """
    if step_bias is not None:
        _checks.check_tensor(x, "x", min_dim=2)
        if x.dim() < 3:
            raise ValueError(f"step_bias needs x with a channel dim (dim 2): x has shape {tuple(x.shape)}; "
                             "accepted: [T, B, C, ...]")
        _checks.check_step_bias(step_bias, x.shape[0], x.shape[2], x.device)
    if autograd.needed(x, threshold, v0, step_bias):
        if step_bias is not None:
            x = x + step_bias.view(*step_bias.shape[:1], 1, step_bias.shape[1], *([1] * (x.dim() - 3)))
        return autograd.if_scan(x, threshold, v0, reset, return_state, v_reset, spike_dtype, surrogate,
                                detach_reset, backend)
    _checks.check_tensor(x, "x", min_dim=2)
    reset_zero = _checks.check_reset(reset, v_reset)
    thr = _checks.prepare_threshold(threshold, x)
    spike_dtype = _checks.check_spike_dtype(spike_dtype, x.dtype)
    T = x.shape[0]
    v = _checks.initial_membrane(v0, thr, x.shape[1:], x.device)
    out = _checks.new_output(x.shape, spike_dtype, x.device)
    name = _dispatch.choose("if_scan", x.device, backend)
    sb = None if step_bias is None else step_bias.detach().to(torch.float32).contiguous()
    src = _checks.time_source(x)
    if name == "numba" and src.shape[0] == 1 and x.dim() == 5:
        # a current constant in time [T, B, C, H, W] (a converted network's stem): the spikes
        # are also kept as bits for the spiking convs that read them (spike_conv's numba_gather)
        from ..spike_conv import numba_gather

        if numba_gather.if_scan_kept(x[:1], thr, v, out, reset_zero, float(v_reset), sb):
            return (out, v) if return_state else out
    _dispatch._load(IMPLS[name])(src, T, thr, _checks.inner_size(x.shape), v.view(-1), out.view(T, -1), reset_zero,
                                 float(v_reset), sb)
    return (out, v) if return_state else out
