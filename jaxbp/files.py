"""The one writer of every file jaxbp writes, and the one reader of the JSON it reads back.

**Writing** (:func:`atomic_write`, :func:`atomic_write_text`): a temp file in the same
folder, fsynced, then ``os.replace`` over the target and an fsync of the folder, so a
reader sees the old file or the new one, never a part. Checkpoints, figures, a run's JSON
files and the ``--json`` outputs all go through it. It refuses, with an
:class:`OutputError` naming the path, to replace anything that is not a regular file (a
folder, a device such as ``/dev/null``, a FIFO, a socket), and with
``existing=Existing.FIGURE`` anything but a previous figure. A file-system fault (disk
full, read-only) is an :class:`OutputError` naming the path; the old file is kept.

:func:`check_output_file` checks a destination the user named (``--out``, ``--json``)
before any work, with the same rules plus one: a file of a run folder (its
``config.json``, ``metrics.jsonl``, ``summary.json``, ``checkpoint.npz``,
``training.png``) is never an output of another command.

**Reading** (:func:`read_json`, :func:`read_json_lines`): strict UTF-8 JSON (no ``NaN``,
no duplicate keys); a problem is an :class:`InputError` naming the file and the line.
:func:`killed_run` says whether a run folder's ``summary.json`` says "running" although no
process holds its lock (the run was killed).
"""

from __future__ import annotations

import enum
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "NEW_FILE_MODE",
    "RUN_FILE_NAMES",
    "Existing",
    "InputError",
    "JsonLine",
    "JsonLines",
    "OutputError",
    "atomic_write",
    "atomic_write_text",
    "check_output_file",
    "describe_os_error",
    "fsync_dir",
    "is_figure",
    "killed_run",
    "lock_is_held",
    "parse_json",
    "read_json",
    "read_json_lines",
    "run_folder_of",
]

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: files written here get the usual 0o666 & ~umask, not mkstemp's 0o600
NEW_FILE_MODE = 0o666 & ~_UMASK  # the mode a plain open() would give a new file

LOCK_NAME = ".jaxbp.lock"
# The files of a run folder (jaxbp.train.runfolder writes them); a folder holding one holds a run.
RUN_FILE_NAMES = ("config.json", "metrics.jsonl", "summary.json", "training.png", "checkpoint.npz")

# The first bytes of the figures jaxbp writes (an SVG is XML text that holds an <svg element).
_FIGURE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"%PDF-")


class OutputError(ValueError):
    """An output cannot be written where it was asked for; the message names the path."""


class InputError(ValueError):
    """A file read back from disk is not what jaxbp wrote; the message names the file (and line)."""


class Existing(enum.Enum):
    """What an existing file at a destination may be for a write to replace it."""

    REGULAR = "any regular file"
    FIGURE = "a figure (PNG, PDF or SVG) or an empty file"


# ------------------------------------------------------------------ refusal rules


def describe_os_error(err: OSError, path: str | os.PathLike) -> str:
    """``"<path>: <what went wrong>"`` in one line, for any ``OSError`` of writing ``path``."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    hint = {
        errno.ENOSPC: " (the disk is full)",
        errno.EDQUOT: " (the disk quota is exhausted)",
        errno.EROFS: " (the file system is mounted read-only)",
    }.get(err.errno or 0, "")
    return f"{path}: cannot write: {reason}{hint}"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def is_figure(path: str | os.PathLike) -> bool:
    """Whether the regular file at ``path`` is empty or a PNG, PDF or SVG (by its first bytes)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head or head.startswith(_FIGURE_MAGIC):
        return True
    text = head.lstrip().lower()
    return text.startswith((b"<?xml", b"<svg", b"<!doctype svg")) and b"<svg" in text


def _refusal(path: Path, existing: Existing) -> str | None:
    """Why a write must not replace what is at ``path`` (``None``: a new path or a replaceable file)."""
    try:
        mode = os.stat(path).st_mode  # follows a symbolic link: what it points to counts
    except (FileNotFoundError, NotADirectoryError):  # a new path (a parent that is a file fails later)
        return None
    except OSError as err:
        return f"cannot inspect it: {os.strerror(err.errno) if err.errno else err}"
    if stat.S_ISDIR(mode):
        return "is a folder; give a file name"
    if not stat.S_ISREG(mode):
        return f"is {_kind(mode)}, not a regular file; refusing to write there"
    if existing is Existing.FIGURE:
        try:
            figure = is_figure(path)
        except OSError as err:
            return f"cannot read it to see whether it is a figure: {os.strerror(err.errno) if err.errno else err}"
        if not figure:
            return "exists and is not a figure (PNG, PDF or SVG); refusing to replace it"
    return None


def run_folder_of(path: str | os.PathLike) -> Path | None:
    """The run folder whose file ``path`` is (symbolic links resolved), or ``None``: ``path``
    is named like a run's file and its folder holds a run (a checkpoint, config, summary or lock)."""
    real = Path(os.path.realpath(path))
    if real.name not in RUN_FILE_NAMES + (LOCK_NAME,):
        return None
    markers = ("config.json", "summary.json", "checkpoint.npz", LOCK_NAME)
    return real.parent if any((real.parent / name).exists() for name in markers) else None


