"""Per-step cost of the default (lowlat) ResNet-20 network vs the paper's (s-resnet) network.

The default conversion gives every neuron layer a per-step bias schedule. "lowlat" passes
its rows to the fused conv as ``step_bias`` (the executor's code); "lowlat-folded" is the
executor's previous code, kept here for the comparison only: the rows added to a float
residual ``[steps, B, C, H, W]`` (the uint8 spike shortcut then becomes a float current).
"s-resnet" is the paper's network (no schedule), "ann x T" the ANN run T times. One process,
providers interleaved round by round, medians; the scores of the two lowlat paths are
compared first (they must be bit-identical). Needs the shared checkpoint and CIFAR-10.

    PYTHONPATH=. .venv/bin/python bench/lowlat_step.py --timesteps 128 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import spikekernels as sk  # first: the OpenMP wait policy every provider runs under
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import CHECKPOINT, DATA_DIR  # noqa: E402


def folded_run_layer(self, i, outs, steps, state, stem_current=None, t0=0, *, _current=None):
    """The executor's run_layer before step_bias, for the scheduled IF layers with a main op."""
    from sresnet.executor import apply_op

    layer = self.net.layers[i]
    nrn = layer.neuron
    rows = None if layer.kind == "maxpool" else nrn.bias_rows(t0, steps)
    if rows is None or nrn.kind != "if" or layer.kind == "stem" or layer.main is None:
        return _current(self, i, outs, steps, state, stem_current, t0)
    be, main = self.backend, layer.main
    x = outs[main.source]
    for op in main.pre:
        x = apply_op(op, x, be)
    residual = self.currents(layer.others, outs) if layer.others else None
    if main.kind == "conv":
        kh, kw = main.weight.shape[2:]
        shape = (steps, x.shape[1], main.weight.shape[0],
                 (x.shape[3] + 2 * main.padding[0] - kh) // main.stride[0] + 1,
                 (x.shape[4] + 2 * main.padding[1] - kw) // main.stride[1] + 1)
    else:
        shape = (steps, x.shape[1], main.weight.shape[0])
    extra = rows.view(steps, 1, -1, *([1] * (len(shape) - 3)))
    residual = extra.expand(shape) if residual is None else residual + extra
    kw = dict(return_state=True, spike_dtype=self.spike_dtype, backend=be, threshold=nrn.threshold,
              v0=state if state is not None else nrn.v0, reset=nrn.reset, residual=residual, residual_scale=1.0)
    if main.kind == "conv":
        return sk.spike_conv2d(x, main.weight, main.bias, main.stride, main.padding, **kw)
    return sk.spike_linear(x, main.weight, main.bias, **kw)


def main(argv: list[str] | None = None) -> None:
    import functools

    import sresnet
    from sresnet.executor import Executor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timesteps", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    T = args.timesteps
    ann = sresnet.load_checkpoint("resnet20", CHECKPOINT).eval()
    images, _ = sresnet.load_cifar(DATA_DIR, "test", limit=args.batch)
    calib, _ = sresnet.load_cifar(DATA_DIR, "calib", limit=args.calib)
    torch.manual_seed(0)
    t = time.perf_counter()
    lowlat = sresnet.convert(ann, calib, horizon=T)
    print(f"convert lowlat (horizon {T}): {time.perf_counter() - t:.1f} s", flush=True)
    torch.manual_seed(0)
    paper = sresnet.convert(ann, calib, method="s-resnet")
    current = Executor.run_layer
    folded = functools.partialmethod(folded_run_layer, _current=current)

    def run_folded():
        Executor.run_layer = folded
        try:
            return lowlat(images, timesteps=T)
        finally:
            Executor.run_layer = current

    def run_ann():
        with torch.no_grad():
            for _ in range(T):
                ann(images)

    providers = {
        "lowlat": lambda: lowlat(images, timesteps=T),
        "lowlat-folded": run_folded,
        "s-resnet": lambda: paper(images, timesteps=T),
        "ann x T": run_ann,
    }
    same = torch.equal(providers["lowlat"](), run_folded())
    print(f"lowlat scores bit-identical to the folded path: {same}", flush=True)
    times: dict[str, list[float]] = {k: [] for k in providers}
    for r in range(args.rounds + 1):
        for name, fn in providers.items():
            t = time.perf_counter()
            fn()
            if r:  # round 0 warms up (Numba compilation, weight caches)
                times[name].append(time.perf_counter() - t)
    ann_t = statistics.median(times["ann x T"])
    print(f"T={T} B={args.batch}, medians of {args.rounds} rounds after 1 warm-up, torch threads "
          f"{torch.get_num_threads()}")
    print("| network | s per run | ms per step | ANN x T / network |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.3f} | {1e3 * m / T:.2f} | {ann_t / m:.2f}x |")


if __name__ == "__main__":
    main()
