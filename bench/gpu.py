"""End to end on one GPU: sresnet's Triton path vs plain torch (cuDNN) and peer libraries.

Run (from the repository root, on a CUDA machine):

    PYTHONPATH=. python bench/gpu.py --data-dir ../shared/data/cifar-10-batches-py \
        --checkpoint ../shared/models/resnet20-12fca82f.th

ResNet-20 converted with the default recipe, B=128 real CIFAR-10 test images, T=64. Order:
convert on the CPU, move to the GPU, check every provider's predictions against sresnet's
(exact peers: at most 1% of images may differ, through near-threshold rounding), then time
each provider (median of --rounds after one warm-up, CUDA-synchronized) with its peak GPU
memory (``torch.cuda.max_memory_allocated``), and print the table last. Every provider runs
in its own try/except: one that fails prints why and is skipped. Without CUDA the script says
so and exits 0; ``--cpu-smoke`` runs the torch/peer paths on the CPU at tiny sizes instead
(to check the script itself).

Providers: ``sresnet-triton`` (``backend="triton"``), ``torch-m`` (convs on the T*B batch
through cuDNN + a torch IF loop over T), SpikingJelly multi-step with each CUDA neuron
implementation it offers (``triton``, ``cuda``, ``torch``; chosen as
``SJ_IF_CUDA_IMPLEMENTATION`` would), snnTorch and Norse per step, and the ANN run T times
(as loaded, and with BatchNorm folded).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402


class TorchIF(nn.Module):
    """A plain torch IF loop over T (subtract reset, v0 = 1/2): the no-library baseline."""

    multi_step = True

    def __init__(self, n: int):
        super().__init__()

    def start(self) -> None:
        pass

    def forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        v = torch.full_like(x[0], peers.V0)
        out = torch.empty_like(x)
        for t in range(x.shape[0]):
            v += x[t]
            s = v >= peers.THRESHOLD
            out[t] = s
            v -= s.to(v.dtype)
        return out


def sj_with_implementation(snn, impl: str):
    """SpikingJelly multi-step with its IF CUDA implementation forced to ``impl``."""
    from spikingjelly._ops import if_ as sj_if

    sel = sj_if._selection
    # what SJ_IF_CUDA_IMPLEMENTATION=impl does at import, redone at run time
    sel._requested = impl
    sel._selections.clear()
    sel._compiled_selections.clear()
    net = peers.build_peer("spikingjelly-m", snn)
    chosen = sel._select(torch.cuda.current_device()).name if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available() and chosen != impl:
        raise RuntimeError(f"SpikingJelly picked {chosen!r} instead of {impl!r}")
    return net


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run, images, T, rounds, device) -> tuple[float, float, torch.Tensor]:
    """(median seconds, peak GPU MiB, scores) after one warm-up call."""
    out = run(images, T)
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = run(images, T)
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="ResNet-20 end to end on a GPU: sresnet Triton vs torch and peers")
    ap.add_argument("--data-dir", default=str(peers.DATA_DIR))
    ap.add_argument("--checkpoint", default=str(peers.CHECKPOINT))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--timesteps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calib", type=int, default=256, help="calibration images for the conversion")
    ap.add_argument("--cpu-smoke", action="store_true", help="no CUDA: run the torch/peer paths on CPU at tiny sizes")
    args = ap.parse_args(argv)

    if torch.cuda.is_available():
        device = torch.device("cuda")
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    elif args.cpu_smoke:
        device = torch.device("cpu")
        args.batch, args.timesteps, args.rounds, args.calib = min(args.batch, 4), min(args.timesteps, 4), 1, 32
        print(f"no CUDA: CPU smoke run at B={args.batch}, T={args.timesteps}")
    else:
        print("no CUDA device: nothing to time (use --cpu-smoke to exercise the script on CPU)")
        return 0
    torch.set_grad_enabled(False)
    T, B = args.timesteps, args.batch

    t0 = time.perf_counter()
    ann, snn, images, labels = peers.load_real(n_test=B, n_calib=args.calib, data_dir=args.data_dir,
                                               checkpoint=args.checkpoint)
    print(f"converted in {time.perf_counter() - t0:.1f} s (CPU)")
    # the CPU path on a slice: the GPU path must agree with it too
    cpu_pred = snn(images[:32], timesteps=min(T, 32)).argmax(1)
    snn, ann, images, labels = snn.to(device), ann.to(device), images.to(device), labels.to(device)

    builders = {
        "sresnet-triton": lambda: peers.sresnet_runner(snn, "triton" if device.type == "cuda" else None),
        "torch-m": lambda: peers.PeerSResNet(snn, TorchIF(len(snn.layers))),
        "spikingjelly-m[triton]": lambda: sj_with_implementation(snn, "triton"),
        "spikingjelly-m[cuda]": lambda: sj_with_implementation(snn, "cuda"),
        "spikingjelly-m[torch]": lambda: sj_with_implementation(snn, "torch"),
        "snntorch": lambda: peers.build_peer("snntorch", snn),
        "norse": lambda: peers.build_peer("norse", snn),
        "ann-xT": lambda: peers.ann_times(ann),
        "ann-folded-xT": lambda: peers.ann_times(peers.fold_bn(ann)),
    }
    exact = ("torch-m", "snntorch") + tuple(k for k in builders if k.startswith("spikingjelly"))
    rows, skipped, ref = {}, {}, None
    for name, build in builders.items():
        try:
            run = build()
            if name == "sresnet-triton":
                small = run(images[:32], min(T, 32)).argmax(1)
                agree = int((small == cpu_pred).sum())
                print(f"sresnet GPU vs CPU path ({len(small)} images, T={min(T, 32)}): {agree}/{len(small)} equal predictions")
            sec, peak, out = measure(run, images, T, args.rounds, device)
            pred = out.argmax(1)
            if ref is None:
                ref = pred
            agree = int((pred == ref).sum())
            if name in exact and agree < B - max(1, B // 100):
                raise AssertionError(f"only {agree}/{B} predictions equal to sresnet's")
            rows[name] = (sec, peak, agree, float((pred == labels).float().mean()))
            print(f"{name}: {sec:.3f} s, peak {peak:.0f} MiB, agrees on {agree}/{B}")
        except Exception as e:
            skipped[name] = f"{type(e).__name__}: {e}"
            print(f"skipped {name}: {skipped[name]}")
            if not isinstance(e, (ImportError, AssertionError)):
                traceback.print_exc(limit=3)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\nResNet-20 end to end, B={B}, T={T}, {device} ({args.rounds} rounds, median)")
    print(f"| provider | median s | image-timesteps/s | peak MiB | agree with sresnet | accuracy | sresnet speedup |")
    print("|---|---|---|---|---|---|---|")
    s0 = rows.get("sresnet-triton", (None,))[0]
    for name, (sec, peak, agree, acc) in sorted(rows.items(), key=lambda kv: kv[1][0]):
        speed = f"{sec / s0:.2f}x" if s0 else "-"
        print(f"| {name} | {sec:.3f} | {B * T / sec:.0f} | {peak:.0f} | {agree}/{B} | {acc:.3f} | {speed} |")
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
