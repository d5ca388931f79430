"""PyTorch twin of ``experiments/fashion_mnist.py``: the same run, outside JAX.

A cross-check of the recorded Fashion-MNIST numbers: cnn-bn and the recipe of
``fashion_mnist.CONFIG`` (Adam, cosine schedule per step, batch 128, random shifts,
15 epochs) written in PyTorch, started from jaxbp's own initial parameters (converted
to PyTorch's layouts) and fed jaxbp's own batches (same shuffling, same shifts), so the
two runs differ only in the framework's arithmetic and in two details: PyTorch's last
partial batch has its 96 rows (jaxbp pads it to 128 and masks the loss), and its
batch-norm running variance is the unbiased one. Writes
``experiments/results/fashion_mnist_pytorch.json``.

PyTorch is not a dependency of jaxbp: this script runs only where it is installed.

    python experiments/fashion_mnist_pytorch.py               # 12 min with --threads 1 on a shared 2-core CPU
    python experiments/fashion_mnist_pytorch.py --epochs 1    # a smoke run (not written to results/)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from jaxbp import data, models

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fashion_mnist import CONFIG  # noqa: E402  (the recipe being mirrored)

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - depends on the machine
    torch = None


def torch_model(params: dict, model_state: dict, num_classes: int, dropout: float) -> nn.Module:
    """cnn-bn in PyTorch (NCHW), its weights copied from jaxbp's params (NHWC/HWIO)."""
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32, momentum=0.1, eps=1e-5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64, momentum=0.1, eps=1e-5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, num_classes),
    )  # fmt: skip
    t = {k: {n: torch.tensor(np.asarray(v)) for n, v in p.items()} for k, p in params.items()}
    with torch.no_grad():
        for i, name in ((0, "conv1"), (4, "conv2")):
            net[i].weight.copy_(t[name]["w"].permute(3, 2, 0, 1))  # HWIO -> OIHW
            net[i].bias.copy_(t[name]["b"])
        for i, name in ((1, "bn1"), (5, "bn2")):
            net[i].weight.copy_(t[name]["gamma"])
            net[i].bias.copy_(t[name]["beta"])
            net[i].running_mean.copy_(torch.tensor(np.asarray(model_state[name]["mean"])))
            net[i].running_var.copy_(torch.tensor(np.asarray(model_state[name]["var"])))
        # jaxbp flattens (7, 7, 64) in HWC order, PyTorch (64, 7, 7) in CHW order.
        w1 = t["dense1"]["w"].reshape(7, 7, 64, 128).permute(2, 0, 1, 3).reshape(64 * 7 * 7, 128)
        net[9].weight.copy_(w1.T)
        net[9].bias.copy_(t["dense1"]["b"])
        net[12].weight.copy_(t["dense2"]["w"].T)
        net[12].bias.copy_(t["dense2"]["b"])
    return net


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=CONFIG.epochs)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--results", default=str(HERE / "results"), help="where the JSON goes")
    args = p.parse_args(argv)
    if torch is None:
        print("fashion_mnist_pytorch.py: PyTorch is not installed (it is not a jaxbp dependency)", file=sys.stderr)
        return 2
    config = dataclasses.replace(CONFIG, epochs=args.epochs)
    if config.model != "cnn-bn" or config.optimizer != "adam" or config.weight_decay or config.label_smoothing:
        raise SystemExit(f"this twin mirrors cnn-bn with plain Adam; CONFIG is {config}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)  # dropout masks (the data order and shifts come from jaxbp)

    ds = data.load(config.dataset, args.data_dir, seed=config.seed)
    model = models.get_model(config.model, ds.num_classes, dropout=config.dropout, init=config.init)
    _, params, model_state = model.init(np.random.default_rng(config.seed), ds.input_shape)  # as train.fit does
    net = torch_model(params, model_state, ds.num_classes, config.dropout)

    steps_per_epoch = data.num_batches(len(ds.x_train), config.batch_size, config.drop_last)
    total = steps_per_epoch * config.epochs
    opt = torch.optim.Adam(net.parameters(), lr=config.learning_rate, eps=1e-8)
    if config.schedule == "cosine":  # optax.cosine_decay_schedule: lr * (1 + cos(pi * step / total)) / 2
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss_fn = nn.CrossEntropyLoss()
    augment = data.batch_augmenter(config, ds)  # the very shifts jaxbp's run draws
    x_test = torch.tensor(np.transpose(ds.x_test, (0, 3, 1, 2)))
    y_test = torch.tensor(ds.y_test.astype(np.int64))

    history, start = [], time.perf_counter()
    for epoch in range(config.epochs):
        net.train()
        t0, sums = time.perf_counter(), [0.0, 0, 0]
        batches = data.batches(ds.x_train, ds.y_train, config.batch_size, seed=config.seed, epoch=epoch)
        for batch_index, (xb, yb, n_valid) in enumerate(batches):
            xb = augment(xb, epoch, batch_index)
            x = torch.tensor(np.ascontiguousarray(np.transpose(xb[:n_valid], (0, 3, 1, 2)), np.float32))
            y = torch.tensor(yb[:n_valid].astype(np.int64))
            opt.zero_grad()
            logits = net(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            sched.step()
            sums = [sums[0] + loss.item() * n_valid, sums[1] + int((logits.argmax(1) == y).sum()), sums[2] + n_valid]
        train_s = time.perf_counter() - t0
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(x_test[i : i + 1000]) for i in range(0, len(x_test), 1000)])
            test_loss = float(loss_fn(logits, y_test))
            test_acc = float((logits.argmax(1) == y_test).float().mean())
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": sums[0] / sums[2],
                "train_accuracy": sums[1] / sums[2],
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "examples_per_s": sums[2] / train_s,
            }
        )
        print(f"epoch {epoch + 1:2d}  train loss {sums[0] / sums[2]:.4f}  test accuracy {test_acc:.4f}", flush=True)

    wall = time.perf_counter() - start
    result = {
        "description": "PyTorch twin of fashion_mnist.py: same initial parameters, batches and shifts as jaxbp",
        "config": dataclasses.asdict(config),
        "torch_version": torch.__version__,
        "threads": args.threads,
        "test_accuracy": history[-1]["test_accuracy"],
        "wall_time_s": wall,
        "examples_per_s": sum(h["examples_per_s"] for h in history) / len(history),
        "test_accuracy_per_epoch": [h["test_accuracy"] for h in history],
        "train_loss_per_epoch": [h["train_loss"] for h in history],
        "history": history,
    }
    smoke = args.epochs != CONFIG.epochs
    out = Path(args.results) / "fashion_mnist_pytorch.json"
    if smoke:
        print(json.dumps(result, indent=2))
        return 0
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"test accuracy {result['test_accuracy']:.4f} after {config.epochs} epochs, {wall:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
