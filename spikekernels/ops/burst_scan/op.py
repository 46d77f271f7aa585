"""Public ``burst_scan``: argument checks, layout, dispatch."""

from __future__ import annotations

import torch

from ... import _checks, _dispatch

IMPLS = {
    "reference": "spikekernels.ops.burst_scan.reference.burst_scan",
    "numba": "spikekernels.ops.burst_scan.numba.burst_scan",
    "triton": "spikekernels.ops.burst_scan.triton.burst_scan",
}

SPIKE_DTYPES = _checks.FLOAT_DTYPES + (torch.uint8,)
# Largest spike count each spike dtype stores exactly (integers up to 2^mantissa+1 for floats).
_MAX_COUNT = {torch.uint8: 255, torch.bfloat16: 256, torch.float16: 2048,
              torch.float32: 2**24, torch.float64: 2**24}


def _check_max_spikes(max_spikes, spike_dtype: torch.dtype) -> int:
    if not isinstance(max_spikes, int) or isinstance(max_spikes, bool) or max_spikes < 1:
        raise ValueError(f"max_spikes={max_spikes!r} must be an int >= 1 (the most spikes a neuron sends in one step)")
    if max_spikes > _MAX_COUNT[spike_dtype]:
        raise ValueError(
            f"max_spikes={max_spikes} exceeds {_MAX_COUNT[spike_dtype]}, the largest count spike_dtype "
            f"{spike_dtype} stores exactly; use a smaller max_spikes or a wider spike_dtype"
        )
    return max_spikes


def burst_scan(
    x: torch.Tensor,
    threshold: float | torch.Tensor = 1.0,
    v0: float | torch.Tensor | None = None,
    max_spikes: int = 2,
    return_state: bool = False,
    *,
    spike_dtype: torch.dtype | None = None,
    backend: str | None = None,
):
    """Multi-step burst integrate-and-fire neuron: up to ``max_spikes`` spikes per step.

    Per neuron and step (Li & Zeng, "Efficient and Accurate Conversion of Spiking Neural
    Network with Burst Spikes", IJCAI 2022)::

        v += x[t]
        s[t] = #{ j in 1..max_spikes : v >= j·θ }     # = clamp(floor(v / θ), 0, max_spikes)
        v -= θ·s[t]

    with ``j·θ`` and ``θ·s[t]`` rounded to float32 and the comparison made in float32 by every
    backend, so a tie fires and ``max_spikes=1`` is exactly :func:`spikekernels.if_scan` with
    the subtract reset. The membrane is float32 whatever the input dtype. Equations:
    ``spikekernels/ops/burst_scan/README.md``.

    Inference only: there is no backward. A tensor argument that requires grad while grad mode
    is on raises RuntimeError.

    Args:
        x: currents ``[T, B, ...]`` (e.g. ``[T, B, C, H, W]``), float16/bfloat16/float32/float64.
            A current constant over time may be passed as ``c.expand(T, ...)``: it is read
            without copying.
        threshold: θ, a positive number, or one value per channel ``[C]`` (C = dim 2).
        v0: start membrane: None for θ/2 (half-threshold start), a number, or a float tensor
            broadcastable to ``x.shape[1:]`` (e.g. the state returned by an earlier call).
        max_spikes: k, the most spikes one neuron sends in one step, an int >= 1 (and no more
            than the spike dtype stores exactly: 255 for uint8, 256 for bfloat16, 2048 for float16).
        return_state: also return the final membrane ``[B, ...]`` float32.
        spike_dtype: dtype of the spike counts (default x's dtype; torch.uint8 stores one byte
            per count).
        backend: "auto", "reference", "numba" or "triton" for this call (default:
            SPIKEKERNELS_BACKEND, else auto).

    Returns:
        spike counts ``[T, B, ...]`` with values 0..max_spikes, and the membrane ``[B, ...]``
        float32 when ``return_state`` (pass it as ``v0`` to continue exactly).

    Raises:
        TypeError / ValueError naming the argument (x, threshold, v0, max_spikes, spike_dtype,
        backend) that is wrong; RuntimeError when an input requires grad with grad mode on.

    Example:
        >>> x = torch.rand(8, 2, 4) * 2
        >>> s, v = burst_scan(x, threshold=1.0, max_spikes=3, return_state=True)
        >>> s2 = burst_scan(x, v0=v, max_spikes=3, spike_dtype=torch.uint8)
    """
    _checks.check_inference_only("burst_scan", x=x, threshold=threshold, v0=v0)
    _checks.check_tensor(x, "x", min_dim=2)
    thr = _checks.prepare_threshold(threshold, x)
    if spike_dtype is not None and spike_dtype not in SPIKE_DTYPES:
        raise TypeError(f"spike_dtype={spike_dtype} is not accepted by burst_scan; accepted: "
                        f"{_checks._dtype_names(SPIKE_DTYPES)} or None (x's dtype)")
    spike_dtype = x.dtype if spike_dtype is None else spike_dtype
    k = _check_max_spikes(max_spikes, spike_dtype)
    T = x.shape[0]
    v = _checks.initial_membrane(v0, thr, x.shape[1:], x.device)
    out = _checks.new_output(x.shape, spike_dtype, x.device)
    impl = _dispatch.resolve("burst_scan", x.device, IMPLS, backend)
    impl(_checks.time_source(x), T, thr, _checks.inner_size(x.shape), v.view(-1), out.view(T, -1), k)
    return (out, v) if return_state else out
