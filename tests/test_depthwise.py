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
from jaxbp.kernels import conv as kernels
from jaxbp.layers import conv as conv_module
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


@pytest.mark.long
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
        mp.setattr(kernels, "DEPTHWISE_TAPS_CHANNELS", 1)  # the taps whatever the channel count
        mp.setattr(kernels, "taps_images_per_block", lambda n, per_image: block)  # one block, or several
        with jax.enable_x64(True):
            x, w, b = (None if a is None else jnp.asarray(a) for a in args)
            cfg = conv_module.conv_config(
                x, w, b, kwargs["stride"], kwargs["padding"], kwargs["dilation"], cin := kwargs["groups"]
            )
            assert cfg.route.taps_block == block and cin == x_shape[3]
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
