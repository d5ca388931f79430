r"""The routes of a 2-D convolution: which exact formulation of y, dx and dw suits the kernels XLA will run.

``jaxbp.layers.conv`` calls :func:`conv_route` once per traced call, with the checked and
normalised hyper-parameters, and keeps the :class:`ConvRoute` it returns in its static
configuration. Every route computes the same y, dx and dw as the plain convolutions (the same
sums in another order or shape; ``tests/test_kernels.py`` runs each against the reference); the
choice is made for speed, on what this process will compile for: the backend, and on the CPU
whether ``XLA_FLAGS`` send convolutions to YNNPACK (:func:`convolutions_on_ynnpack`).

XLA:CPU sends most convolutions to YNNPACK by default (jaxlib 0.10), to its own kernels when
``XLA_FLAGS`` leave them out of the YNNPACK fusions (as jaxbp's flags for AVX2 and AVX-512 do) and on
other backends. YNNPACK refuses a convolution (``xla/backends/cpu/ynn_support.cc``) with a
dilated input (lhs dilation), or an output larger than its input, and XLA then runs it on its
own kernel. Measured on a 2-core Intel Xeon (Sapphire Rapids, AVX-512), bare kernels in one
process, interleaved (``experiments/layer_timing.py --kernels``, under each flag set; the cnn's
conv2 is 128x14x14x32 -> 64, 3x3 SAME):

- dw: YNNPACK runs the dw convolution slowly, 27.0 ms for conv2, where XLA's kernel takes 6.8.
  On YNNPACK the convolution reads x dilated by :data:`DW_LHS_DILATION` (zeros between its rows
  and cols; the strides and the dy taps scaled to match, so every tap still lands on x), which
  YNNPACK refuses: 7.4 ms, and faster than the blocked im2col (13.0 ms for conv2) at every
  ungrouped shape of ``experiments/conv_kernel_sweep.py`` (1 to 64 channels, 7x7 to 28x28,
  stride 1 and 2, batch 32 to 512). Grouped convolutions (groups > 1, more than one channel per
  group) run as batch-grouped convolutions 8-21x slower than im2col on XLA:CPU (either kernel),
  so they go through im2col and one matmul per group on the CPU for up to
  :data:`IM2COL_MAX_CHANNELS` per group; depthwise ones (one channel per group) are faster as the
  convolution than by im2col, and faster still as sums over the taps (below).
- dx: YNNPACK's dx kernel is the slower one, so where YNNPACK would take dx (stride 1, dy as
  large as x) the convolution computes one row more than x has, which is cropped: 1/H more
  multiplications, on XLA's kernel.
- forward: the same refusal keeps the forward off YNNPACK when it is computed one row taller and
  cropped. XLA's kernel is the faster one for inputs of at least
  :data:`FORWARD_OFF_YNNPACK_CHANNELS` channels per group: 7.1 -> 4.7 ms for conv2, 1.2-1.9x for
  16 to 64 channels (level at batch 32; grouped 2-3x), but 2x slower for conv1's single channel,
  1.4x for a depthwise one and mixed for 3 to 8 (``experiments/conv_kernel_sweep.py``). Only the
  manual layer's forward does this: the reference's transpose would correlate x with a dy taller
  than x, a convolution whose kernel is larger than its input, which XLA:CPU runs as a naive
  loop (autodiff's cnn step: 0.9 s).
- depthwise (one input channel per group, groups > 1) on the CPU, from
  :data:`DEPTHWISE_TAPS_CHANNELS` input channels: the forward, dx and dw as sums over the
  kernel's taps (``jaxbp.layers.depthwise``), no convolution op. XLA:CPU runs a depthwise
  convolution and its two gradients (on its kernels and on YNNPACK's) 6-9x slower than these
  sums: 7x7 SAME, batch 64, 14x14x128, forward + backward 1.3-1.4 s against 0.15-0.23 s on a
  loaded 2-core AMD EPYC (AVX2); quiet, 0.67-0.82 s against 0.09-0.15 s
  (``experiments/modern_layer_timing.py``, ``experiments/results/modern_layer_timing.json``). Tried
  and slower: one reduction over the stacked taps for dw, rows reduced first, an einsum per tap, and
  channels as the batch of per-kernel-row matmuls (Toeplitz along W: dw 108 ms against the taps'
  unblocked 156, forward 88-106 ms against 7.5). Fewer channels: not measured, the
  convolutions (the taps vectorise along the channels).
- one input channel (groups 1, the first layer of an image model) on the CPU: the forward as
  sums over the taps, channel-major (``jaxbp.layers.depthwise.one_channel_forward``); dx and dw
  stay convolutions (dx is not owed for a first layer; dw's convolution took 1.3-1.5 ms against
  3.1-5.6 for im2col or the taps). XLA:CPU's kernels run a single input channel slowly; on a
  2-core AMD EPYC (AVX2), the forward alone (``jax.jit``, 30 interleaved rounds, batch 128,
  28x28): resnet's conv1 (3x3 SAME, 8 outputs) 5.2-5.7 ms against 0.5 for the taps on XLA's
  loop fusions (XLA's defaults, jaxbp's AVX2 flags) and 2.8-3.6 on YNNPACK's element-wise fusions
  (jaxbp's AVX-512 flags, and its AVX2 flags until they left element-wise ops to XLA); the
  cnn's conv1 (32 outputs) 6.5 against 1.2 under XLA's defaults, but 2.3 against 12.3 with
  element-wise ops on YNNPACK (16 outputs, stride 2: 1.7 against 2.0). The whole manual train
  step, one process (``experiments/conv_routes.py --policy command --stages "kernel-aware,+ one-channel
  taps"``, 80-120 rounds), under XLA's defaults: resnet 87.1 -> 82.6 ms, cnn 58.1 -> 53.1,
  cnn-bn 71.4 -> 65.3, autoencoder 22.5 -> 19.2 (its last transposed convolution's dx); with
  element-wise ops on YNNPACK (``individual_dot,eltwise,reduce``): resnet 84.8 -> 82.0, the cnn
  52.1 -> 64.3 had it taken the taps; hence at most :data:`ONE_CHANNEL_TAPS_MAX_OUT_ON_YNNPACK`
  output channels where element-wise ops run on YNNPACK (:func:`elementwise_on_ynnpack`).
- strided, not dilated, not grouped, on the CPU: dx as one stride-1 convolution per phase of the
  stride, interleaved (``jaxbp.layers.conv.conv2d_dx_phases``), rather than one convolution over dy
  with s - 1 zeros between its rows and cols, whose products with the zeros XLA's kernel computes
  (s_h s_w times the multiplications). On a 2-core AMD EPYC (AVX2), batch 128, ``jax.jit``, 30
  interleaved rounds, one process, under jaxbp's AVX2 flags: resnet's stride-2 3x3 convolutions
  6.29 -> 4.53 ms (14x14x32 -> 64) and 5.25 -> 5.01 (28x28x8 -> 32), its 1x1 projections 1.50 ->
  0.72 and 1.19 -> 0.79, the autoencoder's 14x14x16 -> 32 2.64 -> 2.03, ConvNeXt's 2x2 downsampling
  1.40 -> 1.06. Under XLA's defaults, where YNNPACK takes the phases' convolutions of at least
  17 channels that are no larger than dy: 3x3 kernels 5.76 -> 4.13 and 2.84 -> 1.94 ms, but 1x1
  level (1.58 -> 1.43, 1.19 -> 1.34) and ConvNeXt's 2x2 slower (1.52 -> 2.19), hence there only
  kernels larger than the stride. The forward of a transposed convolution is its adjoint's dx, so
  the phases run it too: the autoencoder's 4x4 stride-2 7x7x32 -> 14x14x16 8.23 -> 3.10 ms (XLA's
  defaults 6.03 -> 2.77), but to one channel (14x14x16 -> 28x28x1) 3.10 -> 5.18 (2.89 -> 4.50):
  not for a dx of one channel.

The whole manual cnn train step, each route against the one before it, in one process
(``experiments/conv_routes.py``): see the README's Speed section. im2col and the taps work
through the batch in blocks of images whose patches (:data:`IM2COL_BLOCK_BYTES`) or padded input
(:data:`TAPS_BLOCK_BYTES`) stay in cache between being written and being read.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from jaxbp import xla_flags

#: Grouped convolutions of 2 to this many input channels per group take dw by im2col on the CPU.
IM2COL_MAX_CHANNELS = 32
#: im2col's blocks of images: as many as have about this many bytes of patches.
IM2COL_BLOCK_BYTES = 2**20
#: On YNNPACK, dw's convolution reads x dilated by this (which YNNPACK refuses).
DW_LHS_DILATION = 2
#: On YNNPACK, the manual forward of inputs of at least this many channels per group is computed
#: one row taller and cropped (at stride 1, an output at least as tall as x), which YNNPACK refuses.
FORWARD_OFF_YNNPACK_CHANNELS = 16
#: Depthwise convolutions of at least this many input channels run as sums over the taps on the CPU.
DEPTHWISE_TAPS_CHANNELS = 16
#: The taps' blocks of images: as many as fit this many bytes of padded input (a divisor of N).
TAPS_BLOCK_BYTES = 2**19
#: Where element-wise ops run as YNNPACK fusions, a convolution of one input channel takes its forward
#: as sums over the taps for at most this many output channels (for any number on XLA's loop fusions).
ONE_CHANNEL_TAPS_MAX_OUT_ON_YNNPACK = 8


class ConvRoute(NamedTuple):
    """The formulation of each of the convolution's terms (hashable: it goes through ``nondiff_argnums``).

    The defaults are the plain route: the forward, dx and dw each as one convolution.
    """

    im2col_block: int = 0  # dw by im2col in blocks of this many images (grouped, on the CPU); 0: by a convolution
    dw_lhs_dilation: int = 1  # dw's convolution reads x dilated by this: DW_LHS_DILATION keeps it off YNNPACK
    dx_extra_row: bool = False  # dx computed one row taller than x, then cropped: keeps it off YNNPACK
    y_extra_row: bool = False  # the forward one row taller than y, then cropped (stride 1 only): the same
    taps_block: int = 0  # depthwise as sums over the taps, this many images a block; 0: convolutions
    one_channel_taps: bool = False  # one input channel, not grouped: the forward as sums over the taps, channel-major
    dx_phases: bool = False  # strided, not dilated: dx as one stride-1 convolution per phase of the stride

    @property
    def forward_as_taps(self) -> bool:
        """Whether the forward is sums over the taps (depthwise, or one input channel), not a convolution:
        the reference's sums in another order."""
        return bool(self.taps_block) or self.one_channel_taps