def check_output_file(path: str | os.PathLike, flag: str, existing: Existing = Existing.REGULAR) -> Path:
    """Check, before any work, that a file can be written at ``path``: not a file of a run
    folder, a new path or an ``existing`` kind of regular file (never a folder or a device),
    its parent a folder (created if missing) that accepts new files. Creates nothing but the
    missing parent folders. Raises :class:`OutputError` naming ``flag``."""
    path = Path(path)
    run = run_folder_of(path)
    if run is not None:
        raise OutputError(
            f"{flag} {path}: is {Path(os.path.realpath(path)).name} of the run in {run}; "
            "refusing to overwrite a run's files, choose another file"
        )
    problem = _refusal(path, existing)
    if problem:
        raise OutputError(f"{flag} {path}: {problem}")
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


# ------------------------------------------------------------------ the writer


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (a no-op on Windows, where folders cannot be fsynced)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], Any], existing: Existing = Existing.REGULAR
) -> Path:
    """Write ``path`` through ``write(f)`` (``f`` a binary file) atomically: a temp file in
    the same folder, fsync, ``os.replace``, fsync of the folder. Refuses (:class:`OutputError`
    naming ``path``) to replace a non-regular file, or one that is not of the ``existing``
    kind; an ``OSError`` of writing becomes :class:`OutputError` too. On any failure the old
    file stays and no temp file is left."""
    path = Path(path)
    problem = _refusal(path, existing)
    if problem:
        raise OutputError(f"{path}: {problem}")
    tmp = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), NEW_FILE_MODE)  # as readable as any file the user writes
            write(f)
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


def atomic_write_text(path: str | os.PathLike, text: str, existing: Existing = Existing.REGULAR) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), existing)


# ------------------------------------------------------------------ the reader


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"the key {twice!r} appears twice")
    return dict(pairs)


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not strict JSON")


def parse_json(text: str | bytes, where: str) -> Any:
    """The strict JSON value of ``text``; :class:`InputError` starting with ``where``."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_strict_object, parse_constant=_no_constant)
    except UnicodeDecodeError as err:
        raise InputError(f"{where}: is not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: is not valid JSON ({err.msg} at column {err.colno})") from None
    except (ValueError, RecursionError) as err:
        raise InputError(f"{where}: is not valid JSON ({err})") from None


def read_json(path: str | os.PathLike) -> Any:
    """The strict JSON in the file ``path`` (see :func:`parse_json`); an unreadable file is an
    :class:`InputError` naming it."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read: {os.strerror(err.errno) if err.errno else err}") from None
    return parse_json(raw, str(path))


class JsonLine(NamedTuple):
    """One record of a JSON-lines file: its line number, the object, and the line as written."""

    number: int
    record: dict[str, Any]
    text: str


class JsonLines(NamedTuple):
    """The records of a JSON-lines file and, when a torn last line (a write cut short by a
    crash) was left out, its line number and size in bytes."""

    records: list[JsonLine]
    torn_line: int | None = None
    torn_bytes: int = 0


def read_json_lines(path: str | os.PathLike) -> JsonLines:
    """Every line of ``path`` a strict JSON object ending in a newline (blank lines skipped).
    A bad last line (unterminated, NUL-padded or not JSON; only blank lines after it) is a
    torn last write, left out and reported in ``torn_line``; a bad line before a good one is
    an :class:`InputError` naming the line."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read: {os.strerror(err.errno) if err.errno else err}") from None
    lines = raw.split(b"\n")
    content = [i for i, line in enumerate(lines) if line.strip(b" \t\r")]  # NUL padding is content
    records: list[JsonLine] = []
    for i in content:
        where = f"{path}: line {i + 1}"
        try:
            if i == len(lines) - 1:  # no newline after it: a write cut short, even if it parses
                raise InputError(f"{where}: has no newline at its end")
            rec = parse_json(lines[i], where)
            if not isinstance(rec, dict):
                raise InputError(f"{where}: is a JSON {type(rec).__name__}, not a record (a JSON object)")
        except InputError as err:
            if i != content[-1]:
                raise InputError(f"{err}; records follow it, so it is no torn last write") from None
            return JsonLines(records, i + 1, len(b"\n".join(lines[i:])))
        records.append(JsonLine(i + 1, rec, lines[i].decode("utf-8")))
    return JsonLines(records)


# ------------------------------------------------------------------ run folders


def lock_is_held(folder: str | os.PathLike) -> bool:
    """Whether a process holds ``folder``'s ``.jaxbp.lock`` (a run is writing it). A missing
    lock file is not held; so is any lock where ``flock`` does not exist (Windows)."""
    lock = Path(folder) / LOCK_NAME
    if fcntl is None or not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a shared probe: fails while a run holds it
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the probe
    return False


def killed_run(folder: str | os.PathLike, *, locked_here: bool = False) -> bool:
    """Whether the run in ``folder`` was killed: its ``summary.json`` says "running" but no
    process holds its lock (``locked_here``: this process holds it, so no other does)."""
    try:
        summary = read_json(Path(folder) / "summary.json")
    except InputError:
        return False
    if not isinstance(summary, dict) or summary.get("status") != "running":
        return False
    return locked_here or not lock_is_held(folder)
