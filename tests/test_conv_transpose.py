"""conv_transpose2d against PyTorch's ``torch.nn.functional.conv_transpose2d`` in float64 (skipped
without torch): the forward and every gradient (x, w, b), of both jaxbp.manual and jaxbp.autodiff,
over strides 1-3, paddings, output paddings (also past the stride, with a dilation), dilations,
groups (and depthwise), odd and rectangular sizes. PyTorch's weight [Cin, Cout/G, KH, KW] is
jaxbp's ``w.transpose(2, 3, 0, 1)``; activations NCHW against NHWC."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxbp import autodiff, manual

CONFIGS = [
    ((2, 5, 4, 4), (3, 3, 4, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 3, 5, 4), (4, 2, 4, 3), dict(stride=(3, 1), padding=(2, 0), groups=2, dilation=(1, 2))),
    ((2, 4, 4, 2), (3, 3, 2, 2), dict(stride=1, padding=0, dilation=2, output_padding=1)),
    ((2, 6, 5, 32), (3, 3, 32, 1), dict(stride=2, padding=1, groups=32)),  # depthwise: conv2d's taps in the backward
    ((2, 7, 7, 8), (4, 4, 8, 4), dict(stride=2, padding=1)),  # the k4 s2 p1
    ((1, 3, 3, 6), (5, 5, 6, 2), dict(stride=3, padding=2, output_padding=2, groups=3)),
]


@pytest.mark.parametrize("fn", [manual.conv_transpose2d, autodiff.conv_transpose2d], ids=["manual", "autodiff"])
@pytest.mark.parametrize(("x_shape", "w_shape", "kwargs"), CONFIGS, ids=[str(c[2]) for c in CONFIGS])
def test_conv_transpose2d_matches_pytorch_float64(fn, x_shape, w_shape, kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[3] * kwargs.get("groups", 1))
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(w.transpose(2, 3, 0, 1), requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, **kwargs)
    ct = rng.standard_normal(tuple(yt.shape))
    expected = [yt.detach().numpy(), *(g.numpy() for g in torch.autograd.grad(yt, (xt, wt, bt), torch.tensor(ct)))]
    with jax.enable_x64(True):
        y, pullback = jax.vjp(lambda x, w, b: fn(x, w, b, **kwargs), x, w, b)
        dx, dw, db = pullback(ct.transpose(0, 2, 3, 1))
    got = [
        np.asarray(y).transpose(0, 3, 1, 2),
        np.asarray(dx).transpose(0, 3, 1, 2),
        np.asarray(dw).transpose(2, 3, 0, 1),
        np.asarray(db),
    ]
    for name, g, e in zip(("y", "dx", "dw", "db"), got, expected):
        assert g.shape == e.shape, (name, g.shape, e.shape)
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12 * np.max(np.abs(e)), err_msg=name)
