"""What every jaxbp figure shares: pyplot on the Agg backend, imported lazily (so that
importing jaxbp stays cheap), and the write through :func:`jaxbp.files.atomic_write`.

Used by :mod:`jaxbp.curves` (training curves) and :mod:`jaxbp.plots` (gradient pictures).
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxbp.files import Existing, OutputError, atomic_write

FORMATS = {".pdf": "pdf", ".svg": "svg"}  # by the file's suffix; anything else is written as PNG


def pyplot():
    """``matplotlib.pyplot``, with the Agg backend unless one was already chosen."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` and close it; returns the path. A PNG, or a PDF or SVG
    where the suffix says so.

    Atomic (a failed write, disk full, leaves the previous figure whole), and it replaces
    only a previous figure (:data:`jaxbp.files.Existing.FIGURE`), never a data file, a
    folder or a device: :class:`jaxbp.files.OutputError` naming ``path``. A figure that
    matplotlib cannot draw (mathtext that does not parse in a label or title) is an
    ``OutputError`` too, in one line."""
    plt = pyplot()
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower(), "png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=110), Existing.FIGURE)
    except OSError as err:
        raise OutputError(f"{path}: cannot write: {os.strerror(err.errno) if err.errno else err}") from None
    except ValueError as err:
        if isinstance(err, OutputError):
            raise
        problem = " ".join(str(err).split())  # matplotlib's parse errors span several lines
        raise OutputError(f"{path}: cannot draw the figure: {problem}") from None
    finally:
        plt.close(fig)


def mathtext_problem(text: str) -> str | None:
    """Why matplotlib cannot draw ``text`` (a label, a title) as mathtext, in one line, or
    ``None``: a text with no ``$...$`` pair is drawn as it is."""
    pyplot()
    from matplotlib import cbook, mathtext

    if not cbook.is_math_text(text):
        return None
    try:
        mathtext.MathTextParser("path").parse(text)
    except ValueError as err:
        problem = " ".join(str(err).split())
        return problem if len(problem) <= 200 else problem[:200] + "..."
    return None
