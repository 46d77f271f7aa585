"""Pure-PyTorch spiking pooling: the ground truth the kernels are tested against.

Contracts shared by every backend (the ops in ``op.py`` prepare the arguments); ``geom`` is
``(kh, kw, sh, sw, ph, pw)``, output sizes ``Ho = (H + 2ph - kh) // sh + 1`` (same for W):

``avg_pool(s, out, geom)``
    ``s``: ``[P, H, W]`` planes (float, or uint8 spikes; bool arrives as uint8);
    ``out``: float32 ``[P, Ho, Wo]``. Each output is the float32 sum of its window, added in
    row-major window order starting from 0 (padding adds nothing), divided by ``kh * kw``.

``max_pool(s, count, out, geom)``
    ``s``: spikes ``[T, P, H, W]``; ``count``: float32 ``[P, H, W]`` spike counts, read as
    the start and overwritten with the end state; ``out``: ``[T, P, Ho, Wo]`` in s's dtype.
    At each step t: ``count += s[t]``, then every window picks the input with the largest
    count (ties: first in row-major window order; padding never wins) and outputs that
    input's ``s[t]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def out_size(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def avg_pool(s, out, geom) -> None:
    kh, kw, sh, sw, ph, pw = geom
    ho, wo = out.shape[1], out.shape[2]
    x = F.pad(s.to(torch.float32), (pw, pw, ph, ph))
    acc = torch.zeros(out.shape, dtype=torch.float32, device=s.device)
    for di in range(kh):
        for dj in range(kw):
            acc += x[:, di : di + sh * (ho - 1) + 1 : sh, dj : dj + sw * (wo - 1) + 1 : sw]
    out.copy_(acc / torch.full_like(acc, float(kh * kw)))


def _windows(plane: torch.Tensor, geom, fill: float) -> torch.Tensor:
    """[P, H, W] -> [P, kh*kw, Ho*Wo] window values, row-major within a window."""
    kh, kw, sh, sw, ph, pw = geom
    padded = F.pad(plane, (pw, pw, ph, ph), value=fill)
    return F.unfold(padded.unsqueeze(1), (kh, kw), stride=(sh, sw))


def max_pool(s, count, out, geom) -> None:
    T, P = s.shape[0], s.shape[1]
    for t in range(T):
        st = s[t].to(torch.float32)
        count += st
        # padding gets -inf so it never wins; argmax returns the first of equal maxima
        pick = _windows(count, geom, float("-inf")).argmax(dim=1, keepdim=True)
        chosen = _windows(st, geom, 0.0).gather(1, pick)
        out[t] = chosen.view(out.shape[1:]).to(out.dtype)
