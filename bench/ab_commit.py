"""spike_conv2d of this checkout against an earlier commit's, in one process (A/B by commit).

The package at ``--base`` (a git commit of this repository) is exported to a temporary folder
under the name ``spikekernels_base`` (its imports and custom-op names rewritten to match), so
both versions and the dense baseline of ``conv_shapes.py`` run in one process on the same
inputs, rounds interleaved with the order rotated each round (medians). Both versions' spikes
are checked to be identical, and close to the dense baseline's, before timing. Numba compiles
the base's kernels on first use (a minute or two; they are cached in the temporary folder only).

    PYTHONPATH=. .venv/bin/python bench/ab_commit.py --base 5466c94                 # uint8 spikes
    PYTHONPATH=. .venv/bin/python bench/ab_commit.py --base 5466c94 --dtype float32 --only r18
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import spikekernels as sk  # first: the OpenMP wait policy every provider runs under
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_shapes import SHAPES, inputs  # noqa: E402
from test_bench_conv import DenseIF  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BASE_NAME = "spikekernels_base"


def export_base(commit: str, into: Path):
    """``spikekernels`` at ``commit`` as the importable package ``spikekernels_base`` in ``into``."""
    try:
        blob = subprocess.run(["git", "-C", str(REPO), "archive", commit, "spikekernels"], check=True,
                              capture_output=True).stdout
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"--base {commit!r}: git archive failed: {err.stderr.decode().strip()}") from None
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        # the "data" filter where this Python has it (3.11.4 and later): plain files only
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (into / "spikekernels").rename(into / BASE_NAME)
    pattern = re.compile(r"\bspikekernels(?=[.:]|\b)")
    for path in (into / BASE_NAME).rglob("*.py"):
        text = path.read_text()
        path.write_text(pattern.sub(BASE_NAME, text))
    sys.path.insert(0, str(into))
    return importlib.import_module(BASE_NAME)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="git commit of this repository to compare against")
    p.add_argument("--dtype", choices=["uint8", "float32"], default="uint8")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--timesteps", type=int, default=32)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--only", default="", help="substring of the shape names to run")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: accepted: 1 or more")
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        base = export_base(args.base, Path(tmp))
        print(f"B={args.batch} T={args.timesteps} density={args.density} spikes {args.dtype}, {args.rounds} rounds; "
              f"base {args.base}; load average {os.getloadavg()[0]:.2f}")
        print(f"{'layer':22s} {'base ms':>8s} {'this ms':>8s} {'dense ms':>9s} {'base/this':>9s} "
              f"{'dense/base':>10s} {'dense/this':>10s}")
        for name, shape in SHAPES.items():
            if args.only not in name:
                continue
            stride, padding = shape[4], shape[5]
            s, w, b = inputs(shape, args.density, args.batch, args.timesteps, dtype)
            dense = DenseIF(s, w, b, stride=stride, padding=padding, out_dtype=s.dtype)
            fns = {
                "base": lambda: base.spike_conv2d(s, w, b, stride=stride, padding=padding, backend="numba"),
                "this": lambda: sk.spike_conv2d(s, w, b, stride=stride, padding=padding, backend="numba"),
                "dense": lambda: dense(s),
            }
            ref = fns["dense"]()
            for key in ("base", "this"):
                frac = (fns[key]() != ref).float().mean().item()
                assert frac < 1e-3, f"{name}: {key} disagrees with the dense baseline on {frac:.2e} of spikes"
            assert torch.equal(fns["base"](), fns["this"]()), f"{name}: base and this checkout give different spikes"
            times: dict = {key: [] for key in fns}
            keys = list(fns)
            for r in range(args.rounds):
                for key in keys[r % 3:] + keys[:r % 3]:
                    t0 = time.perf_counter()
                    fns[key]()
                    times[key].append(time.perf_counter() - t0)
            m = {key: statistics.median(v) * 1e3 for key, v in times.items()}
            print(f"{name:22s} {m['base']:8.2f} {m['this']:8.2f} {m['dense']:9.2f} {m['base'] / m['this']:8.2f}x "
                  f"{m['dense'] / m['base']:9.2f}x {m['dense'] / m['this']:9.2f}x", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
