from .op import spike_conv2d, spike_linear

__all__ = ["spike_conv2d", "spike_linear"]
