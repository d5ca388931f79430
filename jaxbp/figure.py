"""What every jaxbp figure shares: pyplot on the Agg backend, imported lazily (so that
importing jaxbp stays cheap), and an atomic PNG write.

Used by :mod:`jaxbp.curves` (training curves) and :mod:`jaxbp.plots` (gradient pictures).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from jaxbp.files import NEW_FILE_MODE


def pyplot():
    """``matplotlib.pyplot``, with the Agg backend unless one was already chosen."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as a PNG and close it; returns the path.

    The PNG goes through a temp file and a rename, so that a failed write (disk full)
    leaves the previous figure whole; an ``OSError`` names ``path``."""
    plt = pyplot()
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
        os.fchmod(fd, NEW_FILE_MODE)  # as readable as any other file the user writes, not mkstemp's 0o600
        os.close(fd)
        tmp = Path(name)
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        plt.close(fig)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path
