"""Registry cases by layer family, beside :mod:`jaxbp.registry` which gathers them.

Each module holds ``SPECS``, the :class:`~jaxbp.cases.kit.LayerSpec` entries of one family
(its configurations and the inputs it must reject); :mod:`jaxbp.cases.kit` holds the
dataclasses and input makers they are built from.
"""
