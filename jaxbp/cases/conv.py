"""Registry cases of ``conv2d`` (strides, dilations, paddings, groups, depthwise) and
``conv_transpose2d`` (output padding, groups)."""

from __future__ import annotations

from jaxbp import autodiff, manual
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, normal


def _conv_case(name, x, w, bias=True, **kwargs) -> Case:
    """x, w: shapes; the bias (w's last axis) is an argument and differentiated unless ``bias=False``."""
    if bias:
        return Case(name, args_of(normal(*x), normal(*w), normal(w[3])), kwargs, argnums=(0, 1, 2))
    return Case(name, args_of(normal(*x), normal(*w), None), kwargs, argnums=(0, 1))


def _conv_bad(name, x, w, match, b=None, **kwargs) -> BadInput:
    return BadInput(name, args_of(normal(*x), normal(*w), None if b is None else normal(*b)), kwargs, match)


_CONV = (
    LayerSpec(
        "conv2d",
        manual.conv2d,
        autodiff.conv2d,
        (
            _conv_case("3x3-valid", (2, 6, 6, 3), (3, 3, 3, 4)),
            _conv_case("3x3-same-stride2-odd", (2, 7, 7, 2), (3, 3, 2, 4), stride=2, padding="SAME"),
            # a 2x2 kernel at stride 2 over 7 rows: the last row/col is never read and gets 0; no bias;
            # patch rows (2 2 1) no wider than Cout (4), so dw multiplies the patches transposed
            _conv_case("stride2-unread-row-no-bias", (1, 7, 7, 1), (2, 2, 1, 4), bias=False, stride=2),
            _conv_case(
                "rect-kernel-stride-dilation-asym-padding",
                (1, 8, 7, 2),
                (3, 2, 2, 3),
                stride=(2, 1),
                dilation=(1, 2),
                padding=((1, 0), (2, 1)),
            ),
            _conv_case("dilation2-same", (1, 9, 9, 2), (3, 3, 2, 2), dilation=2, padding="SAME"),
            _conv_case("groups2-int-padding", (2, 5, 5, 4), (3, 3, 2, 4), groups=2, padding=1),
            _conv_case("depthwise-multiplier2-stride2", (2, 7, 7, 2), (3, 3, 1, 4), groups=2, stride=2, padding=1),
            _conv_case("1x1-stride2-pad1", (1, 5, 5, 2), (1, 1, 2, 2), stride=2, padding=1),  # padding wider than K-1
        ),
        bad_inputs=(
            _conv_bad("x-rank", (5, 5, 3), (3, 3, 3, 2), r"conv2d: x must have rank 4.*\(5, 5, 3\).*\(3, 3, 3, 2\)"),
            _conv_bad("w-rank", (1, 5, 5, 3), (3, 3, 3), r"w must have rank 4.*\(1, 5, 5, 3\).*\(3, 3, 3\)"),
            _conv_bad(
                "channel-mismatch", (1, 5, 5, 3), (3, 3, 2, 4), r"3 input channels.*\(1, 5, 5, 3\).*\(3, 3, 2, 4\)"
            ),
            _conv_bad("groups-channel-mismatch", (1, 5, 5, 4), (3, 3, 4, 4), r"4 per group x 2 groups", groups=2),
            _conv_bad(
                "cout-not-divisible", (1, 5, 5, 4), (3, 3, 2, 3), r"Cout \(3\).*divisible by groups \(2\)", groups=2
            ),
            _conv_bad("groups-zero", (1, 5, 5, 4), (3, 3, 4, 4), "groups must be an int >= 1", groups=0),
            _conv_bad("kernel-too-large", (1, 4, 4, 2), (5, 3, 2, 2), r"kernel's height \(5.*padded input's \(4\)"),
            _conv_bad(
                "dilated-kernel-too-large", (1, 6, 6, 2), (3, 3, 2, 2), r"width \(7 after dilation\)", dilation=(1, 3)
            ),
            _conv_bad("stride-zero", (1, 5, 5, 2), (3, 3, 2, 2), "stride must be >= 1", stride=0),
            _conv_bad("dilation-zero", (1, 5, 5, 2), (3, 3, 2, 2), "dilation must be >= 1", dilation=(1, 0)),
            _conv_bad("padding-name", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be 'VALID', 'SAME'", padding="FULL"),
            _conv_bad(
                "padding-negative", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be >= 0", padding=((1, -1), (0, 0))
            ),
            _conv_bad("padding-shape", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be", padding=(1, 2, 3)),
            _conv_bad("bias-shape", (1, 5, 5, 2), (3, 3, 2, 4), r"b must have shape \(4,\), got \(2,\)", b=(2,)),
        ),
        rtol_float32=1e-5,
    ),
)


def _transpose_case(name, x, w, groups=1, bias=True, **kwargs) -> Case:
    """x, w ([KH, KW, Cin, Cout/groups]): shapes; the bias has Cout = w[3] * groups entries."""
    b = normal(w[3] * groups) if bias else None
    return Case(
        name, args_of(normal(*x), normal(*w), b), {"groups": groups, **kwargs}, argnums=(0, 1, 2) if bias else (0, 1)
    )


_CONV_TRANSPOSE = (
    LayerSpec(
        "conv_transpose2d",
        manual.conv_transpose2d,
        autodiff.conv_transpose2d,
        (
            _transpose_case("3x3-stride1", (2, 5, 5, 3), (3, 3, 3, 4)),
            _transpose_case("k4-s2-p1-odd", (2, 5, 7, 3), (4, 4, 3, 2), stride=2, padding=1),
            _transpose_case(
                "3x3-s2-p1-output-padding1", (1, 4, 5, 2), (3, 3, 2, 3), stride=2, padding=1, output_padding=1
            ),
            _transpose_case(
                "s3-output-padding2-no-bias", (1, 3, 4, 2), (2, 3, 2, 2), bias=False, stride=3, output_padding=2
            ),
            # output padding past the stride, allowed by the dilation: A (the convolution) has a row more than x
            _transpose_case("dilation2-output-padding1-s1", (1, 4, 4, 2), (3, 3, 2, 2), dilation=2, output_padding=1),
            _transpose_case(
                "rect-stride-dilation-padding",
                (1, 4, 3, 2),
                (3, 2, 2, 3),
                stride=(2, 3),
                padding=(2, 0),
                dilation=(1, 2),
            ),
            _transpose_case("groups2", (2, 4, 4, 4), (3, 3, 4, 3), groups=2, stride=2, padding=1),
            _transpose_case("depthwise-groups3", (1, 5, 5, 3), (3, 3, 3, 1), groups=3, stride=2),
        ),
        bad_inputs=(
            _conv_bad("x-rank", (5, 5, 3), (3, 3, 3, 2), r"conv_transpose2d: x must have rank 4.*\(5, 5, 3\)"),
            _conv_bad("w-rank", (1, 5, 5, 3), (3, 3, 3), r"w must have rank 4.*\(3, 3, 3\)"),
            _conv_bad("channel-mismatch", (1, 5, 5, 3), (3, 3, 2, 4), r"3 input channels but w expects 2"),
            _conv_bad(
                "groups-not-dividing",
                (1, 5, 5, 3),
                (3, 3, 3, 2),
                r"Cin \(3\) must be divisible by groups \(2\)",
                groups=2,
            ),
            _conv_bad("stride-zero", (1, 5, 5, 2), (3, 3, 2, 2), "stride must be >= 1", stride=0),
            _conv_bad("padding-negative", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be >= 0", padding=-1),
            _conv_bad("padding-string", (1, 5, 5, 2), (3, 3, 2, 2), "padding must be an int or a pair", padding="SAME"),
            _conv_bad(
                "output-padding-too-large", (1, 5, 5, 2), (3, 3, 2, 2), "output_padding", stride=2, output_padding=2
            ),
            _conv_bad("output-empty", (1, 1, 1, 2), (1, 1, 2, 2), r"output would have -1x-1 cells", padding=1),
            _conv_bad(
                "bias-shape", (1, 5, 5, 2), (3, 3, 2, 2), r"b must have shape \(4,\), got \(2,\)", b=(2,), groups=2
            ),
        ),
        rtol_float32=1e-5,
    ),
)

SPECS = (*_CONV, *_CONV_TRANSPOSE)
