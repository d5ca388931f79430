"""Your own layer in a jaxbp model: a custom_vjp activation, verified, then trained.

    swish(x) = x * s,          s = sigmoid(x)
    dx       = dy * (s + x s (1 - s))      (product rule; sigmoid' = s (1 - s))

Run ``python examples/custom_layer.py`` to verify the backward against ``jax.grad`` and
finite differences, then train the model on digits with both gradients side by side; the
same from the command line:

    jaxbp train --model examples/custom_layer.py:make_model --grad compare

``models.Custom`` runs ``swish`` (the hand-derived backward) when the model runs on
``jaxbp.manual`` and ``swish_reference`` (differentiated by ``jax.grad``) on
``jaxbp.autodiff``; ``--grad compare`` computes both gradients every step (a float32 guard
against gross bugs), recomputes whole steps in float64 at the first step and at the end of
every epoch (``--audit-every``), where rounding cannot hide a small bug, and stops the run
if an audit finds them disagreeing.
"""

import json
from pathlib import Path

import jax
import numpy as np

import jaxbp
from jaxbp import models
from jaxbp.train import TrainConfig, fit


# --8<-- [start:layer]
def swish_reference(x):
    return x * jax.nn.sigmoid(x)


@jax.custom_vjp
def swish(x):
    return swish_reference(x)


def swish_fwd(x):
    s = jax.nn.sigmoid(x)
    return x * s, (x, s)  # save what the backward reads


def swish_bwd(res, dy):
    x, s = res
    return (dy * (s + x * s * (1 - s)),)  # dx = dy (s + x s (1 - s))


swish.defvjp(swish_fwd, swish_bwd)


def make_model(num_classes: int) -> models.Model:
    """A small CNN with swish activations (any input size: H and W are pooled away)."""
    act = models.Custom(manual=swish, reference=swish_reference, name="swish")
    return models.serial(
        models.Conv(16), models.BatchNorm(), act, models.MaxPool(2),
        models.Conv(32), models.BatchNorm(), act,
        models.GlobalAvgPool, models.Dense(num_classes, init="glorot"),
    )  # fmt: skip


# --8<-- [end:layer]


if __name__ == "__main__":
    report = jaxbp.verify_vjp(swish, swish_reference, np.random.default_rng(0).standard_normal((4, 5)), name="swish")
    print(report)
    assert report.passed, "fix swish_bwd before training with it"

    # What `jaxbp train --model examples/custom_layer.py:make_model --grad compare` runs: both
    # gradients every step, the manual ones applied, steps audited in float64, the run stopped
    # if an audit finds them disagreeing.
    config = TrainConfig(model=f"{Path(__file__)}:make_model", grad="compare", epochs=3, val_split=0.1)
    result = fit(config, overwrite=True)
    audits = json.loads(result.paths["summary"].read_text())["audits"]
    print(
        f"validation accuracy {result.val_accuracy:.4f}, test accuracy {result.test_accuracy:.4f}; "
        f"worst float32 error {result.worst_agreement['max_rel_err']:.1e} ({result.worst_agreement['param']}), "
        f"{audits['count']} float64 audits, worst {audits['worst']['error']:.1e}; run folder {result.out_dir}"
    )
