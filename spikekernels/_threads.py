"""OpenMP wait policy: keep torch's and Numba's thread pools from spinning against each other.

torch ships its own OpenMP runtime and Numba uses the system one, so a CPU simulation that
alternates torch ops and Numba kernels has two thread pools on the same cores. By default
each pool's idle threads spin for a while after every parallel region, stealing the cores
the other pool needs (measured on 2 cores: a Numba conv kernel 2.6x slower right after a
torch op). ``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep instead. OpenMP reads it
when the runtime starts, so it only takes effect when set before torch is imported:
importing spikekernels (or sresnet) first does that; otherwise set it in the environment.
An explicit user setting is never overridden.
"""

from __future__ import annotations

import os
import sys


def quiet_openmp_spin() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE if unset and torch is not imported yet; True if it took effect."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
