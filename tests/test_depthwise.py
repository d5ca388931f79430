"""The depthwise route of conv2d (jaxbp.layers.depthwise: sums over the kernel's taps) against the reference.

Hypothesis draws depthwise configurations (groups == Cin, channel multipliers 1 to 3, strides,
paddings, dilations, odd sizes) and checks in float64 that the manual VJP through the taps equals
the VJP ``jax.grad`` derives from ``lax.conv_general_dilated`` (1e-10, norm-wise) and that the taps'
forward is the convolution's within its rounding bound (the same sums, added in another order),
with the batch in one block and in blocks of one and two images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxbp import autodiff, manual
from jaxbp.layers import conv as conv_module, depthwise
from tests.test_conv_pool_properties import SETTINGS, as_pair, assert_vjp_matches, draw_padding, draw_pair, draw_size


@st.composite
def depthwise_configs(draw):
    cin = draw(st.integers(2, 5))  # groups > 1: one input channel and one group is an ordinary convolution
    multiplier = draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride, dilation = draw_pair(draw, 1, 3), draw_pair(draw, 1, 2)
    padding, pads = draw_padding(draw, (3, 3))
    extent = [d * (k - 1) + 1 for d, k in zip(as_pair(dilation), kernel)]
    h, w = draw_size(draw, extent[0], pads, 0), draw_size(draw, extent[1], pads, 1)
    x_shape = (draw(st.integers(1, 4)), h, w, cin)
    w_shape = (*kernel, 1, cin * multiplier)
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": cin}
    return x_shape, w_shape, draw(st.booleans()), kwargs, draw(st.integers(0, 2**16))


@settings(SETTINGS, max_examples=12)
@given(config=depthwise_configs(), images_per_block=st.sampled_from(["batch", 1, 2]))
def test_depthwise_taps_vjp_matches_autodiff(config, images_per_block):
    """The batch as one block, or blocks of 1 or 2 images: drawn with the configuration, so the
    twelve examples spread over the three (one third of the compilations of all three each)."""
    x_shape, w_shape, bias, kwargs, seed = config
    rng = np.random.default_rng(seed)
    args = [
        rng.standard_normal(x_shape),
        rng.standard_normal(w_shape),
        rng.standard_normal(w_shape[3]) if bias else None,
    ]
    n = x_shape[0]
    block = n if images_per_block == "batch" else max(d for d in range(1, images_per_block + 1) if n % d == 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv_module, "DEPTHWISE_TAPS_CHANNELS", 1)  # the taps whatever the channel count
        mp.setattr(depthwise, "images_per_block", lambda n, per_image: block)  # one block, or several
        with jax.enable_x64(True):
            x, w, b = (None if a is None else jnp.asarray(a) for a in args)
            cfg = conv_module.conv_config(
                x, w, b, kwargs["stride"], kwargs["padding"], kwargs["dilation"], cin := kwargs["groups"]
            )
            assert cfg.taps_block == block and cin == x_shape[3]
            # the taps' forward: the reference's sums (and the bias) in another order, within their rounding bound
            terms = w_shape[0] * w_shape[1] + 1
            magnitude = autodiff.conv2d(jnp.abs(x), jnp.abs(w), None if b is None else jnp.abs(b), **kwargs)
            y = conv_module.manual_forward(x, w, b, cfg)
            assert np.all(
                np.abs(y - autodiff.conv2d(x, w, b, **kwargs)) <= 2 * terms * np.finfo(np.float64).eps * magnitude
            )
        assert_vjp_matches(
            lambda x, w, b: manual.conv2d(x, w, b, **kwargs),
            lambda x, w, b: autodiff.conv2d(x, w, b, **kwargs),
            args,
            seed,
            forward_fn=lambda x, w, b: conv_module.manual_forward(x, w, b, cfg),
        )


@pytest.mark.parametrize(
    ("cin", "groups", "cout", "taps"),
    [
        (128, 128, 128, True),  # depthwise, the shape
        (16, 16, 48, True),  # depthwise with a channel multiplier of 3
        (8, 8, 8, False),  # too few channels: not measured, the convolutions
        (32, 16, 32, False),  # grouped, two channels per group: im2col
        (1, 1, 32, False),  # one input channel but not grouped (the cnn's conv1): the convolution
    ],
)
def test_depthwise_convolutions_take_the_taps_route_on_the_cpu(cin, groups, cout, taps):
    x, w = jnp.zeros((4, 14, 14, cin)), jnp.zeros((7, 7, cin // groups, cout))
    cfg = conv_module.conv_config(x, w, None, 1, "SAME", 1, groups)
    assert (cfg.taps_block > 0) == taps
    if taps:  # the taps run no convolution: no formulation for YNNPACK's kernels
        assert (cfg.dw_lhs_dilation, cfg.dx_extra_row, cfg.y_extra_row) == (1, False, False)


@pytest.mark.parametrize(
    ("n", "per_image", "block"), [(64, 204800, 2), (64, 10**9, 1), (7, 1000, 7), (6, 2**18, 2), (5, 2**17, 1)]
)
def test_taps_blocks_divide_the_batch_within_the_budget(n, per_image, block):
    assert depthwise.images_per_block(n, per_image) == block
