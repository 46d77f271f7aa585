"""Issue 11, kind 6: installing the project prints no setuptools warnings (a new user's first screen)."""

import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_configuration_gives_no_setuptools_warning(monkeypatch):
    pytest.importorskip("setuptools", minversion="77")  # SPDX license strings: setuptools >= 77
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert dist.metadata.license_expression == "MIT"
