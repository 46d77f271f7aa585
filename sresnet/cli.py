"""Command line: ``python -m sresnet <command> ...``.

Each command is a subparser registered by a ``_add_<name>`` function and run by a
``_run_<name>`` function; add a command by writing both and listing it in COMMANDS.
User errors (missing files, bad names, malformed data) print one ``error: ...`` line and
exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from .convert.compensate import CALIB_SUBSET, CALIB_TIMESTEPS

USER_ERRORS = (FileNotFoundError, IsADirectoryError, PermissionError, ValueError, TypeError, KeyError)


def _timesteps(text: str) -> list[int]:
    try:
        ts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"timesteps must be comma-separated positive ints, got {text!r}")
    if not ts or any(t < 1 for t in ts):
        raise argparse.ArgumentTypeError(f"timesteps must be comma-separated positive ints, got {text!r}")
    return ts


def _percentile(text: str):
    if text == "max":
        return "max"
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"percentile must be a number in (0, 100] or 'max', got {text!r}")
    if not 0 < p <= 100:
        raise argparse.ArgumentTypeError(f"percentile must be in (0, 100] or 'max', got {text!r}")
    return p


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return v


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors (default: one line)")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help="architecture: resnet20/32/44/56/110 (CIFAR) or resnet18/34/50/101")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file (pytorch_resnet_cifar10 format or a state dict)")
    p.add_argument("--data-dir", required=True, type=Path, help="folder with the CIFAR python batches (test_batch, data_batch_1)")


def _conversion_options(p: argparse.ArgumentParser) -> None:
    """The options of sresnet.convert, shared by eval and convert."""
    p.add_argument("--calib-size", type=_positive, default=1000, help="calibration images from data_batch_1")
    p.add_argument("--percentile", type=_percentile, default=99.9, help="activation percentile for the scales λ, or 'max'")
    p.add_argument("--shortcut", default="A", choices=["A", "B"], help="CIFAR ResNet shortcut type of the checkpoint")
    p.add_argument("--compensation", default="auto", choices=["auto", "bias", "scale", "scale+bias", "off"],
                   help="conversion-error compensation (auto = calibrated per-channel bias correction)")
    p.add_argument("--calib-timesteps", type=_positive, default=CALIB_TIMESTEPS,
                   help="T of the compensation's calibration simulations; the correction is tuned to "
                        "this T, so match it to the T you deploy")
    p.add_argument("--calib-subset", type=_positive, default=CALIB_SUBSET, help="calibration images simulated by the compensation")
    p.add_argument("--readout", default="membrane", choices=["membrane", "spikes"], help="output readout")
    p.add_argument("--per-channel", action="store_true", help="one scale λ per channel instead of per layer")
    p.add_argument("--no-shortcut-norm", action="store_true", help="ablation: naive per-layer normalization of residual sums")


def _conversion_kwargs(args) -> dict:
    return dict(percentile=args.percentile, per_channel=args.per_channel,
                compensation=None if args.compensation == "off" else args.compensation, readout=args.readout,
                shortcut_norm=not args.no_shortcut_norm, calib_timesteps=args.calib_timesteps,
                calib_subset=args.calib_subset)


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="ANN vs SNN accuracy on CIFAR at several T",
        description="Convert a checkpoint to a spiking network and report ANN and SNN accuracy at every "
        "requested T from one simulation to the largest T.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_options(p)
    p.add_argument("--timesteps", type=_timesteps, default=[32, 64, 128], help="comma-separated T values, e.g. 32,64,128")
    p.add_argument("--limit", type=_positive, default=None, help="evaluate on the first N test images (None: all 10,000)")
    p.add_argument("--batch-size", type=_positive, default=32, help="images per simulation batch")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "numba", "triton"], help="spikekernels backend")
    _conversion_options(p)
    p.add_argument("--cost", action="store_true",
                   help="also count synaptic operations and energy per image over the same run")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _common(p)


def _run_eval(args) -> int:
    from .evaluate import evaluate

    res = evaluate(
        args.arch, args.checkpoint, args.data_dir, args.timesteps, limit=args.limit, batch_size=args.batch_size,
        backend=args.backend, calib_size=args.calib_size, shortcut=args.shortcut, progress=not args.no_progress,
        cost=args.cost, **_conversion_kwargs(args),
    )
    print(f"{res['arch']}: {res['num_images']} images, ANN accuracy {100 * res['ann_accuracy']:.2f}%")
    for t in res["timesteps"]:
        print(f"  T={t:<5d} SNN accuracy {100 * res['snn_accuracy'][str(t)]:.2f}%  "
              f"(agrees with ANN on {100 * res['agreement'][str(t)]:.2f}%)")
    ips = res["images_per_second"]
    print(f"  firing rate {res['firing_rate']:.4f} spikes/neuron/step; images/s: ANN {ips['ann']:.1f}, "
          f"SNN (T={res['timesteps'][-1]}) {ips['snn']:.2f}")
    if "cost" in res:
        c = res["cost"]
        print(f"  per image at T={c['timesteps']}: {c['sops_per_image']:.3g} synaptic ops (SNN) vs "
              f"{c['ann_macs_per_image']:.3g} MACs (ANN); energy ANN / SNN {c['energy_ratio']:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train, convert and simulate a small ResNet on built-in data (no download)",
        description="Train a small ResNet on scikit-learn's 8x8 digits (about a minute on 2 CPU cores), convert it "
        "to a spiking network, simulate it at several T and write report.json, accuracy_vs_T.png and "
        "firing_rates.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--quick", action="store_true", help="reduced run (narrow net, 2 epochs, T up to 16), for tests")
    p.add_argument("--timesteps", type=_timesteps, default=None,
                   help="comma-separated T values (default 8,16,32,64,128; 4,8,16 with --quick)")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "numba", "triton"], help="spikekernels backend")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, initialization and training")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _common(p)


def _run_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, timesteps=args.timesteps, backend=args.backend, seed=args.seed,
             progress=not args.no_progress)
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint once and save the spiking network",
        description="Load a CIFAR ResNet checkpoint, convert it with calibration images from data_batch_1 and save "
        "the spiking network (tensors only, safe to load; load it with sresnet.load(path)).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_options(p)
    p.add_argument("--out", required=True, type=Path, help="file to write the converted network to")
    _conversion_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _common(p)


def _run_convert(args) -> int:
    from .convert import convert
    from .data import load_cifar
    from .io import save
    from .models import load_checkpoint

    ann = load_checkpoint(args.arch, args.checkpoint, shortcut=args.shortcut)
    calib, _ = load_cifar(args.data_dir, "calib", limit=args.calib_size)
    snn = convert(ann, calib, progress=not args.no_progress, **_conversion_kwargs(args))
    snn.info["arch"] = args.arch
    path = save(snn, args.out)
    print(f"wrote {path} ({len(snn.layers)} spiking layers, readout {snn.readout})")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="versions, available backends, whether Triton and CUDA are usable",
        description="Print library and dependency versions, the spikekernels backends usable on CPU and CUDA "
        "tensors in this process (with the reason when one is not), and the environment variables in effect.",
    )
    _common(p)


def _run_info(args) -> int:
    import os
    import platform

    import torch

    import spikekernels
    from spikekernels import _config, _dispatch

    from . import __version__

    def version(mod: str) -> str:
        try:
            return __import__(mod).__version__
        except Exception as exc:  # report, do not fail: info is for diagnosing broken installs
            return f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"

    print(f"sresnet {__version__}, spikekernels {spikekernels.__version__}")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    for mod in ("torch", "numpy", "numba", "triton"):
        print(f"{mod:12s} {version(mod)}")
    print(f"CUDA         {'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
    for dev in ("cpu", "cuda"):
        for b in ("reference", "numba", "triton"):
            reason = _dispatch.unavailable_reason(b, torch.device(dev))
            print(f"  {dev:4s} {b:9s} {'ok' if reason is None else 'no: ' + reason}")
    print(f"SPIKEKERNELS_BACKEND={_config.backend()}  TRITON_INTERPRET={int(_config.triton_interpret())}  "
          f"SPIKEKERNELS_CONV_DENSE_DENSITY={_config.conv_dense_density()}")
    return 0


COMMANDS = {
    "demo": (_add_demo, _run_demo),
    "eval": (_add_eval, _run_eval),
    "convert": (_add_convert, _run_convert),
    "info": (_add_info, _run_info),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sresnet",
        description="Convert trained ResNets into spiking ResNets (S-ResNet) and simulate them.",
    )
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return COMMANDS[args.command][1](args)
    except USER_ERRORS as exc:
        if debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, KeyError):
            msg = f"missing key {msg}"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
