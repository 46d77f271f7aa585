from .op import residual_merge

__all__ = ["residual_merge"]
