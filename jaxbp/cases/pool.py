"""Registry cases of max and average pooling (windows, strides, paddings, ties) and global
average pooling."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxbp import autodiff, manual
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, normal


def _relu_like(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    """max(normal, 0): about half the entries exactly 0, so many windows tie at 0."""
    return lambda rng: np.maximum(rng.standard_normal(shape), 0.0)


def _pool_cases(max_pool: bool) -> tuple[Case, ...]:
    cases = (
        Case("2x2/2", args_of(normal(2, 6, 6, 3)), {"window": 2}),
        # windows that tile with a remainder: the last row (and two cols) are in no window
        Case("rect-2x3/2x3-odd-crop", args_of(normal(1, 7, 8, 2)), {"window": (2, 3)}),
        Case("2x2/2-int-padding-odd", args_of(normal(1, 7, 5, 2)), {"window": 2, "padding": 1}),
        Case("3x3/2-overlap", args_of(normal(2, 7, 7, 2)), {"window": 3, "stride": 2}),
        Case("3x3/1-same", args_of(normal(1, 5, 5, 2)), {"window": 3, "stride": 1, "padding": "SAME"}),
        Case(
            "3x3/2-explicit-padding",
            args_of(normal(1, 6, 7, 2)),
            {"window": 3, "stride": 2, "padding": ((1, 0), (0, 2))},
        ),
        # overlapping along H, gaps between windows along W
        Case("rect-3x2/1x3-overlap-gaps", args_of(normal(1, 6, 8, 2)), {"window": (3, 2), "stride": (1, 3)}),
    )
    if max_pool:  # ties: the whole gradient of a window goes to its first maximum (row-major)
        cases += (
            Case("ties-zeros-2x2/2", lambda rng: (np.zeros((2, 4, 4, 2)),), {"window": 2}, smooth=False),
            # every window ties at 0; cell (o, p) is the first cell of window (o, p) only
            Case("ties-zeros-3x3/1", lambda rng: (np.zeros((1, 5, 5, 2)),), {"window": 3, "stride": 1}, smooth=False),
            Case("ties-relu-2x2/2", args_of(_relu_like(2, 6, 6, 3)), {"window": 2}, smooth=False),
            Case("ties-relu-3x3/2-overlap", args_of(_relu_like(2, 7, 7, 2)), {"window": 3, "stride": 2}, smooth=False),
        )
    return cases


def _pool_bad(layer: str) -> tuple[BadInput, ...]:
    return (
        BadInput("x-rank", args_of(normal(6, 6, 2)), {}, f"{layer}: x must have rank 4"),
        BadInput("window-zero", args_of(normal(1, 6, 6, 2)), {"window": 0}, "window must be >= 1"),
        BadInput("stride-zero", args_of(normal(1, 6, 6, 2)), {"window": 2, "stride": (1, 0)}, "stride must be >= 1"),
        BadInput(
            "window-too-large",
            args_of(normal(1, 3, 6, 2)),
            {"window": 4},
            r"window's height \(4\).*padded input's \(3\)",
        ),
        BadInput("padding-name", args_of(normal(1, 6, 6, 2)), {"padding": "FULL"}, "padding must be 'VALID', 'SAME'"),
        BadInput("padding-negative", args_of(normal(1, 6, 6, 2)), {"padding": -1}, "padding must be >= 0"),
        BadInput(
            "padding-not-smaller-than-window",
            args_of(normal(1, 6, 6, 2)),
            {"padding": ((0, 0), (2, 0))},
            "smaller than the window",
        ),
    )


_POOL = (
    LayerSpec("max_pool2d", manual.max_pool2d, autodiff.max_pool2d, _pool_cases(True), _pool_bad("max_pool2d"), 1e-5),
    LayerSpec("avg_pool2d", manual.avg_pool2d, autodiff.avg_pool2d, _pool_cases(False), _pool_bad("avg_pool2d"), 1e-5),
)


_GLOBAL_POOL = (
    LayerSpec(
        "global_avg_pool",
        manual.global_avg_pool,
        autodiff.global_avg_pool,
        (Case("nhwc", args_of(normal(2, 3, 4, 5))), Case("1x1-spatial", args_of(normal(3, 1, 1, 2)))),
        bad_inputs=(
            BadInput("x-rank", args_of(normal(2, 3, 4)), {}, r"global_avg_pool: x must have rank 4.*\(2, 3, 4\)"),
            BadInput("int-x", lambda rng: (np.ones((1, 2, 2, 1), np.int32),), {}, "x must be a floating-point"),
        ),
    ),
)

SPECS = (*_POOL, *_GLOBAL_POOL)
