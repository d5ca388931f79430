"""Registry cases of the softmax cross-entropy (integer and soft labels) and the sigmoid
binary cross-entropy (``mse_loss`` is with the autoencoder's layers, :mod:`jaxbp.cases.combine`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxbp import autodiff, manual
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, labels, normal


def _probabilities(n: int, classes: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Rows of a softmax of normal samples: valid soft labels, no entry exactly 0 or 1."""

    def make(rng):
        e = np.exp(rng.standard_normal((n, classes)))
        return e / e.sum(axis=1, keepdims=True)

    return make


def _large(*shape: int, offset: float) -> Callable[[np.random.Generator], np.ndarray]:
    """Normal samples shifted by +-offset at random, gaps of about 2 offset between entries.

    There softmax and sigmoid probabilities round to 0 or 1 in float32 (e^-120 underflows,
    sigmoid(30) == 1), so a naive log(softmax) or log(1 - sigmoid) would be log(0).
    """
    return lambda rng: rng.standard_normal(shape) + offset * rng.choice([-1.0, 1.0], size=shape)


def _uniform(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.random(shape)


SPECS: tuple[LayerSpec, ...] = (
    LayerSpec(
        "softmax_cross_entropy",
        manual.softmax_cross_entropy,
        autodiff.softmax_cross_entropy,
        (
            Case("int-labels", args_of(normal(6, 5), labels(6, 5))),
            # Soft labels are differentiable; the vmap check scales them by 1.25 and 1.5, which the
            # general dlogits = (p sum_c y_c - y)/N handles (rows no longer sum to 1).
            Case("prob-labels", args_of(normal(5, 4), _probabilities(5, 4)), argnums=(0, 1)),
            Case("large-logits", args_of(_large(3, 5, offset=60.0), _probabilities(3, 5)), argnums=(0, 1)),
            Case("single-row", args_of(normal(1, 7), labels(1, 7))),
        ),
        bad_inputs=(
            BadInput("logits-rank", args_of(normal(6), labels(6, 3)), {}, "logits must have rank 2"),
            BadInput("batch-mismatch", args_of(normal(4, 3), labels(5, 3)), {}, r"\(4,\).*\(4, 3\).*\(5,\)"),
            BadInput(
                "int-labels-rank",
                args_of(normal(4, 3), lambda rng: np.zeros((4, 3), np.int32)),
                {},
                r"integer labels must have shape \(4,\)",
            ),
            BadInput(
                "prob-labels-shape",
                args_of(normal(4, 3), _probabilities(4, 2)),
                {},
                r"probability labels must have the logits' shape \(4, 3\).*\(4, 2\)",
            ),
            BadInput("prob-labels-rank", args_of(normal(4, 3), _uniform(4)), {}, r"probability labels.*\(4,\)"),
            BadInput("bool-labels", args_of(normal(4, 3), lambda rng: np.ones(4, bool)), {}, "dtype bool"),
            BadInput(
                "int-logits",
                args_of(lambda rng: np.ones((4, 3), np.int32), labels(4, 3)),
                {},
                "logits must be a floating-point",
            ),
            BadInput("no-classes", args_of(normal(4, 0), labels(4, 1)), {}, "at least one row and one class"),
        ),
        rtol_float32=1e-5,  # observed <= 2e-7: a few ulps of exp/log and of the mean's 1/N
    ),
    LayerSpec(
        "sigmoid_binary_cross_entropy",
        manual.sigmoid_binary_cross_entropy,
        autodiff.sigmoid_binary_cross_entropy,
        (
            Case("matrix", args_of(normal(4, 5), _uniform(4, 5)), argnums=(0, 1)),
            Case("large-logits", args_of(_large(3, 4, offset=30.0), _uniform(3, 4)), argnums=(0, 1)),
            Case(
                "nhwc-hard-targets",
                args_of(normal(2, 3, 3, 2), lambda rng: rng.integers(0, 2, (2, 3, 3, 2)).astype(float)),
                argnums=(0, 1),
            ),
        ),
        bad_inputs=(
            BadInput("shape-mismatch", args_of(normal(4, 5), _uniform(4, 4)), {}, r"\(4, 5\).*\(4, 4\)"),
            BadInput(
                "int-targets",
                args_of(normal(4), lambda rng: np.ones(4, np.int32)),
                {},
                "targets must be a floating-point",
            ),
            BadInput("empty", args_of(normal(0, 3), _uniform(0, 3)), {}, "non-empty"),
        ),
        rtol_float32=1e-5,  # observed <= 3e-7: sigmoid vs autodiff's log1p(exp(-|z|)) derivative, a few ulps
    ),
)
