"""Registry cases of ``concatenate`` (the U-Net skip) and ``mse_loss`` (the reconstruction loss)."""

from __future__ import annotations

import numpy as np

from jaxbp import autodiff, manual
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, normal


def _arrays(*shapes: tuple[int, ...], container=list):
    """One argument: a list (or tuple) of normal arrays of the given shapes."""
    return lambda rng: (container(rng.standard_normal(s) for s in shapes),)


SPECS = (
    LayerSpec(
        "concatenate",
        manual.concatenate,
        autodiff.concatenate,
        (
            Case("channels-three", _arrays((1, 2, 3, 2), (1, 2, 3, 1), (1, 2, 3, 3))),
            Case("axis1-tuple", _arrays((2, 1, 3, 2), (2, 3, 3, 2), container=tuple), {"axis": 1}),
            Case("single", _arrays((3, 4))),
        ),
        bad_inputs=(
            BadInput("shape-mismatch", _arrays((1, 2, 3, 2), (1, 3, 3, 1)), {}, r"except along axis 3.*\(1, 3, 3, 1\)"),
            BadInput("empty", lambda rng: ([],), {}, "non-empty list or tuple"),
            BadInput("rank-mismatch", _arrays((2, 3), (2, 3, 1)), {}, "one rank"),
            BadInput("axis", _arrays((2, 3), (2, 3)), {"axis": 2}, "axis 2 is out of range"),
            BadInput(
                "dtype-mismatch",
                lambda rng: ([np.ones((2, 3), np.float32), np.ones((2, 3), np.float16)],),
                {},
                "one dtype",
            ),
        ),
    ),
    LayerSpec(
        "mse_loss",
        manual.mse_loss,
        autodiff.mse_loss,
        (
            Case("nhwc", args_of(normal(2, 3, 3, 2), normal(2, 3, 3, 2)), argnums=(0, 1)),
            Case("vector", args_of(normal(5), normal(5)), argnums=(0, 1)),
        ),
        bad_inputs=(
            BadInput("shape-mismatch", args_of(normal(4, 5), normal(4, 4)), {}, r"mse_loss: .*\(4, 5\).*\(4, 4\)"),
            BadInput(
                "int-target", args_of(normal(4), lambda rng: np.ones(4, np.int32)), {}, "target must be a floating"
            ),
            BadInput("empty", args_of(normal(0, 3), normal(0, 3)), {}, "non-empty"),
        ),
    ),
)
