"""Hybrid conversion: convert a CIFAR ResNet, then fine-tune the spiking network at a short T.

    python examples/finetune.py --checkpoint ../shared/models/resnet20-12fca82f.th \
        --data-dir ../shared/data/cifar-10-batches-py --timesteps 16 --train-images 1000 --test-images 500

Conversion and fine-tuning use training images only (the first --train-images of
data_batch_1, the same images the conversion calibrates on); accuracy before and after is
measured on the first --test-images of test_batch, which the training never sees.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import sresnet


def accuracy(snn: sresnet.SpikingNetwork, images, labels, T: int, batch: int = 50) -> float:
    correct = 0
    for i in range(0, images.shape[0], batch):
        correct += int((snn(images[i : i + batch], timesteps=T).argmax(-1) == labels[i : i + batch]).sum())
    return correct / images.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--timesteps", type=int, default=16)
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    ann = sresnet.load_checkpoint(args.arch, args.checkpoint)
    train_x, train_y = sresnet.load_cifar(args.data_dir, "calib", limit=args.train_images)
    test_x, test_y = sresnet.load_cifar(args.data_dir, "test", limit=args.test_images)
    T = args.timesteps
    t0 = time.perf_counter()
    snn = sresnet.convert(ann, train_x, progress=True)
    convert_s = time.perf_counter() - t0
    before = accuracy(snn, test_x, test_y, T)
    print(f"converted in {convert_s:.0f} s; SNN accuracy at T={T} before fine-tuning: {before:.2%}", flush=True)
    model = sresnet.to_trainable(snn)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(train_x.shape[0])
        bar = tqdm(range(0, train_x.shape[0], args.batch_size), desc=f"epoch {epoch + 1}", unit="batch")
        for i in bar:
            idx = order[i : i + args.batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(train_x[idx], timesteps=T), train_y[idx])
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{float(loss):.3f}")
    train_s = time.perf_counter() - t0
    tuned = model.to_spiking()
    after = accuracy(tuned, test_x, test_y, T)
    with torch.no_grad():
        ann_acc = float((ann.eval()(test_x).argmax(-1) == test_y).float().mean())
    result = {"arch": args.arch, "timesteps": T, "train_images": int(train_x.shape[0]),
              "test_images": int(test_x.shape[0]), "epochs": args.epochs, "lr": args.lr,
              "ann_accuracy": ann_acc, "snn_accuracy_before": before, "snn_accuracy_after": after,
              "convert_seconds": convert_s, "train_seconds": train_s}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
