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
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from .convert.compensate import CALIB_SUBSET, CALIB_TIMESTEPS
from .convert.lowlat import DEFAULT_HORIZON
from .convert.pipeline import METHODS
from .convert.weights import check_ridge

if TYPE_CHECKING:  # for annotations only; the commands import what they use when they run
    import torch

    from .preprocess import Preprocess

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
    if text in ("max", "search"):
        return text
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"percentile must be a number in (0, 100], 'max' or 'search', got {text!r}")
    if not 0 < p <= 100:
        raise argparse.ArgumentTypeError(f"percentile must be in (0, 100], 'max' or 'search', got {text!r}")
    return p


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return v


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.485,0.456,0.406, got {text!r}")
    return vals


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors (default: one line)")


def _model_options(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    """Model, data and preprocessing options, shared by eval and convert (which may give --calib-data only)."""
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="resnet20/32/44/56/110 (CIFAR), resnet18/34/50/101/152, wide_resnet50_2, "
                       "wide_resnet101_2 (torchvision structure), or package.module:factory / file.py:factory "
                       "(a callable returning an nn.Module, called with num_classes=K when --num-classes is given)")
    model.add_argument("--arch", help="same as --model (kept for older scripts)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint file: a state dict or {'state_dict': ...} (torch.load weights_only=True); "
                        "required except for a factory")
    p.add_argument("--num-classes", type=_positive, default=None, help="classes of the model's head (default: from the checkpoint)")
    data = p.add_mutually_exclusive_group(required=data_required)
    data.add_argument("--data", type=Path, help="test images: a CIFAR-10/100 pickle folder, an ImageFolder root "
                      "(root/<class>/<image>; a root with train/ and val/ reads val/) or an .npz with 'images' and 'labels'")
    data.add_argument("--data-dir", type=Path, help="folder with the CIFAR python batches (test_batch, data_batch_1); "
                      "without preprocessing flags it implies --preset cifar-imagenet-stats")
    p.add_argument("--calib-data", type=Path, default=None,
                   help="calibration images, same forms as --data (default: CIFAR: data_batch_1 of the --data folder; "
                        "ImageFolder: a train/ folder beside it); never the test images")
    p.add_argument("--preset", default=None, choices=["imagenet", "cifar", "cifar-imagenet-stats"],
                   help="preprocessing: imagenet = shorter side 256, centre crop 224, ImageNet mean/std; cifar = 32x32, "
                        "CIFAR-10 mean/std; cifar-imagenet-stats = 32x32, ImageNet mean/std (pytorch_resnet_cifar10). "
                        "Default: --data-dir/--arch: cifar-imagenet-stats; --model with --data: scale to [0, 1], "
                        "then --mean/--std if given")
    p.add_argument("--mean", type=_floats, default=None, help="per-channel mean of [0, 1] images, e.g. 0.4914,0.4822,0.4465")
    p.add_argument("--std", type=_floats, default=None, help="per-channel std of [0, 1] images, e.g. 0.2470,0.2435,0.2616")
    p.add_argument("--resize", type=_positive, default=None, help="resize the shorter side to N pixels (bilinear, antialiased)")
    p.add_argument("--crop", type=_positive, default=None, help="centre crop N x N pixels (after --resize)")
    p.add_argument("--workers", type=_non_negative, default=0, help="DataLoader processes decoding images (0: in this process)")


def _conversion_options(p: argparse.ArgumentParser) -> None:
    """The options of sresnet.convert, shared by eval and convert."""
    p.add_argument("--calib-size", type=_positive, default=1000,
                   help="calibration images: the first N of --calib-data (ImageFolder: the classes in turn)")
    p.add_argument("--percentile", type=_percentile, default=99.9,
                   help="activation percentile for the scales λ, 'max', or 'search' (least IF quantization error "
                   "at the horizon / calibration T)")
    p.add_argument("--shortcut", default="A", choices=["A", "B"], help="CIFAR ResNet shortcut type of the checkpoint")
    p.add_argument("--method", default="lowlat", choices=list(METHODS),
                   help="lowlat: per-step bias schedule + delayed readout, one network for every T <= --horizon "
                        "(best at T = 8..64); s-resnet: the paper's conversion with a constant bias correction")
    p.add_argument("--horizon", type=_positive, default=None,
                   help=f"lowlat: longest T the bias schedule is calibrated for (later steps reuse a steady bias); "
                        f"default: eval the largest --timesteps, convert {DEFAULT_HORIZON}")
    p.add_argument("--readout-delay", type=_fraction, default=None,
                   help="fraction of T skipped by the readout before it accumulates (default: 0.5 for lowlat, "
                        "0 for s-resnet)")
    p.add_argument("--compensation", default="auto", choices=["auto", "bias", "scale", "scale+bias", "off"],
                   help="auto: the method's calibration (lowlat: bias schedule; s-resnet: calibrated per-channel "
                        "bias); off: none; bias/scale/scale+bias: s-resnet variants")
    p.add_argument("--calib-timesteps", type=_positive, default=CALIB_TIMESTEPS,
                   help="s-resnet: T of the compensation's calibration simulations (the correction is tuned to it)")
    p.add_argument("--calib-subset", type=_positive, default=CALIB_SUBSET,
                   help="calibration images simulated by the layer-by-layer calibration")
    p.add_argument("--readout", default="membrane", choices=["membrane", "spikes"], help="output readout")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="one scale λ per channel instead of per layer (default: on for --method lowlat, off for "
                   "s-resnet)")
    p.add_argument("--no-shortcut-norm", action="store_true", help="ablation: naive per-layer normalization of residual sums")
    p.add_argument("--weight-calibration", type=_ridge, nargs="?", const=True, default=False, metavar="RIDGE",
                   help="lowlat, opt-in: refit each layer's weights to the spike rates it receives (least squares "
                        "against the ANN's current, ridge RIDGE towards the converted weights; the flag alone: "
                        "the default ridge)")


