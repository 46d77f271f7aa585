"""Surrogate derivatives of the spike, for training through the IF neuron.

The spike ``s = H(v - θ)`` (Heaviside, a tie fires) has derivative zero almost everywhere,
so backpropagation replaces ``dH/du`` (``u = v - θ``, the membrane's distance above the
threshold) by the derivative ``g'(u)`` of a smooth step ``g``. The forward spikes are never
changed: only the backward pass uses ``g'``.

Each surrogate is a small frozen description (a kind and one shape parameter ``alpha``)
that every backend's backward kernel evaluates inline; it is a parameter of the op, never a
second copy of a kernel. The formulas and default ``alpha`` follow SpikingJelly's
``activation_based.surrogate`` (Fang et al., SpikingJelly, Science Advances 2023), so a
model trained there transfers with the same gradients:

=============  ===========================================  =========================================  =======
name           smooth step ``g(u)``                         derivative ``g'(u)``                       alpha
=============  ===========================================  =========================================  =======
``sigmoid``    ``sigmoid(alpha u)``                         ``alpha sigmoid(alpha u)(1 - sigmoid(.))``  4.0
``atan``       ``arctan(pi/2 alpha u) / pi + 1/2``          ``alpha / 2 / (1 + (pi/2 alpha u)^2)``     2.0
``triangle``   piecewise quadratic (SpikingJelly's           ``max(0, alpha - alpha^2 |u|)``            1.0
               ``PiecewiseQuadratic``)
=============  ===========================================  =========================================  =======

Every ``g'`` integrates to 1 over u; a larger ``alpha`` gives a narrower, taller
derivative. ``triangle`` is zero for ``|u| >= 1/alpha`` (snnTorch's ``triangular`` has the
same shape with half-width equal to the threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = ["Surrogate", "Sigmoid", "ATan", "Triangle", "get"]


@dataclass(frozen=True)
class Surrogate:
    """A surrogate spike derivative: ``kind`` (kernel code) and ``alpha`` (shape, > 0)."""

    alpha: float
    name: ClassVar[str] = ""
    kind: ClassVar[int] = -1

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (
            math.isfinite(self.alpha) and self.alpha > 0
        ):
            raise ValueError(f"{type(self).__name__}(alpha={self.alpha!r}): alpha must be a finite number > 0")
        object.__setattr__(self, "alpha", float(self.alpha))

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        """``g'(u)`` elementwise, in u's dtype (the reference backward uses this)."""
        raise NotImplementedError

    def smooth(self, u: torch.Tensor) -> torch.Tensor:
        """``g(u)``: the smooth step whose derivative is :meth:`derivative` (for gradcheck)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Sigmoid(Surrogate):
    """``g'(u) = alpha sigmoid(alpha u)(1 - sigmoid(alpha u))``; SpikingJelly's default (alpha=4)."""

    alpha: float = 4.0
    name: ClassVar[str] = "sigmoid"
    kind: ClassVar[int] = 0

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        sg = torch.sigmoid(self.alpha * u)
        return self.alpha * sg * (1 - sg)

    def smooth(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.alpha * u)


@dataclass(frozen=True)
class ATan(Surrogate):
    """``g'(u) = alpha / 2 / (1 + (pi/2 alpha u)^2)``; SpikingJelly's ``ATan`` (alpha=2)."""

    alpha: float = 2.0
    name: ClassVar[str] = "atan"
    kind: ClassVar[int] = 1

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        au = (math.pi / 2 * self.alpha) * u
        return (self.alpha / 2) / (1 + au * au)

    def smooth(self, u: torch.Tensor) -> torch.Tensor:
        return torch.atan((math.pi / 2 * self.alpha) * u) / math.pi + 0.5


@dataclass(frozen=True)
class Triangle(Surrogate):
    """``g'(u) = max(0, alpha - alpha^2 |u|)``: SpikingJelly's ``PiecewiseQuadratic`` (alpha=1)."""

    alpha: float = 1.0
    name: ClassVar[str] = "triangle"
    kind: ClassVar[int] = 2

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.alpha - self.alpha * self.alpha * u.abs(), min=0)

    def smooth(self, u: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        inner = -0.5 * a * a * u * u.abs() + a * u + 0.5
        return torch.where(u <= -1 / a, torch.zeros_like(u), torch.where(u >= 1 / a, torch.ones_like(u), inner))


_BY_NAME = {cls.name: cls for cls in (Sigmoid, ATan, Triangle)}
_BY_KIND = {cls.kind: cls for cls in (Sigmoid, ATan, Triangle)}


def get(surrogate: Surrogate | str | None) -> Surrogate:
    """A :class:`Surrogate` from an instance, a name ('sigmoid', 'atan', 'triangle') or None (Sigmoid(4))."""
    if surrogate is None:
        return Sigmoid()
    if isinstance(surrogate, Surrogate) and type(surrogate) in _BY_KIND.values():
        return surrogate
    if isinstance(surrogate, str) and surrogate in _BY_NAME:
        return _BY_NAME[surrogate]()
    raise ValueError(
        f"surrogate={surrogate!r} is not a surrogate; accepted: None (Sigmoid(alpha=4)), "
        f"{', '.join(map(repr, _BY_NAME))} or an instance of sk.surrogate.Sigmoid / ATan / Triangle"
    )


def from_kind(kind: int, alpha: float) -> Surrogate:
    """The surrogate a kernel code and alpha stand for (the custom ops pass these two scalars)."""
    return _BY_KIND[kind](alpha)
