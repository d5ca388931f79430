"""What every jaxbp figure shares: pyplot on the Agg backend, imported lazily (so that
importing jaxbp stays cheap), log axes labelled in plain numbers (:func:`log_axis`), small
arrays drawn with their numbers in the cells (:func:`numbered_heatmap`, :func:`numbered_comparison`), and the write through
:func:`jaxbp.files.atomic_write`.

Used by :mod:`jaxbp.curves` (training curves) and :mod:`jaxbp.plots` (gradient pictures).
"""

from __future__ import annotations

import math
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


def numbered_heatmap(ax, a, title: str, lim: float):
    """``a`` as a heatmap symmetric about 0 (``-lim`` to ``lim``), each cell labelled with its value;
    returns the image (for a colorbar). The worked-example figures of the derivations guide."""
    import numpy as np

    im = ax.imshow(a, cmap="coolwarm", vmin=-lim, vmax=lim)
    for (i, j), v in np.ndenumerate(a):
        ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=10)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(a.shape[1]))
    ax.set_yticks(range(a.shape[0]))
    ax.tick_params(labelsize=8, length=0)
    return im


def numbered_comparison(fig, axes, a, a_title: str, b, b_title: str, label: str):
    """Three :func:`numbered_heatmap` panels on one scale, ``a``, ``b`` and ``a - b`` (titled with
    its largest magnitude), and their colorbar: the check row of a worked-example figure."""
    import numpy as np

    diff = a - b
    lim = max(float(np.abs(a).max()), float(np.abs(b).max()))
    im = numbered_heatmap(axes[0], a, a_title, lim)
    numbered_heatmap(axes[1], b, b_title, lim)
    numbered_heatmap(axes[2], diff, f"difference (max |diff| = {float(np.abs(diff).max()):g})", lim)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label=label)


def log_axis(ax, which: str = "y") -> None:
    """Put ``ax``'s ``which`` axis ("x" or "y") on a log scale whose labels read at a glance.

    On an axis between 1e-3 and 1e4 the labels are plain numbers (0.5, 1, 2, not 5x10^-1),
    on any other powers of ten (10^-6, 2x10^-6). Every power of ten is labelled; the ticks
    between them (2 to 9 times one) are labelled too where few powers of ten are in view, so
    that an axis spanning less than a decade still carries several numbers: all of them on
    an axis shorter than half a decade that holds none, 2, 3, 4, 5, 6 and 8 on one shorter
    than a decade, 2, 3 and 5 where at most one power of ten shows, 2 and 5 where two do.
    """
    from matplotlib import ticker

    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(ticker.LogLocator(base=10))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(range(2, 10)), numticks=12))
    axis.set_major_formatter(ticker.FuncFormatter(lambda x, _: _log_label(x, axis.get_view_interval())))
    axis.set_minor_formatter(ticker.FuncFormatter(lambda x, _: _minor_label(x, axis.get_view_interval())))


def _log_label(x: float, view: tuple[float, float]) -> str:
    """A tick value of a log axis showing ``view``: a plain number (0.05, 2, 300) where the
    whole axis lies between 1e-3 and 1e4, else ``m x 10^e`` in mathtext."""
    if not x > 0 or not math.isfinite(x):
        return ""
    if 1e-3 <= min(view) and max(view) < 1e4:
        return f"{x:.4g}"
    exponent = math.floor(math.log10(x) + 1e-9)
    mantissa = round(x / 10**exponent, 3)
    return f"$10^{{{exponent}}}$" if mantissa == 1 else f"${mantissa:g}\\times10^{{{exponent}}}$"


def _minor_label(x: float, view: tuple[float, float]) -> str:
    """The label of a tick between two powers of ten, or "" (see :func:`log_axis`)."""
    lo, hi = sorted(view)
    if not (lo > 0 and x > 0):
        return ""
    decades = math.log10(hi / lo)
    powers = math.floor(math.log10(hi) + 1e-9) - math.ceil(math.log10(lo) - 1e-9) + 1  # powers of ten in view
    mantissa = round(x / 10 ** math.floor(math.log10(x) + 1e-9))
    if powers == 0 and decades < 0.5:
        labelled = range(2, 10)
    elif powers <= 1:
        labelled = (2, 3, 4, 5, 6, 8) if decades < 1 else (2, 3, 5)
    elif powers == 2:
        labelled = (2, 5)
    else:
        labelled = ()  # the powers of ten say it all
    return _log_label(x, view) if mantissa in labelled else ""


def save_png(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (at ``dpi``) and close it; returns the path. A PNG, or a PDF or SVG
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
        return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi), Existing.FIGURE)
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
