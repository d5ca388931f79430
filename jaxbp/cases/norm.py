"""Registry cases of batch norm, layer norm and group norm."""

from __future__ import annotations

import numpy as np

from jaxbp import autodiff, manual
from jaxbp.cases.kit import ArgMaker, BadInput, Case, LayerSpec, args_of, normal

ALL = (0, 1, 2)  # x, gamma, beta


def affine_args(*shape: int) -> ArgMaker:
    """``(x, gamma, beta)`` with gamma and beta drawn first.

    verify seeds its cotangents with the case's seed, so a first-drawn x would equal the
    first cotangent dy, which lies in the span of (1, xhat) of every normalised group:
    there dx vanishes (the layer is invariant to shifting and scaling x) and its relative
    error would be noise.
    """

    def make(rng):
        gamma, beta = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
        return rng.standard_normal(shape), gamma, beta

    return make


def _bad_affine(layer: str, **kwargs) -> tuple[BadInput, ...]:
    return (
        BadInput("rank-1", args_of(normal(6), normal(6), normal(6)), kwargs, r"rank >= 2.*\(6,\)"),
        BadInput(
            "gamma-shape",
            args_of(normal(2, 3, 3, 6), normal(4), normal(6)),
            kwargs,
            rf"{layer}: gamma must have shape \(6,\).*\(2, 3, 3, 6\).*\(4,\)",
        ),
        BadInput("beta-shape", args_of(normal(4, 6), normal(6), normal(6, 1)), kwargs, r"beta must have shape \(6,\)"),
        BadInput("eps-zero", args_of(normal(4, 6), normal(6), normal(6)), {**kwargs, "eps": 0.0}, "eps must be"),
        BadInput(
            "int-x",
            args_of(lambda rng: np.ones((4, 6), np.int32), normal(6), normal(6)),
            kwargs,
            "x must be a floating-point",
        ),
    )


LAYER_NORM = LayerSpec(
    "layer_norm",
    manual.layer_norm,
    autodiff.layer_norm,
    (
        Case("nhwc-odd", affine_args(2, 3, 5, 5), argnums=ALL),
        Case("nc-eps-1e-3", affine_args(4, 7), {"eps": 1e-3}, argnums=ALL),
        # Not two channels: there xhat = +-1 whatever x, dx ~ 0 and its relative error is noise.
        Case("three-channels-eps-1e-9", affine_args(3, 2, 1, 3), {"eps": 1e-9}, argnums=ALL),
    ),
    _bad_affine("layer_norm"),
    rtol_float32=1e-5,
)

GROUP_NORM = LayerSpec(
    "group_norm",
    manual.group_norm,
    autodiff.group_norm,
    (
        Case("groups2-nhwc", affine_args(2, 3, 3, 4), {"groups": 2}, argnums=ALL),
        Case("groups1-odd-eps-1e-3", affine_args(1, 3, 5, 3), {"groups": 1, "eps": 1e-3}, argnums=ALL),
        Case("groups-equal-channels", affine_args(2, 2, 3, 3), {"groups": 3}, argnums=ALL),  # instance norm
        Case("nc-groups2", affine_args(3, 6), {"groups": 2}, argnums=ALL),  # no spatial axes; 3 channels a group
    ),
    _bad_affine("group_norm", groups=2)
    + (
        BadInput(
            "channels-not-divisible",
            args_of(normal(1, 3, 3, 6), normal(6), normal(6)),
            {"groups": 4},
            r"group_norm: the channels of x \(shape \(1, 3, 3, 6\), C = 6\).*divisible by groups \(4\)",
        ),
        BadInput("groups-zero", args_of(normal(1, 3, 3, 6), normal(6), normal(6)), {"groups": 0}, "groups must be"),
    ),
    rtol_float32=1e-5,
)

_BATCH_NORM: tuple[LayerSpec, ...] = (
    LayerSpec(
        "batch_norm",
        manual.batch_norm,
        autodiff.batch_norm,
        (
            Case("nc", affine_args(6, 3), argnums=(0, 1, 2)),
            Case("nhwc-eps-1e-3", affine_args(2, 3, 3, 4), {"eps": 1e-3}, argnums=(0, 1, 2)),
            # One example still normalises over H and W (M = 6); eps far below var.
            Case("single-example-small-eps", affine_args(1, 2, 3, 2), {"eps": 1e-9}, argnums=(0, 1, 2)),
            # Not a case: a channel constant over the batch (var = 0, xhat = 0, inv_std = eps^-1/2) is degenerate.
        ),
        # Observed float32 errors <= 3e-7 (dx's sums over M elements are rounded in another order than
        # autodiff's chain of mean/var backwards); the default holds once dy is not aligned with x (_norm_args).
        rtol_float32=1e-5,
        bad_inputs=(
            BadInput("rank-1", args_of(normal(5), normal(5), normal(5)), {}, r"rank >= 2.*\(5,\)"),
            BadInput(
                "gamma-shape",
                args_of(normal(4, 3), normal(2), normal(3)),
                {},
                r"gamma must have shape \(3,\).*\(4, 3\).*\(2,\)",
            ),
            BadInput(
                "beta-shape", args_of(normal(2, 2, 2, 3), normal(3), normal(3, 1)), {}, r"beta must have shape \(3,\)"
            ),
            BadInput(
                "eps-zero",
                args_of(normal(4, 3), normal(3), normal(3)),
                {"eps": 0.0},
                "eps must be a finite number > 0, got 0.0",
            ),
            BadInput(
                "eps-array",
                args_of(normal(4, 3), normal(3), normal(3)),
                {"eps": np.ones(3)},
                "eps must be a Python float",
            ),
            BadInput(
                "dtype-mismatch",
                lambda rng: (rng.standard_normal((4, 3)), np.ones(3, np.float32), np.zeros(3, np.float16)),
                {},
                "gamma and beta must have the same dtype",
            ),
            BadInput(
                "int-x",
                args_of(lambda rng: np.ones((4, 3), np.int32), normal(3), normal(3)),
                {},
                "x must be a floating-point",
            ),
        ),
    ),
)

SPECS = (*_BATCH_NORM, LAYER_NORM, GROUP_NORM)
