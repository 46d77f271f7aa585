"""percentile="search": λ with the least IF quantization error at T (SNN Calibration's search)."""

import pytest
import torch

import sresnet
from sresnet.convert import observe as obs

from _sresnet_nets import make


def _uniform_with_outlier(outlier: float = 50.0) -> torch.Tensor:
    v = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) * 0.999 + 0.001
    return torch.cat([v, torch.tensor([outlier])])


def test_short_runs_clip_an_outlier():
    # T = 16 steps, 10,000 values uniform in (0, 1] and one at 50: with λ = 50 the step is 3.1
    # and every value under 1.56 rounds to 0 (error Σ a² ≈ 3300); λ = 12.5 (step 0.78) costs
    # ≈ 430 in quantization plus (50 - 12.5)² ≈ 1400 for clipping the outlier
    lam = float(obs._search(_uniform_with_outlier(), 16))
    assert lam <= 25.0


def test_long_runs_keep_the_maximum():
    # T = 4096: the quantization step at λ = 50 is 0.012 (error ~ 10000 · 0.012² / 12 = 0.1),
    # less than the clipping cost of the next candidate down, (50 - 49.5)² = 0.25
    assert float(obs._search(_uniform_with_outlier(), 4096)) == 50.0


def test_search_is_the_grid_argmin():
    v = _uniform_with_outlier(3.0)
    T = 8
    lam = float(obs._search(v, T))
    grid = v.max().double() * torch.arange(1, obs.SEARCH_GRID + 1, dtype=torch.float64) / obs.SEARCH_GRID

    def err(l):
        q = l * torch.clamp(torch.floor(v.double() * T / l + 0.5), 0, T) / T
        return float(((v.double() - q) ** 2).sum())

    errs = [err(l) for l in grid]
    assert lam == pytest.approx(float(grid[min(range(len(errs)), key=lambda i: (errs[i], -i))]))
    assert all(err(torch.tensor(lam, dtype=torch.float64)) <= e + 1e-9 for e in errs)


def test_empty_site_gets_the_default():
    assert float(obs._search(torch.empty(0), 8)) == 1.0
    assert float(obs._search(torch.empty(0), 8, torch.tensor(3.0))) == 3.0


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("method", ["lowlat", "s-resnet"])
def test_convert_with_search(method, per_channel):
    model = make("tiny_A_functional").eval()
    calib = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(method=method, per_channel=per_channel, calib_timesteps=8, horizon=8, calib_subset=8)
    searched = sresnet.convert(model, calib, percentile="search", **kw)
    assert searched.info["percentile"] == "search"
    maxed = sresnet.convert(model, calib, percentile="max", **kw)
    for site, lam in searched.scales.items():
        # every candidate is a fraction of the site's maximum
        assert bool((lam <= maxed.scales[site] * (1 + 1e-6)).all()) and bool((lam > 0).all())
    assert searched(calib[:4], timesteps=8).shape[0] == 4


def test_search_needs_timesteps():
    program_like = None
    with pytest.raises(ValueError, match="search_timesteps"):
        obs.observe(program_like, torch.zeros(1, 3, 8, 8), percentile="search", per_channel=False, batch_size=4)


def test_per_channel_default_follows_the_method():
    model = make("tiny_A_functional").eval()
    calib = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(calib_timesteps=4, horizon=4, calib_subset=4)
    low = sresnet.convert(model, calib, **kw)
    paper = sresnet.convert(model, calib, method="s-resnet", **kw)
    assert low.info["per_channel"] is True and paper.info["per_channel"] is False
    site = next(k for k, v in low.scales.items() if k != "output")
    assert low.scales[site].dim() == 1 and paper.scales[site].dim() == 0
    assert sresnet.convert(model, calib, per_channel=False, **kw).scales[site].dim() == 0
    with pytest.raises(TypeError, match="per_channel"):
        sresnet.convert(model, calib, per_channel="yes", **kw)
