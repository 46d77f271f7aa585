from .op import if_scan

__all__ = ["if_scan"]
