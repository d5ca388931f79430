"""How the convolutions and batch norm are formulated for the kernels XLA will run them on, and why, measured.

The layers (``jaxbp.layers``) hold the math: every term of a forward or a backward has one or
more exact formulations (the same sums in another order or shape: one convolution, one row
taller and cropped, over an input dilated by zeros, im2col and a matmul, sums over a kernel's
taps). Which one runs is a question of speed, and the answer depends on the process: the
backend, and on the CPU the ``XLA_FLAGS`` that decide whether XLA:CPU sends convolutions to
YNNPACK's kernels or to its own. This package is where that is read, while tracing, and
where the measurements behind each choice are written down; the layers ask it through one
small function per layer family and never read the environment themselves.

- :mod:`jaxbp.kernels.conv`: the routes of ``conv2d`` (and of ``conv_transpose2d``, whose
  backward runs on conv2d's formulations): :func:`jaxbp.kernels.conv.conv_route` returns a
  :class:`jaxbp.kernels.conv.ConvRoute`.
- :mod:`jaxbp.kernels.norm`: the view batch norm reads few channels through,
  :func:`jaxbp.kernels.norm.batch_norm_lanes`.

Every route is exact: ``tests/test_kernels.py`` runs each one against the plain reference.
"""
