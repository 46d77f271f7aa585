from .op import signed_scan

__all__ = ["signed_scan"]
