"""spikekernels: spiking-network operations on Triton (GPU), Numba (CPU) and PyTorch (reference).

Public functions dispatch by tensor device (CUDA -> Triton, CPU -> Numba) unless
SPIKEKERNELS_BACKEND or a ``backend=`` argument says otherwise. Importing this package needs
neither a GPU nor Triton.
"""

from ._dispatch import available_backends
from .ops.if_scan import if_scan

__version__ = "0.1.0"

__all__ = ["available_backends", "if_scan"]
