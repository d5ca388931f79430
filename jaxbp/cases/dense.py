"""Registry cases of ``dense`` and ``flatten``."""

from __future__ import annotations

import numpy as np

from jaxbp import autodiff, manual
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, normal

SPECS = (
    LayerSpec(
        "dense",
        manual.dense,
        autodiff.dense,
        (
            Case("with-bias", args_of(normal(5, 7), normal(7, 3), normal(3)), argnums=(0, 1, 2)),
            Case("no-bias", args_of(normal(4, 6), normal(6, 2), None), argnums=(0, 1)),
            Case("leading-axes", args_of(normal(2, 3, 4), normal(4, 5), normal(5)), argnums=(0, 1, 2)),
            Case("single-row", args_of(normal(1, 9), normal(9, 1), normal(1)), argnums=(0, 1, 2)),
        ),
        bad_inputs=(
            BadInput("feature-mismatch", args_of(normal(4, 6), normal(5, 2), normal(2)), {}, r"\(6\).*\(5\)"),
            BadInput("w-rank", args_of(normal(4, 6), normal(6), None), {}, "w must have rank 2"),
            BadInput("bias-shape", args_of(normal(4, 6), normal(6, 2), normal(3)), {}, r"b must have shape \(2,\)"),
        ),
    ),
    LayerSpec(
        "flatten",
        manual.flatten,
        autodiff.flatten,
        (Case("nhwc", args_of(normal(2, 3, 4, 5))), Case("already-flat", args_of(normal(3, 4)))),
        bad_inputs=(BadInput("scalar", lambda rng: (np.float64(1.0),), {}, "flatten: x must have rank"),),
    ),
)
