"""spikekernels: spiking-network operations on Triton (GPU), Numba (CPU) and PyTorch (reference).

Public functions dispatch by tensor device (CUDA -> Triton, CPU -> Numba) unless
SPIKEKERNELS_BACKEND or a ``backend=`` argument says otherwise. Importing this package needs
neither a GPU nor Triton.
"""

from ._threads import quiet_openmp_spin

quiet_openmp_spin()

from . import surrogate
from ._dispatch import available_backends
from .counting import count_spikes
from .layers import (GlobalAvgPool, IFNeuron, ResidualMerge, SpikeAvgPool2d, SpikeConv2d, SpikeLinear,
                     SpikeMaxPool2d)
from .ops.burst_scan import burst_scan
from .ops.if_scan import if_scan
from .ops.signed_scan import signed_scan
from .ops.spike_conv import spike_conv2d, spike_linear
from .ops.pool import global_avg_pool, spike_avg_pool2d, spike_max_pool2d
from .ops.residual_merge import residual_merge

__version__ = "0.1.0"

__all__ = [
    "available_backends",
    "count_spikes",
    "surrogate",
    "if_scan",
    "burst_scan",
    "signed_scan",
    "residual_merge",
    "spike_conv2d",
    "spike_linear",
    "spike_avg_pool2d",
    "global_avg_pool",
    "spike_max_pool2d",
    "IFNeuron",
    "ResidualMerge",
    "SpikeConv2d",
    "SpikeLinear",
    "SpikeAvgPool2d",
    "SpikeMaxPool2d",
    "GlobalAvgPool",
]
