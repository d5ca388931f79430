"""Every layer, with the example inputs that every check runs over.

One :class:`LayerSpec` per public layer names its hand-derived function
(``jaxbp.manual``), its plain-JAX reference (``jaxbp.autodiff``), a spread of
:class:`Case` configurations (shapes, strides, paddings, ties and kinks) and the
float32 tolerance the layer is held to. The tests, ``jaxbp check``, the golden
files of ``jaxbp devices`` and the docs all iterate over :data:`REGISTRY`, so a
layer added to a family's cases is checked everywhere. Each family keeps its cases in
a module of :mod:`jaxbp.cases` (``jaxbp.cases.conv`` for the convolutions, ...),
gathered here; :mod:`jaxbp.cases.kit` defines :class:`~jaxbp.cases.kit.Case`,
:class:`~jaxbp.cases.kit.LayerSpec` and the input makers.

Example inputs are made in float64 with NumPy from a seeded generator; the
checks cast floating arrays to the dtype under test and leave integer arrays
(labels) and PRNG keys alone.
"""

from __future__ import annotations

from jaxbp.cases import activation, combine, conv, dense, dropout, loss, norm, pool, residual, upsample
from jaxbp.cases.kit import Case, LayerSpec

__all__ = ["REGISTRY", "Case", "LayerSpec", "get"]

REGISTRY: dict[str, LayerSpec] = {
    spec.name: spec
    for family in (conv, pool, dense, activation, loss, norm, dropout, residual, upsample, combine)
    for spec in family.SPECS
}


def get(name: str) -> LayerSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown layer {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
