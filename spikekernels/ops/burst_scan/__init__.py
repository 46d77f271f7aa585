from .op import burst_scan

__all__ = ["burst_scan"]
