r"""The route of batch norm: over its channels as they are, or over a view of ``lanes`` values a row.

``jaxbp.layers.norm`` calls :func:`batch_norm_lanes` once per traced call with x's shape. Batch norm's
statistics and parameter gradients are sums over every axis but the channels, and its other terms
multiply x by per-channel vectors. For few channels, x [N, ..., C] can be read as rows of ``lanes``
values, ``lanes / C`` positions a row (C divides ``lanes``): the per-channel vectors tiled to a row,
each sum taken over the rows and then over a row's ``lanes / C`` copies of each channel. The same
sums in another order: equal up to rounding (``tests/test_kernels.py`` checks it in float64).

Measured on a 2-core AMD EPYC (AVX2), the manual batch norm's forward and backward, ``jax.jit``,
batch 128, 30 interleaved rounds, one process: YNNPACK's element-wise fusions (jaxbp's AVX-512 flags) run
rows of 8 channels slowly, 128x28x28x8 (resnet's bn1) 4.0 ms against 2.1 over rows of 64
(:data:`BATCH_NORM_LANES`); at 16 channels the view is no faster (4.3 against 4.1 ms), at 32 or 64
slower (28x28x32: 9.0 against 8.0; 7x7x64 over 128 lanes: 1.2 against 1.1). Under XLA's loop
fusions (XLA's defaults) the view is the slower one at 8 channels too (3.4 against 2.1 ms). Hence
the view only where element-wise ops run on YNNPACK, for at most :data:`BATCH_NORM_LANES_MAX_CHANNELS`
channels. In resnet's whole manual step the gain is within that machine's noise (90.2 -> 89.6 ms,
200 interleaved rounds, ``experiments/conv_routes.py --stages "+ one-channel taps,+ batch-norm view"``).
"""

from __future__ import annotations

import math

from jaxbp.kernels import conv

#: The row of the view: this many values, ``BATCH_NORM_LANES / C`` positions of C channels.
BATCH_NORM_LANES = 64
#: Batch norm over at most this many channels takes the view where element-wise ops run on YNNPACK.
BATCH_NORM_LANES_MAX_CHANNELS = 8


def batch_norm_lanes(x_shape) -> int:
    """The width of the rows batch norm reads ``x`` of ``x_shape`` [N, ..., C] as, chosen while tracing
    (reads the backend and ``XLA_FLAGS``); 0: the channels as they are."""
    c, m = x_shape[-1], math.prod(x_shape[:-1])
    fits = c <= BATCH_NORM_LANES_MAX_CHANNELS and BATCH_NORM_LANES % c == 0 and (m * c) % BATCH_NORM_LANES == 0
    return BATCH_NORM_LANES if fits and conv.elementwise_on_ynnpack() else 0
