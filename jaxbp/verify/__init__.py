"""Verify a hand-derived VJP against ``jax.grad`` and central finite differences.

:func:`~jaxbp.verify.api.verify_vjp` takes a function with a custom backward (``manual_fn``)
and a plain-JAX twin (``reference_fn``), any pytrees in and out, and returns a
:class:`~jaxbp.verify.report.Report`: per differentiable leaf and dtype the VJP against
autodiff (several random cotangents) and against float64 central differences; the transforms
(forward equality, ``jit``, ``vmap``, grad-of-grad with respect to the inputs and to the
cotangent, each output alone with symbolic-zero cotangents for the others, forward mode);
and the same compiled VJPs at inputs beyond the examples.

The package stands alone (it imports nothing else of jaxbp); jaxbp's own layers are run
through it by :mod:`jaxbp.suite`. One job per module:

* :mod:`~jaxbp.verify.tolerances` - the tolerance of each dtype and matmul precision;
* :mod:`~jaxbp.verify.numerics` - errors against the gradient's scale, casting (public helpers);
* :mod:`~jaxbp.verify.structure` - which leaves are differentiated, named by key path;
* :mod:`~jaxbp.verify.compiled` - the compiled VJPs the checks share, cached across calls;
* :mod:`~jaxbp.verify.fd` - finite differences that skip directions crossing a kink;
* :mod:`~jaxbp.verify.checks` - the checks of one dtype, independent functions returning rows;
* :mod:`~jaxbp.verify.explore` - inputs beyond the examples, kinks told apart from bugs;
* :mod:`~jaxbp.verify.api` - :func:`~jaxbp.verify.api.verify_vjp`;
* :mod:`~jaxbp.verify.shapes` - :func:`~jaxbp.verify.shapes.verify_shapes`, the same checks at other shapes.
* :mod:`~jaxbp.verify.report` - :class:`~jaxbp.verify.report.Report` and its rendering;

The names below are imported from their modules on first use (PEP 562): reading the
tolerances (``jaxbp check --help`` does) does not import JAX.
"""

from __future__ import annotations

from jaxbp.lazy import lazy_exports

# the public names, by the module of jaxbp.verify that defines them
_NAMES = {
    "api": ("verify_vjp",),
    "explore": ("EXPLORE_REGIONS",),
    "report": (
        "TRANSFORMS",
        "ExploreCheck",
        "GradCheck",
        "JacobianBlock",
        "Report",
        "TransformCheck",
        "equation_lines",
    ),
    "shapes": ("ShapesReport", "default_shapes", "verify_shapes"),
    "tolerances": ("FD_DIRECTIONS", "FD_STEP", "FD_TOLERANCE", "default_tolerance", "layer_tolerances"),
}
_exports = lazy_exports(__name__, globals(), _NAMES)
__all__ = sorted(name for names in _NAMES.values() for name in names)
__getattr__, __dir__ = _exports.getattr, _exports.dir
