from .op import global_avg_pool, spike_avg_pool2d, spike_max_pool2d

__all__ = ["global_avg_pool", "spike_avg_pool2d", "spike_max_pool2d"]
