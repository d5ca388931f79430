"""Writing output files safely: atomic writes and up-front checks of output destinations.

Every command that writes a file the user named (``bench --json``, ``devices --json``,
the files of a training run) goes through here, so that a file-system fault (disk full,
read-only, a folder where a file is wanted, a file where a folder is wanted) is one
:class:`OutputError` naming the path, and a reader never sees a half-written file.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from jaxbp.checkpoint import fsync_dir

__all__ = ["NEW_FILE_MODE", "OutputError", "atomic_write_text", "check_output_file", "describe_os_error"]

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: files written here get the usual 0o666 & ~umask, not mkstemp's 0o600
NEW_FILE_MODE = 0o666 & ~_UMASK  # the mode a plain open() would give a new file


class OutputError(ValueError):
    """An output cannot be written where it was asked for; the message names the path."""


def describe_os_error(err: OSError, path: str | os.PathLike) -> str:
    """``"<path>: <what went wrong>"`` in one line, for any ``OSError`` of writing ``path``."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    hint = {
        errno.ENOSPC: " (the disk is full)",
        errno.EDQUOT: " (the disk quota is exhausted)",
        errno.EROFS: " (the file system is mounted read-only)",
    }.get(err.errno or 0, "")
    return f"{path}: cannot write: {reason}{hint}"


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check, before any work, that a file can be written at ``path``: it is not a folder,
    its parent is a folder (created if missing) and the parent accepts new files. Creates
    nothing but the missing parent folders. Raises :class:`OutputError` naming ``flag``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; give a file name")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{flag} {path}: {parent} exists and is not a folder") from None
    except NotADirectoryError:
        raise OutputError(f"{flag} {path}: a parent of {parent} is a file, not a folder") from None
    except OSError as err:
        raise OutputError(f"{flag} {describe_os_error(err, parent)}") from None
    try:  # a probe file proves the folder takes new files (permissions, read-only mounts)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{flag} {describe_os_error(err, path)}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {path}: exists and is not writable")
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file in the same folder, fsync and rename:
    readers see the old content or the new, never a part. An ``OSError`` (disk full,
    read-only) becomes :class:`OutputError` naming ``path``; the old file is kept."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), NEW_FILE_MODE)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as err:
        raise OutputError(describe_os_error(err, path)) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path
