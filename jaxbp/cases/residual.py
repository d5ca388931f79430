"""Registry cases of ``residual_add`` and of a residual block (``jaxbp.models.Residual``)
with a strided 1x1 projection, checked end to end."""

from __future__ import annotations

import numpy as np

from jaxbp import autodiff, manual, models
from jaxbp.cases.kit import BadInput, Case, LayerSpec, args_of, normal


def _residual_block(ops):
    """``Residual(Conv(C, stride=2), Relu)`` of :mod:`jaxbp.models` on ``ops`` as a function of its
    arrays: ``x`` [N, H, W, Cin] and ``Cin != C``, so the skip is the 1x1 stride-2 ``proj`` conv."""

    def block(x, w1, b1, wp, bp):
        cout = w1.shape[-1]
        layer = models.Residual(models.Conv(cout, stride=2), models.Relu)
        params = {"conv1": {"w": w1, "b": b1}, "proj": {"w": wp, "b": bp}}
        return layer.apply(params, x, ops=ops)[0]

    return block


def _residual_block_spec() -> LayerSpec:
    from jaxbp.layers import residual

    cin, cout = 2, 3
    shapes = [(2, 5, 5, cin), (3, 3, cin, cout), (cout,), (1, 1, cin, cout), (cout,)]
    return LayerSpec(
        "residual_block",
        _residual_block(manual),
        _residual_block(autodiff),
        # The identity skip is residual_add's own case; deeper blocks (batch norm, two convs) are the
        # resnet's tests (tests/test_custom_layers.py): each conv here costs seconds of compilation.
        (Case("stride2-projection", args_of(*(normal(*s) for s in shapes)), argnums=tuple(range(5))),),
        composite=True,
        derivation=(residual.__doc__ or "").strip()
        + "\n\nHere f = conv(stride 2) -> relu and the skip is a 1x1 stride-2 conv "
        "(jaxbp.models.Residual): every VJP in it is hand-derived.",
    )


SPECS = (
    LayerSpec(
        "residual_add",
        manual.residual_add,
        autodiff.residual_add,
        (Case("nhwc", args_of(normal(2, 3, 3, 2), normal(2, 3, 3, 2)), argnums=(0, 1)),),
        bad_inputs=(
            BadInput("shape-mismatch", args_of(normal(2, 3), normal(2, 1)), {}, r"same shape.*\(2, 3\).*\(2, 1\)"),
            BadInput(
                "dtype-mismatch",
                lambda rng: (np.ones((2, 3), np.float32), np.ones((2, 3), np.float16)),
                {},
                "same shape and dtype",
            ),
        ),
    ),
    _residual_block_spec(),
)
