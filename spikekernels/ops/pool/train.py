"""Training path of the spiking pools: differentiable torch ops with the kernels' semantics.

Average pooling is linear, so its gradient is torch's. The gated max pool picks, per window
and step, the input with the largest spike count so far; the pick is a discrete choice
(counts carry no gradient), and the gradient of each output goes to the input it copied at
that step (the "gated input"), as torch's max pool routes it to the argmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def avg_pool(s: torch.Tensor, geom) -> torch.Tensor:
    """float32 ``[T, B, C, Ho, Wo]``: the window sum divided by ``kh * kw`` (padding counts)."""
    kh, kw, sh, sw, ph, pw = geom
    T, B = s.shape[:2]
    out = F.avg_pool2d(s.flatten(0, 1).to(torch.float32), (kh, kw), (sh, sw), (ph, pw), count_include_pad=True)
    return out.view((T, B) + tuple(out.shape[1:]))


def global_avg_pool(s: torch.Tensor) -> torch.Tensor:
    """float32 ``[T, B, C]`` spatial mean."""
    return s.to(torch.float32).mean(dim=(-2, -1))


def max_pool(s: torch.Tensor, count: torch.Tensor, geom, ho: int, wo: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated max pool of ``s`` ``[T, B, C, H, W]`` from start counts ``[B, C, H, W]`` (float32).

    Returns (spikes ``[T, B, C, Ho, Wo]`` in s's dtype, end counts ``[B, C, H, W]``).
    """
    kh, kw, sh, sw, ph, pw = geom
    T, B, C, H, W = s.shape
    # counts after each step, in float32 as the kernels keep them (exact for spike counts)
    counts = count.detach().to(torch.float32).unsqueeze(0) + s.detach().to(torch.float32).cumsum(0)
    planes = counts.reshape(T * B * C, 1, H, W)
    # padding gets -inf so it never wins; argmax returns the first of equal maxima (row-major)
    win = F.unfold(F.pad(planes, (pw, pw, ph, ph), value=float("-inf")), (kh, kw), stride=(sh, sw))
    pick = win.argmax(dim=1, keepdim=True)
    src = s if s.dtype.is_floating_point else s.to(torch.float32)
    values = F.unfold(F.pad(src.reshape(T * B * C, 1, H, W), (pw, pw, ph, ph)), (kh, kw), stride=(sh, sw))
    out = values.gather(1, pick).view(T, B, C, ho, wo)
    return out.to(s.dtype), counts[-1]
