"""Plots of an evaluation report (the dict that ``eval --json`` and ``demo`` write).

matplotlib is an optional dependency (``pip install 'spikekernels[demo]'``); without it the
functions raise ImportError saying so.
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib (or 'spikekernels[demo]')") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path) -> Path:
    """Lay out, write and close ``fig``; returns the path written."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def accuracy_vs_timesteps(report: dict, path: str | Path) -> Path:
    """SNN accuracy against T (log2 axis), with the ANN's accuracy as a horizontal line."""
    plt = _pyplot()
    ts = [int(t) for t in report["snn_accuracy"]]
    acc = [100 * report["snn_accuracy"][str(t)] for t in ts]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.plot(ts, acc, "o-", label="SNN")
    ax.axhline(100 * report["ann_accuracy"], color="k", ls="--", label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts, [str(t) for t in ts])
    ax.set_xlabel("time steps T")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{report.get('arch', 'network')}: accuracy vs time steps")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def firing_rates(report: dict, path: str | Path) -> Path:
    """Bar chart of the firing rate (spikes per neuron per step) of every spiking layer."""
    plt = _pyplot()
    rates = report["firing_rate_per_layer"]
    names = list(rates)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.32 * len(names) + 2), 3.8), dpi=120)
    ax.bar(range(len(names)), [rates[n] for n in names])
    ax.axhline(report["firing_rate"], color="k", ls="--", label=f"mean {report['firing_rate']:.3f}")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("spikes / neuron / step")
    ax.set_title("firing rate per layer")
    ax.legend()
    return _save(plt, fig, path)
