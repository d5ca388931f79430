"""The convolutional autoencoder (:func:`jaxbp.models.autoencoder`) on Fashion-MNIST, trained twice
from the same initial weights on the same batches: once with jaxbp's hand-derived gradients
(``jaxbp.manual``: strided convolutions down, ``conv_transpose2d`` up, ``mse_loss``) and once with
``jax.grad`` of the plain-JAX twins (``jaxbp.autodiff``). Both runs use Adam, float32.

Written to the JSON: each run's reconstruction loss per step and the test loss per epoch, the
largest relative difference between the two loss curves, the time per step (median over the
run's steps after the first, which compiles), and the CPU. Hyper-parameters are fixed, not
tuned: nothing here is selected on the test split.

    python experiments/autoencoder.py [--epochs 2] [--train-size 12000] [--json experiments/results/autoencoder.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def train(ops, model, params, data, args) -> dict:
    """Adam on ``mse_loss(model(x), x)``; the losses per step, the test loss per epoch, the step times."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxbp import data as jdata

    optimizer = optax.adam(args.learning_rate)

    def loss_fn(p, x):
        return ops.mse_loss(model.apply(p, x, ops=ops)[0], x)

    @jax.jit
    def step(p, opt_state, x):
        loss, grads = jax.value_and_grad(loss_fn)(p, x)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    test_loss = jax.jit(loss_fn)
    x_train, x_test = data
    opt_state = optimizer.init(params)
    losses, times, tests = [], [], []
    for epoch in range(args.epochs):
        for xb, _, _ in jdata.batches(x_train, np.zeros(len(x_train)), args.batch_size, seed=0, epoch=epoch,
                                      drop_last=True):  # fmt: skip
            t0 = time.perf_counter()
            params, opt_state, loss = step(params, opt_state, jnp.asarray(xb))
            losses.append(float(loss))
            times.append(time.perf_counter() - t0)
        tests.append(float(np.mean([float(test_loss(params, jnp.asarray(x_test[i : i + 500])))
                                    for i in range(0, len(x_test), 500)])))  # fmt: skip
    return {"losses": losses, "test_loss_per_epoch": tests, "step_ms_median": 1e3 * float(np.median(times[1:]))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--json", default="experiments/results/autoencoder.json")
    args = parser.parse_args(argv)

    import numpy as np

    from jaxbp import autodiff, data, manual, models, xla_flags

    ds = data.load(args.dataset)
    x_train, x_test = ds.x_train[: args.train_size], ds.x_test
    model = models.autoencoder(channels=x_train.shape[-1])
    _, params, _ = model.init(0, x_train.shape[1:])
    runs = {name: train(ops, model, params, (x_train, x_test), args)
            for name, ops in (("manual", manual), ("autodiff", autodiff))}  # fmt: skip
    m, a = np.asarray(runs["manual"]["losses"]), np.asarray(runs["autodiff"]["losses"])
    result = {
        "command": "python experiments/autoencoder.py " + " ".join(argv or []),
        "cpu": xla_flags.describe(),
        "dataset": args.dataset,
        "train_size": len(x_train),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "steps": len(m),
        "max_rel_loss_difference": float(np.max(np.abs(m - a) / np.abs(a))),
        "runs": runs,
    }
    print(f"{args.dataset}, {len(m)} steps: final train loss manual {m[-1]:.5f}, autodiff {a[-1]:.5f}; "
          f"largest relative difference of the loss curves {result['max_rel_loss_difference']:.2e}")  # fmt: skip
    for name, run in runs.items():
        print(f"  {name}: test loss per epoch {run['test_loss_per_epoch']}, {run['step_ms_median']:.1f} ms/step")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