def _ridge(text: str) -> float:
    try:
        return check_ridge(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ridge strength > 0, got {text!r}") from None


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return v


def _conversion_kwargs(args) -> dict:
    horizon = args.horizon if args.horizon is not None else DEFAULT_HORIZON
    if args.horizon is None and getattr(args, "timesteps", None):
        horizon = max(args.timesteps)
    return dict(method=args.method, horizon=horizon, readout_delay=args.readout_delay,
                percentile=args.percentile, per_channel=args.per_channel,
                compensation=None if args.compensation == "off" else args.compensation, readout=args.readout,
                shortcut_norm=not args.no_shortcut_norm, calib_timesteps=args.calib_timesteps,
                calib_subset=args.calib_subset, weight_calibration=args.weight_calibration)


def _preprocess(args: argparse.Namespace) -> Preprocess:
    """The Preprocess of the options: --preset, explicit flags, or the default of the option style used."""
    from .preprocess import make_preprocess

    explicit = dict(mean=args.mean, std=args.std, resize=args.resize, crop=args.crop)
    if args.preset is None and all(v is None for v in explicit.values()):
        if args.arch is not None or args.data_dir is not None:
            return make_preprocess("cifar-imagenet-stats")
    return make_preprocess(args.preset, **explicit)


def _load_model(args: argparse.Namespace) -> tuple[str, torch.nn.Module]:
    from .models import load_checkpoint

    name = args.model or args.arch
    if args.checkpoint is None and ":" not in name:
        raise ValueError(f"--checkpoint is required for --model {name} (only a package.module:factory may go without)")
    return name, load_checkpoint(name, args.checkpoint, shortcut=args.shortcut, num_classes=args.num_classes)


def _describe(prep: dict) -> str:
    parts = [f"preset {prep['preset']}"] if prep["preset"] else []
    parts.append(f"mean {prep['mean']}, std {prep['std']}" if prep["mean"] else
                 "scaled to [0, 1] only (no --preset, --mean or --std)")
    parts += [f"{k} {prep[k]}" for k in ("resize", "crop") if prep[k]]
    return "; ".join(parts)


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="ANN vs SNN accuracy (top-1, top-5) at several T on CIFAR, an ImageFolder or an .npz",
        description="Convert a checkpoint to a spiking network and report ANN and SNN accuracy at every "
        "requested T from one simulation to the largest T. Images are streamed in batches: memory does not "
        "grow with the dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_options(p)
    p.add_argument("--timesteps", type=_timesteps, default=[32, 64, 128], help="comma-separated T values, e.g. 32,64,128")
    p.add_argument("--limit", type=_positive, default=None,
                   help="evaluate on the first N test images (ImageFolder: the classes in turn; None: all)")
    p.add_argument("--skip", type=_non_negative, default=0,
                   help="leave out the first N test images (with --limit: run a long evaluation in parts, then "
                        "add their --json files up with `sresnet merge`)")
    p.add_argument("--batch-size", type=_positive, default=32, help="images per simulation batch")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "numba", "triton"], help="spikekernels backend")
    p.add_argument("--network", type=Path, default=None,
                   help="a network written by `sresnet convert`: simulate it instead of converting (no calibration; "
                        "the conversion options below cannot be given with it)")
    _conversion_options(p)
    p.add_argument("--cost", action="store_true",
                   help="also count synaptic operations and energy per image over the same run")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    p.add_argument("--diagnose", type=Path, default=None, metavar="DIR",
                   help="write DIR/diagnosis.json and DIR/diagnosis.png: per-layer rate error against the ANN "
                        "and first-spike delay at the largest T")
    p.add_argument("--diagnose-images", type=_positive, default=32, help="test images used by --diagnose")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _common(p)
    p.set_defaults(conversion_defaults={dest: p.get_default(dest) for dest in _CONVERSION_FLAGS.values()})


