"""Public spiking pooling ops: argument checks, layout, dispatch."""

from __future__ import annotations

import torch

from ... import _checks, _dispatch
from ..if_scan.autograd import needed
from . import train
from .reference import out_size

AVG_IMPLS = {
    "reference": "spikekernels.ops.pool.reference.avg_pool",
    "numba": "spikekernels.ops.pool.numba.avg_pool",
    "triton": "spikekernels.ops.pool.triton.avg_pool",
}
MAX_IMPLS = {
    "reference": "spikekernels.ops.pool.reference.max_pool",
    "numba": "spikekernels.ops.pool.numba.max_pool",
    "triton": "spikekernels.ops.pool.triton.max_pool",
}
_LAYOUT = "[T, B, C, H, W]"


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return items  # type: ignore[return-value]


def pool_geometry(s: torch.Tensor, kernel_size, stride, padding) -> tuple[tuple[int, ...], int, int]:
    """Validated ``(kh, kw, sh, sw, ph, pw)`` and the output size ``Ho, Wo``."""
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"padding={padding!r} is too large for kernel_size={kernel_size!r}; accepted: at most half the kernel "
            "(a window must never lie entirely in the padding)"
        )
    H, W = s.shape[-2], s.shape[-1]
    ho, wo = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"kernel_size={kernel_size!r} with padding={padding!r} does not fit the input of size {H}x{W}"
        )
    return (kh, kw, sh, sw, ph, pw), ho, wo


def _check_spikes(s, name: str = "s") -> None:
    _checks.check_tensor(s, name, min_dim=5, dtypes=_checks.SPIKE_DTYPES, layout=_LAYOUT)
    if s.dim() != 5:
        raise ValueError(f"{name} has shape {tuple(s.shape)}; expected 5 dims laid out {_LAYOUT}")


def _planes(s: torch.Tensor) -> torch.Tensor:
    s = s.contiguous()
    return s.view(torch.uint8) if s.dtype == torch.bool else s


def _avg(s: torch.Tensor, geom, ho: int, wo: int, op: str, backend: str | None) -> torch.Tensor:
    T, B, C, H, W = s.shape
    out = _checks.new_output((T, B, C, ho, wo), torch.float32, s.device)
    impl = _dispatch.resolve(op, s.device, AVG_IMPLS, backend)
    impl(_planes(s).view(T * B * C, H, W), out.view(T * B * C, ho, wo), geom)
    return out


def spike_avg_pool2d(s: torch.Tensor, kernel_size, stride=None, padding=0, *, backend: str | None = None) -> torch.Tensor:
    """Average pooling of spikes over every time step (zero padding counts, as in torch).

    Each output is the sum of its window divided by ``kh * kw``: exact for 0/1 spikes.

    Args:
        s: spikes ``[T, B, C, H, W]`` (float, uint8 or bool; float currents work too).
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw); default kernel_size.
        padding: int or (ph, pw), at most half the kernel.
        backend: "auto", "reference", "numba" or "triton" for this call.

    Returns:
        float32 ``[T, B, C, H', W']`` with ``H' = (H + 2 ph - kh) // sh + 1``.
        When s requires grad (or under torch.compile) this is ``F.avg_pool2d``, which
        backpropagates.

    Example:
        >>> s = (torch.rand(4, 2, 3, 8, 8) < 0.2).to(torch.uint8)
        >>> spike_avg_pool2d(s, 2).shape
        torch.Size([4, 2, 3, 4, 4])
    """
    _check_spikes(s)
    geom, ho, wo = pool_geometry(s, kernel_size, stride, padding)
    if needed(s):
        return train.avg_pool(s, geom)
    return _avg(s, geom, ho, wo, "spike_avg_pool2d", backend)


def global_avg_pool(s: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Mean over the spatial dims of every time step.

    Args:
        s: spikes ``[T, B, C, H, W]`` (float, uint8 or bool).
        backend: "auto", "reference", "numba" or "triton" for this call.

    Returns:
        float32 ``[T, B, C]``: the window sum divided by ``H * W`` (differentiable when s
        requires grad).

    Example:
        >>> global_avg_pool(torch.ones(3, 2, 4, 5, 5)).shape
        torch.Size([3, 2, 4])
    """
    _check_spikes(s)
    if needed(s):
        return train.global_avg_pool(s)
    H, W = s.shape[-2:]
    out = _avg(s, (H, W, 1, 1, 0, 0), 1, 1, "global_avg_pool", backend)
    return out.view(s.shape[:3])


def spike_max_pool2d(
    s: torch.Tensor,
    kernel_size,
    stride=None,
    padding=0,
    count: torch.Tensor | None = None,
    return_state: bool = False,
    *,
    backend: str | None = None,
):
    """Gated spiking max pooling: each window passes the spike of its most active input.

    Per step t: every input neuron's running count gets ``s[t]`` added; then each window
    picks the input with the largest count (ties: the first in row-major window order;
    padding never wins) and outputs that input's spike at step t.

    Args:
        s: spikes ``[T, B, C, H, W]`` (float, uint8 or bool).
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw); default kernel_size.
        padding: int or (ph, pw), at most half the kernel.
        count: start counts ``[B, C, H, W]`` (e.g. returned by an earlier call); default zeros.
        return_state: also return the final counts ``[B, C, H, W]`` float32.
        backend: "auto", "reference", "numba" or "triton" for this call.

    Returns:
        spikes ``[T, B, C, H', W']`` in s's dtype, and the counts when ``return_state``.

    Gradients: when s requires grad (or under torch.compile) the op runs as torch ops; the
    gradient of each output goes to the input the gate chose at that step (the counts and
    the choice carry no gradient), as torch's max pool routes it to the argmax.

    Example:
        >>> s = (torch.rand(8, 2, 3, 6, 6) < 0.3).float()
        >>> out, cnt = spike_max_pool2d(s[:4], 2, return_state=True)
        >>> out2 = spike_max_pool2d(s[4:], 2, count=cnt)
    """
    _check_spikes(s)
    geom, ho, wo = pool_geometry(s, kernel_size, stride, padding)
    T, B, C, H, W = s.shape
    if count is None:
        cnt = torch.zeros((B, C, H, W), dtype=torch.float32, device=s.device)
    else:
        if not isinstance(count, torch.Tensor):
            raise TypeError(f"count must be None or a tensor [B, C, H, W], got {type(count).__name__}")
        if tuple(count.shape) != (B, C, H, W):
            raise ValueError(f"count has shape {tuple(count.shape)}; expected {(B, C, H, W)} (s.shape[1:])")
        _checks.same_device("count", count, "s", s)
        if _checks.donated(count, (B, C, H, W), s.device):
            cnt = count  # given away by the caller (_checks.donate): updated in place
        else:
            cnt = count.detach().to(torch.float32).contiguous()
            if cnt.data_ptr() == count.data_ptr():
                cnt = cnt.clone()
            if not torch.compiler.is_compiling() and not _checks.all_finite(cnt):
                raise ValueError("count contains NaN or Inf")
    if needed(s):
        out, cnt = train.max_pool(s, cnt, geom, ho, wo)
        return (out, cnt) if return_state else out
    out = _checks.new_output((T, B, C, ho, wo), s.dtype, s.device)
    impl = _dispatch.resolve("spike_max_pool2d", s.device, MAX_IMPLS, backend)
    o = out.view(torch.uint8) if out.dtype == torch.bool else out
    impl(_planes(s).view(T, B * C, H, W), cnt.view(B * C, H, W), o.view(T, B * C, ho, wo), geom)
    return (out, cnt) if return_state else out
