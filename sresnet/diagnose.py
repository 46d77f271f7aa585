"""Where a converted network loses accuracy: rate error and first-spike delay per layer.

For every spiking layer, at a given T, on a batch of images:

- **rate error**: the mean over neurons and images of |r − a|, r = spikes / T of the neuron,
  a = its target rate: the ANN's normalized activation clip(relu(x)/θ, 0, 1) computed from the
  exact analog activations of the layers below (:meth:`sresnet.executor.Executor.analog_layers`);
  also the signed mean (r − a), which shows a lag (negative) or an excess (positive);
- **first-spike delay**: per image, the first step (1-based) at which any neuron of the layer
  fires, averaged over images (T + 1 for an image whose layer never fired in T steps). Deep
  layers wait for the layers below: the delay grows with depth, and the readout delay of the
  low-latency method skips it.

``python -m sresnet eval ... --diagnose DIR`` writes ``DIR/diagnosis.json`` and
``DIR/diagnosis.png`` (error and delay against depth).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .executor import Executor
from .simulate import SpikingNetwork


def diagnose(snn: SpikingNetwork, images: torch.Tensor, timesteps: int, *, backend: str | None = None) -> dict:
    """Per-layer rate error against the ANN and first-spike delay of ``snn`` at T = ``timesteps``.

    Args:
        snn: a converted network.
        images: normalized ``[B, C, H, W]`` float images (a few dozen are enough).
        timesteps: T >= 1.
        backend: spikekernels backend.

    Returns:
        ``{"timesteps": T, "images": B, "readout_delay": steps skipped by the readout at T,
        "layers": [{"name", "depth" (0-based index among spiking layers), "kind",
        "firing_rate", "target_rate", "rate_error" (mean |r - a|), "mean_error" (mean r - a),
        "first_spike_delay" (steps)}]}``.

    Raises:
        TypeError / ValueError: bad images (as :meth:`SpikingNetwork.forward`) or timesteps.
    """
    snn.check_images(images)
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
    net = snn.network
    T = timesteps
    B = images.shape[0]
    counts: list = [None] * len(net.layers)
    first = [torch.full((B,), T + 1, dtype=torch.int64) for _ in net.layers]

    def observer(i: int, t0: int, spikes: torch.Tensor) -> None:
        s = spikes.detach().to(torch.int32).cpu()
        c = s.sum(0)
        counts[i] = c if counts[i] is None else counts[i] + c
        fired = s.reshape(s.shape[0], B, -1).amax(-1) > 0  # [steps, B]
        step = torch.where(fired, torch.arange(t0 + 1, t0 + 1 + s.shape[0]).view(-1, 1), T + 1).amin(0)
        first[i] = torch.minimum(first[i], step)

    with torch.no_grad():
        acts = Executor(net, "reference").analog_layers(images.float(), clip=False)
        Executor(net, backend).simulate(images.float(), T, observer=observer)
    rows = []
    for i, layer in enumerate(net.layers):
        if layer.kind == "maxpool":
            continue
        target = acts[i][0].clamp(0, 1).cpu()
        rate = counts[i].float() / T
        diff = rate - target
        rows.append({"name": layer.name, "depth": len(rows), "kind": layer.kind,
                     "firing_rate": float(rate.mean()), "target_rate": float(target.mean()),
                     "rate_error": float(diff.abs().mean()), "mean_error": float(diff.mean()),
                     "first_spike_delay": float(first[i].float().mean())})
    return {"timesteps": T, "images": B, "readout_delay": net.readout.delay_for(T), "layers": rows}


def plot_diagnosis(report: dict, path: str | Path) -> Path:
    """Rate error and first-spike delay against depth (needs matplotlib)."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    rows = report["layers"]
    depth = [r["depth"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6.5, 5.5), dpi=120, sharex=True)
    ax1.plot(depth, [r["rate_error"] for r in rows], "o-", label="mean |rate − ANN|")
    ax1.plot(depth, [r["mean_error"] for r in rows], "s--", label="mean (rate − ANN)")
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_ylabel("spikes / neuron / step")
    ax1.set_title(f"rate error and first-spike delay at T={report['timesteps']} ({report['images']} images)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(depth, [r["first_spike_delay"] for r in rows], "o-", color="C2")
    if report.get("readout_delay"):
        ax2.axhline(report["readout_delay"], color="k", ls="--", label=f"readout delay {report['readout_delay']}")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("depth (spiking layer)")
    ax2.set_ylabel("first spike (step)")
    ax2.grid(alpha=0.3)
    return _save(plt, fig, path)


def write_diagnosis(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``diagnosis.json`` and ``diagnosis.png`` into ``out_dir`` (created)."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnosis.json").write_text(json.dumps(report, indent=2))
    return out / "diagnosis.json", plot_diagnosis(report, out / "diagnosis.png")