def _run_eval(args) -> int:
    from .distributed import init_from_env
    from .evaluate import evaluate

    shard = init_from_env()
    prep = _preprocess(args)
    if args.network is not None:
        given = [flag for flag, dest in _CONVERSION_FLAGS.items()
                 if getattr(args, dest) != args.conversion_defaults[dest]]
        if given:
            raise ValueError(f"--network is already converted, so {', '.join(given)} cannot be given with it (its own "
                             "conversion settings are used and reported); run `sresnet convert` again to change them")
    name, ann = _load_model(args)
    data = args.data or args.data_dir
    common = dict(preprocess=prep, limit=args.limit, skip=args.skip, batch_size=args.batch_size, workers=args.workers,
                  backend=args.backend, shortcut=args.shortcut, progress=not args.no_progress and shard.rank == 0,
                  cost=args.cost, diagnose=args.diagnose_images if args.diagnose is not None and shard.rank == 0 else 0)
    if args.network is not None:
        from .io import load

        snn = load(args.network)
        arch = snn.info.get("arch")
        if arch is not None and arch != name:
            raise ValueError(f"--network {args.network} was converted from {arch}, not from --model {name}")
        horizon = snn.info.get("horizon")
        if horizon is not None and max(args.timesteps) > horizon and shard.rank == 0:
            print(f"warning: --network {args.network} was calibrated for T <= {horizon}; steps past it reuse a "
                  f"steady bias (--timesteps goes to {max(args.timesteps)})", file=sys.stderr)
        res = evaluate(ann, None, data, args.timesteps, network=snn, **common)
        res["network_file"] = str(args.network)
    else:
        res = evaluate(ann, None, data, args.timesteps, calib_data=args.calib_data, calib_size=args.calib_size,
                       **common, **_conversion_kwargs(args))
    if shard.rank != 0:
        # torchrun: every rank has the merged numbers; rank 0 alone prints and writes
        return 0
    res.update(arch=name, model=name, checkpoint=None if args.checkpoint is None else str(args.checkpoint))
    _print_results(name, res)
    if args.diagnose is not None:
        from .diagnose import write_diagnosis

        files = write_diagnosis(res.pop("diagnosis"), args.diagnose)
        print(f"  diagnosis: {files[0]} and {files[1]}")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


# conversion options (flag: argparse dest) that a saved --network already fixed
_CONVERSION_FLAGS = {
    "--calib-data": "calib_data", "--calib-size": "calib_size", "--percentile": "percentile", "--method": "method",
    "--horizon": "horizon", "--readout-delay": "readout_delay", "--compensation": "compensation",
    "--calib-timesteps": "calib_timesteps", "--calib-subset": "calib_subset", "--readout": "readout",
    "--per-channel": "per_channel", "--no-shortcut-norm": "no_shortcut_norm",
    "--weight-calibration": "weight_calibration",
}


def _print_results(name: str, res: dict) -> None:
    """The table of `sresnet eval` (also printed by `sresnet merge`)."""
    first = res.get("first_image", 0)
    which = f"images {first}..{first + res['num_images'] - 1}" if first else f"{res['num_images']} images"
    if len(res.get("images", [])) > 1:
        which = f"{res['num_images']} images ({', '.join(f'{a}..{b - 1}' for a, b in res['images'])})"
    print(f"{name}: {which} of {res['dataset']['source']}, ANN accuracy "
          f"{100 * res['ann_accuracy']:.2f}% (top-5 {100 * res['ann_top5']:.2f}%)")
    print(f"  preprocessing: {_describe(res['preprocessing'])}")
    for t in res["timesteps"]:
        print(f"  T={t:<5d} SNN accuracy {100 * res['snn_accuracy'][str(t)]:.2f}% (top-5 "
              f"{100 * res['snn_top5'][str(t)]:.2f}%), agrees with ANN on {100 * res['agreement'][str(t)]:.2f}%")
    ips = res["images_per_second"]
    print(f"  firing rate {res['firing_rate']:.4f} spikes/neuron/step; images/s: ANN {ips['ann']:.1f}, "
          f"SNN (T={res['timesteps'][-1]}) {ips['snn']:.2f}")
    if "cost" in res:
        c = res["cost"]
        print(f"  per image at T={c['timesteps']}: {c['sops_per_image']:.3g} synaptic ops (SNN) vs "
              f"{c['ann_macs_per_image']:.3g} MACs (ANN); energy ANN / SNN {c['energy_ratio']:.2f}")