def convolutions_on_ynnpack() -> bool:
    """Whether the convolutions being traced will run on YNNPACK's kernels: the CPU backend
    with ``XLA_FLAGS`` that send them there (:func:`jaxbp.xla_flags.ynnpack_convolutions`)."""
    return jax.default_backend() == "cpu" and xla_flags.ynnpack_convolutions()


def elementwise_on_ynnpack() -> bool:
    """Whether the element-wise ops being traced will run as YNNPACK fusions rather than XLA's
    loop fusions: the CPU backend with ``XLA_FLAGS`` that send them there
    (:func:`jaxbp.xla_flags.ynnpack_elementwise`)."""
    return jax.default_backend() == "cpu" and xla_flags.ynnpack_elementwise()


def im2col_images_per_block(n, out_hw, patch_size, itemsize) -> int:
    """Images per im2col block: as many as fit IM2COL_BLOCK_BYTES, spread evenly over the blocks."""
    per_image = max(1, out_hw[0] * out_hw[1] * patch_size * itemsize)
    blocks = -(-n // max(1, IM2COL_BLOCK_BYTES // per_image))
    return max(1, -(-n // max(1, blocks)))


def taps_images_per_block(n: int, per_image_bytes: int) -> int:
    """Images per block of the taps: the largest divisor of ``n`` whose images take at most
    TAPS_BLOCK_BYTES (at least 1)."""
    most = max(1, TAPS_BLOCK_BYTES // max(1, per_image_bytes))
    return max(b for b in range(1, min(n, most) + 1) if n % b == 0)


def conv_route(x_shape, w_shape, dtype, stride, pads, dilation, groups, out_hw) -> ConvRoute:
    """The route of one convolution, chosen while tracing (reads the backend and ``XLA_FLAGS``).

    ``x_shape`` [N, H, W, Cin], ``w_shape`` [KH, KW, Cin/groups, Cout], ``dtype`` x's, and the
    hyper-parameters as the layer normalised them: ``stride`` and ``dilation`` pairs, ``pads``
    ((top, bottom), (left, right)), ``out_hw`` the output's (Ho, Wo). Why each choice: the notes
    at the top of this module.
    """
    n, h, wd, cin = x_shape
    kh, kw, cin_g, _ = w_shape
    itemsize = np.dtype(dtype).itemsize
    on_cpu = jax.default_backend() == "cpu"
    on_ynnpack = convolutions_on_ynnpack()
    block = 0
    if on_cpu and groups > 1 and 1 < cin_g <= IM2COL_MAX_CHANNELS:  # grouped: im2col beats batch-grouped convs
        block = im2col_images_per_block(n, out_hw, kh * kw * cin, itemsize)
    taps = 0
    if on_cpu and groups > 1 and cin_g == 1 and cin >= DEPTHWISE_TAPS_CHANNELS:  # depthwise: the taps
        taps = taps_images_per_block(n, (h + sum(pads[0])) * (wd + sum(pads[1])) * cin * itemsize)
    # one input channel (the first layer of an image model): the forward's taps, on XLA's loop fusions
    # for any width, on YNNPACK's element-wise fusions for few output channels
    one_channel = on_cpu and groups == 1 and cin == 1
    one_channel = one_channel and (not elementwise_on_ynnpack() or w_shape[3] <= ONE_CHANNEL_TAPS_MAX_OUT_ON_YNNPACK)
    on_ynnpack = on_ynnpack and not taps  # the taps run no convolution
    at_stride_1 = tuple(stride) == (1, 1)  # no lhs dilation in dx's convolution
    # strided: dx's phases, where XLA's kernels run them (on YNNPACK only kernels larger than the stride),
    # for dx of more than one channel
    phases = on_cpu and not taps and groups == 1 and cin > 1 and not at_stride_1 and tuple(dilation) == (1, 1)
    phases = phases and (not on_ynnpack or kh > stride[0] or kw > stride[1])
    return ConvRoute(
        im2col_block=block,
        # YNNPACK would take dw's convolution: x dilated keeps it off
        dw_lhs_dilation=DW_LHS_DILATION if on_ynnpack and not block else 1,
        # and dx's: no lhs dilation (stride 1), an output (x) no larger than its input (dy)
        dx_extra_row=on_ynnpack and at_stride_1 and h <= out_hw[0] and wd <= out_hw[1],
        # and the forward's, for wide enough inputs: at stride 1, one more output row than x has rows
        y_extra_row=on_ynnpack and at_stride_1 and out_hw[0] >= h and cin_g >= FORWARD_OFF_YNNPACK_CHANNELS,
        taps_block=taps,
        one_channel_taps=one_channel,
        dx_phases=phases,
    )
