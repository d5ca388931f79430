"""Verify a hand-derived VJP against ``jax.grad`` and central finite differences.

:func:`verify_vjp` takes a function with a custom backward (``manual_fn``) and a
plain-JAX twin (``reference_fn``), any pytrees in and out, and returns a :class:`Report`:
per differentiable leaf and dtype the VJP against autodiff (several random cotangents)
and against float64 central differences; the transforms (forward equality, ``jit``,
``vmap``, grad-of-grad with respect to the inputs and to the cotangent, each output
alone with symbolic-zero cotangents for the others, forward mode); and the same
compiled VJPs at inputs beyond the examples.

The package stands alone (it imports nothing else of jaxbp); jaxbp's own layers are run
through it by :mod:`jaxbp.suite`. One job per module:

* :mod:`~jaxbp.verify.tolerances` - the tolerance of each dtype and matmul precision;
* :mod:`~jaxbp.verify.numerics` - errors against the gradient's scale, casting (public helpers);
* :mod:`~jaxbp.verify.structure` - which leaves are differentiated, named by key path;
* :mod:`~jaxbp.verify.compiled` - the compiled VJPs the checks share, cached across calls;
* :mod:`~jaxbp.verify.fd` - finite differences that skip directions crossing a kink;
* :mod:`~jaxbp.verify.checks` - the checks of one dtype, independent functions returning rows;
* :mod:`~jaxbp.verify.explore` - inputs beyond the examples, kinks told apart from bugs;
* :mod:`~jaxbp.verify.api` - :func:`verify_vjp`;
* :mod:`~jaxbp.verify.shapes` - :func:`verify_shapes`, the same checks at other shapes.
* :mod:`~jaxbp.verify.report` - :class:`Report` and its rendering;
"""

from jaxbp.verify.api import verify_vjp
from jaxbp.verify.explore import EXPLORE_REGIONS
from jaxbp.verify.report import (
    TRANSFORMS,
    ExploreCheck,
    GradCheck,
    JacobianBlock,
    Report,
    TransformCheck,
    equation_lines,
)
from jaxbp.verify.shapes import ShapesReport, default_shapes, verify_shapes
from jaxbp.verify.tolerances import FD_DIRECTIONS, FD_STEP, FD_TOLERANCE, default_tolerance, layer_tolerances

__all__ = [
    "EXPLORE_REGIONS",
    "FD_DIRECTIONS",
    "FD_STEP",
    "FD_TOLERANCE",
    "TRANSFORMS",
    "ExploreCheck",
    "GradCheck",
    "JacobianBlock",
    "Report",
    "ShapesReport",
    "TransformCheck",
    "default_shapes",
    "default_tolerance",
    "equation_lines",
    "layer_tolerances",
    "verify_shapes",
    "verify_vjp",
]