def _add_merge(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="add up the --json results of an evaluation run in parts (--skip/--limit)",
        description="Read the --json files of `sresnet eval` runs over disjoint image ranges of the same network and "
        "test set (e.g. --skip 0 --limit 2500, --skip 2500 --limit 2500, ...), add their counts and print the "
        "accuracies of all their images together. Parts that differ in a setting, or whose images overlap, are "
        "refused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("parts", type=Path, nargs="+", help="result files written by `sresnet eval --json`")
    p.add_argument("--json", type=Path, default=None, help="also write the merged result to this file")
    _common(p)


def _run_merge(args) -> int:
    from .evaluate import merge_results

    parts = []
    for path in args.parts:
        try:
            parts.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not a JSON file of `sresnet eval --json` ({exc})") from None
    res = merge_results(parts, [str(p) for p in args.parts])
    _print_results(res.get("model") or res.get("arch"), res)
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
        description="Load a checkpoint, convert it with calibration images (--calib-data, default: the training "
        "images beside --data) and save the spiking network (tensors only, safe to load; load it with "
        "sresnet.load(path)).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_options(p, data_required=False)
    p.add_argument("--out", required=True, type=Path, help="file to write the converted network to")
    _conversion_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _common(p)


def _run_convert(args) -> int:
    from .convert import convert
    from .data import take
    from .datasets import default_calibration, make_loader, open_dataset
    from .distributed import init_from_env
    from .io import save

    prep = _preprocess(args)
    name, ann = _load_model(args)
    if args.calib_data is None and args.data is None and args.data_dir is None:
        raise ValueError("convert needs calibration images: give --calib-data, or --data/--data-dir to "
                         "calibrate on the training images beside them")
    source = args.calib_data or default_calibration(args.data or args.data_dir)
    ds = open_dataset(source, "calib", prep)
    calib, _ = take(make_loader(ds, min(args.calib_size, 256), args.workers, args.calib_size), args.calib_size)
    shard = init_from_env()
    start = time.perf_counter()
    snn = convert(ann, calib, progress=not args.no_progress and shard.rank == 0, **_conversion_kwargs(args))
    seconds = time.perf_counter() - start
    if shard.rank != 0:
        return 0
    # what `sresnet eval --network` reports about the conversion
    snn.info.update(arch=name, checkpoint=None if args.checkpoint is None else str(args.checkpoint),
                    calibration={"kind": ds.kind, "source": ds.source, "split": "calib"},
                    calib_size=int(calib.shape[0]), calib_timesteps=args.calib_timesteps,
                    calib_subset=min(args.calib_subset, int(calib.shape[0])), convert_seconds=round(seconds, 3))
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
        # the cuda rows say whether a backend takes CUDA tensors; without a device none can run
        nodev = ""
        if dev == "cuda" and not torch.cuda.is_available():
            nodev = " for CUDA tensors, but there is no CUDA device here"
        for b in ("reference", "numba", "triton"):
            reason = _dispatch.unavailable_reason(b, torch.device(dev))
            print(f"  {dev:4s} {b:9s} {'ok' + nodev if reason is None else 'no: ' + reason}")
    try:
        import llvmlite.binding as llvm
        import numba

        from spikekernels.ops.spike_conv import numba_gather

        cpu = numba.config.CPU_NAME or llvm.get_host_cpu_name()
        walk = "a list of active inputs (AVX-512 VBMI2)" if numba_gather.COMPRESS else "a bit walk per word"
        print(f"numba CPU target {cpu}; event-driven conv gathers through {walk}")
    except Exception as exc:  # report, do not fail
        print(f"numba CPU target unavailable ({type(exc).__name__}: {exc})")
    print(f"SPIKEKERNELS_BACKEND={_config.backend()}  TRITON_INTERPRET={int(_config.triton_interpret())}  "
          f"SPIKEKERNELS_CONV_DENSE_DENSITY={_config.conv_dense_density()}")
    return 0


COMMANDS = {
    "demo": (_add_demo, _run_demo),
    "eval": (_add_eval, _run_eval),
    "convert": (_add_convert, _run_convert),
    "merge": (_add_merge, _run_merge),
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


def _user_message(exc: BaseException) -> str:
    """One line for the user: the first line of the error, or the original error of a DataLoader worker."""
    text = str(exc)
    if "Original Traceback" in text:
        # torch re-raises a worker's error as "Caught ValueError in DataLoader worker ...\nOriginal
        # Traceback ...\nValueError: <message>": the last line is what the user needs
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(exc).__name__}: "
        return last[len(prefix):] if last.startswith(prefix) else last
    return text.splitlines()[0] if text else type(exc).__name__


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
        msg = _user_message(exc)
        if isinstance(exc, KeyError):
            msg = f"missing key {msg}"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        from .distributed import shutdown

        shutdown()  # the process group eval/convert started under torchrun
