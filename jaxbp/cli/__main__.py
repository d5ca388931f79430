"""``python -m jaxbp.cli``: the ``jaxbp`` console script."""

from jaxbp.cli import run

run()
