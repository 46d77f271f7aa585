"""One provider of the end-to-end race, timed in a process of its own (issue 15).

``bench/peers.py`` times every provider in one process, after ``import spikekernels`` has set
``OMP_WAIT_POLICY=PASSIVE`` for every torch op of that process. Here one provider runs alone,
with the OpenMP settings it would have in a user's program:

- ``sresnet``: ``import spikekernels`` first (what ``import sresnet`` does), so the policy
  applies, as it does for every user of the library;
- the peers and the ANN baselines: ``import torch`` first, so OpenMP keeps its defaults
  (``spikekernels._threads`` leaves the policy alone once torch is imported); ``--passive``
  sets ``OMP_WAIT_POLICY=PASSIVE`` by hand instead, to measure what the policy costs them.

The network is the one ``bench/peers.py`` races (ResNet-20 from the shared checkpoint, the
default conversion on 256 ``data_batch_1`` images), converted once and saved with
``--save PATH`` (run that first), loaded with ``--net PATH``. Prints one line: provider,
T, median seconds of ``--rounds`` runs after one warm-up, image-timesteps per second, the
OpenMP wait policy in effect and torch's thread count.

    PYTHONPATH=. .venv/bin/python bench/one_provider.py --save /tmp/r20.snn
    PYTHONPATH=. .venv/bin/python bench/one_provider.py snntorch --net /tmp/r20.snn --timesteps 128 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROVIDERS = ("sresnet", "spikingjelly-m", "spikingjelly-s", "snntorch", "sinabs", "norse", "ann-xT", "ann-folded-xT")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("provider", nargs="?", choices=PROVIDERS)
    p.add_argument("--net", type=Path, help="the converted network saved by --save")
    p.add_argument("--save", type=Path, help="convert the race's network and save it here, then exit")
    p.add_argument("--timesteps", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--passive", action="store_true", help="set OMP_WAIT_POLICY=PASSIVE for a peer too")
    args = p.parse_args(argv)
    if args.save is None and (args.provider is None or args.net is None):
        p.error("give a provider and --net PATH (made by --save PATH first)")
    if args.passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if args.provider == "sresnet" or args.save is not None:
        import spikekernels  # noqa: F401  (first, as `import sresnet` in a user's program)
    import torch  # the peers' and the ANN's OpenMP keeps its defaults (imported before spikekernels)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peers
    import sresnet

    if args.save is not None:
        _, snn, _, _ = peers.load_real(n_test=1)
        sresnet.save(snn, args.save)
        print(f"saved the converted network to {args.save}")
        return
    snn = sresnet.load(args.net)
    ann = sresnet.load_checkpoint("resnet20", peers.CHECKPOINT).eval()
    images, _ = sresnet.load_cifar(peers.DATA_DIR, "test", limit=args.batch)
    name = args.provider
    if name == "sresnet":
        run = peers.sresnet_runner(snn)
    elif name == "ann-xT":
        run = peers.ann_times(ann)
    elif name == "ann-folded-xT":
        run = peers.ann_times(peers.fold_bn(ann))
    else:
        run = peers.build_peer(name, snn)
    T = args.timesteps
    med = peers.median_seconds(lambda: run(images, T), args.rounds)
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    print(f"{name} T={T} B={args.batch}: median {med:.3f} s of {args.rounds} "
          f"({args.batch * T / med:.0f} image-timesteps/s), OMP_WAIT_POLICY={policy}, "
          f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
