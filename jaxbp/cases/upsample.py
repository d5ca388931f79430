"""Registry cases of ``upsample2d``: both methods, scales 2 and 3, odd and rectangular sizes."""

from __future__ import annotations

from jaxbp import autodiff, manual
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, normal

SPECS = (
    LayerSpec(
        "upsample2d",
        manual.upsample2d,
        autodiff.upsample2d,
        (
            Case("nearest-2", args_of(normal(2, 3, 4, 2)), {"scale": 2}),
            Case("nearest-3-odd", args_of(normal(1, 3, 5, 1)), {"scale": 3}),
            Case("nearest-2x3", args_of(normal(1, 2, 3, 2)), {"scale": (2, 3)}),
            Case("bilinear-2-odd", args_of(normal(2, 3, 5, 2)), {"scale": 2, "method": "bilinear"}),
            Case("bilinear-3", args_of(normal(1, 4, 3, 2)), {"scale": 3, "method": "bilinear"}),
            Case("bilinear-3x2-one-row", args_of(normal(1, 1, 3, 2)), {"scale": (3, 2), "method": "bilinear"}),
            Case("bilinear-1", args_of(normal(1, 3, 3, 1)), {"scale": 1, "method": "bilinear"}),  # the identity
        ),
        bad_inputs=(
            BadInput("scale-float", args_of(normal(1, 3, 3, 2)), {"scale": 1.5}, "upsample2d: scale must be an int"),
            BadInput("scale-zero", args_of(normal(1, 3, 3, 2)), {"scale": (2, 0)}, "scale must be >= 1"),
            BadInput("method", args_of(normal(1, 3, 3, 2)), {"scale": 2, "method": "bicubic"}, "'bicubic'"),
            BadInput("x-rank", args_of(normal(3, 3, 2)), {"scale": 2}, r"x must have rank 4.*\(3, 3, 2\)"),
        ),
    ),
)
