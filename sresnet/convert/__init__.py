"""ANN -> SNN conversion pipeline: validate, trace, fold, observe, normalize, compensate, build."""

from .pipeline import convert

__all__ = ["convert"]
