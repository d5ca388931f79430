"""The files of the IDX data sets: where they are looked for and how they are read.

The file side of :mod:`jaxbp.data` (which loads, splits, batches and augments what is read
here, and re-exports every public name of this module and of :mod:`jaxbp.download`, so
``jaxbp.data.read_idx`` etc. keep working).

* ``mnist`` and ``fashion-mnist`` are the four standard IDX files, gzipped (``.gz``)
  or raw, looked up in this order (first folder holding all four wins):

  1. the ``data_dir`` argument (``--data-dir``), and ``data_dir/<name>``;
  2. ``$JAXBP_DATA`` and ``$JAXBP_DATA/<name>``;
  3. the cache, ``<cache>/<name>`` (:func:`default_cache_dir`), where ``fetch`` writes;
  4. ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` installs there).

  :func:`find_files` returns them, or raises :class:`MissingDataError` saying where it
  looked and how to get them (:func:`missing_message`).
* :func:`read_idx` parses them strictly; every problem raises :class:`DataError` naming
  the file. :func:`read_split` reads and cross-checks one split's images and labels.
* :func:`jaxbp.download.fetch` (the only code in jaxbp that touches the network) writes
  them into the cache.

The errors live here (``jaxbp.data`` and ``jaxbp.download`` import this module, never the reverse).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxbp.choices import DATASETS

__all__ = [
    "ENV_DATA",
    "FILE_NAMES",
    "IDX_DATASETS",
    "IDX_FILES",
    "MAX_IDX_BYTES",
    "NUM_CLASSES",
    "SYSTEM_DATA_DIR",
    "SYSTEM_PACKAGES",
    "DataError",
    "Located",
    "MissingDataError",
    "canonical_name",
    "default_cache_dir",
    "find_files",
    "locate",
    "missing_message",
    "read_idx",
    "read_idx_header",
    "read_split",
    "remedies",
    "search_dirs",
]

IDX_DATASETS = ("mnist", "fashion-mnist")  # the data sets of DATASETS read from IDX files
NUM_CLASSES = 10

# The four files of an IDX data set: split -> (images, labels), names without ".gz".
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILE_NAMES = tuple(name for pair in IDX_FILES.values() for name in pair)

# Where system packages put data sets (Debian: dataset-fashion-mnist).
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
# Debian packages that provide a data set, for the "how to get it" hint.
SYSTEM_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}

ENV_DATA = "JAXBP_DATA"

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # ubyte (0x08) with 3 dims (images) / 1 dim (labels)
_IDX_UBYTE = 0x08
_CHUNK = 1 << 16
# The largest IDX payload read, 1 GiB (MNIST's train images are 47 MB, EMNIST's largest 0.55 GB):
# a header declaring more is refused before anything is allocated.
MAX_IDX_BYTES = 1 << 30
_DEFLATE_MAX_RATIO = 1032  # deflate's largest expansion: 258 bytes from 2 bits


class DataError(ValueError):
    """A data set is unknown, malformed, inconsistent or failed to download."""


class MissingDataError(DataError):
    """The files of a data set were not found; the message says where it looked."""


# ------------------------------------------------------------------ locations


def canonical_name(name: str) -> str:
    """``name`` as one of :data:`jaxbp.choices.DATASETS` (``fashion_mnist`` is accepted too)."""
    canon = str(name).strip().lower().replace("_", "-")
    if canon not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    return canon


def default_cache_dir(platform: str | None = None) -> Path:
    """The per-user cache root for jaxbp (no dependency, the usual conventions).

    Linux/other: ``$XDG_CACHE_HOME/jaxbp`` or ``~/.cache/jaxbp``; macOS:
    ``~/Library/Caches/jaxbp``; Windows: ``%LOCALAPPDATA%\\jaxbp``.
    ``platform`` defaults to ``sys.platform``.
    """
    platform = sys.platform if platform is None else platform
    if platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        root = Path(base) if base else Path.home() / "AppData" / "Local"
    elif platform == "darwin":
        root = Path.home() / "Library" / "Caches"
    else:
        base = os.environ.get("XDG_CACHE_HOME")
        # The XDG spec says relative paths are invalid and must be ignored.
        root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "jaxbp"


def _search_plan(name: str, data_dir: str | os.PathLike | None) -> list[Path | str]:
    """The folders to look in, in order, with a note (str) where ``$JAXBP_DATA`` is unset."""
    plan: list[Path | str] = []
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        plan += [base, base / name]
    env = os.environ.get(ENV_DATA)
    if env:
        base = Path(env).expanduser()
        plan += [base, base / name]
    else:
        plan.append(f"(${ENV_DATA} is not set)")
    plan += [default_cache_dir() / name, SYSTEM_DATA_DIR / name]
    seen: set[Path | str] = set()
    return [d for d in plan if not (d in seen or seen.add(d))]  # type: ignore[func-returns-value]


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders :func:`load` looks in for ``name``, in order."""
    return [d for d in _search_plan(canonical_name(name), data_dir) if isinstance(d, Path)]


def _file_in(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


class Located(NamedTuple):
    """What :func:`locate` found: the four files (None unless one folder holds all of them)
    and a line per folder looked in, saying what was there."""

    files: dict[str, Path] | None
    looked: list[str]


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Located:
    """The four files of ``name`` (a canonical IDX data set name) from the first folder
    holding all of them, and a line per folder looked in."""
    looked: list[str] = []
    for folder in _search_plan(name, data_dir):
        if isinstance(folder, str):
            looked.append(folder)
            continue
        if not folder.is_dir():
            looked.append(f"{folder} (no such folder)")
            continue
        files = {stem: _file_in(folder, stem) for stem in FILE_NAMES}
        missing = [stem for stem, path in files.items() if path is None]
        if not missing:
            return Located(files, looked + [f"{folder} (found)"])  # type: ignore[arg-type]
        looked.append(f"{folder} (missing {', '.join(s + '[.gz]' for s in missing)})")
    return Located(None, looked)


def remedies(name: str) -> str:
    """The ways to get the files of ``name``, one per line (indented by two spaces)."""
    lines = [f"  jaxbp data fetch {name}    (downloads and verifies them into {default_cache_dir() / name})"]
    if name in SYSTEM_PACKAGES:
        lines.append(
            f"  apt-get install {SYSTEM_PACKAGES[name]}    "
            f"(Debian package, installs them into {SYSTEM_DATA_DIR / name})"
        )
    lines.append(
        f"  or pass --data-dir DIR (data_dir=DIR), or set ${ENV_DATA}, to a folder holding "
        f"{', '.join(FILE_NAMES)} (each .gz or raw)"
    )
    return "\n".join(lines)


def missing_message(name: str, looked: list[str]) -> str:
    """The message of :class:`MissingDataError`: where :func:`locate` looked, then :func:`remedies`."""
    lines = [f"{name}: the IDX files were not found. Looked in:"]
    lines += [f"  {line}" for line in looked]
    lines.append("Get them with one of:")
    lines.append(remedies(name))
    return "\n".join(lines)


def find_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The paths of the four IDX files of ``name`` (keys: file names without ``.gz``).

    Raises :class:`MissingDataError` listing every folder looked in and the remedies.
    """
    name = canonical_name(name)
    if name not in IDX_DATASETS:
        raise DataError(f"{name!r} is bundled with scikit-learn and has no files")
    files, looked = locate(name, data_dir)
    if files is None:
        raise MissingDataError(missing_message(name, looked))
    return files


# ------------------------------------------------------------------ IDX files


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_payload(f, size: int) -> tuple[np.ndarray, int]:
    """A uint8 array of ``size`` bytes filled from ``f`` and how many were there (fewer only at
    the end of the file). Allocated once, after :func:`_check_declared` bounded ``size``."""
    payload = np.empty(size, dtype=np.uint8)
    view, got = memoryview(payload), 0
    while got < size:
        n = f.readinto(view[got : got + _CHUNK * 64])
        if not n:
            break
        got += n
    return payload, got


def _check_declared(path: Path, dims: tuple[int, ...]) -> int:
    """The payload size the header declares, checked before anything is allocated: at most
    :data:`MAX_IDX_BYTES`, exactly what a raw file holds, and no more than a gzip file of
    this size can inflate to (deflate expands at most :data:`_DEFLATE_MAX_RATIO` to 1)."""
    size = math.prod(dims)
    shape = f"{'x'.join(map(str, dims))} = {size} bytes"
    if size > MAX_IDX_BYTES:
        raise DataError(f"{path}: header declares {shape}, more than the limit of {MAX_IDX_BYTES} bytes (1 GiB)")
    on_disk = path.stat().st_size
    if path.suffix == ".gz":
        if size > on_disk * _DEFLATE_MAX_RATIO:
            raise DataError(f"{path}: header declares {shape}, more than a gzip file of {on_disk} bytes can hold")
        return size
    actual = on_disk - (4 + 4 * len(dims))
    if actual != size:
        what = "truncated payload" if actual < size else "trailing bytes after the payload"
        raise DataError(f"{path}: {what}: header says {shape}, file holds {actual}")
    return size


def _parse_header(f, path: Path, ndim: int | None) -> tuple[int, ...]:
    magic_bytes = f.read(4)
    if len(magic_bytes) < 4:
        raise DataError(f"{path}: truncated IDX header: {len(magic_bytes)} bytes, expected at least 4")
    zero, dtype_code, dims = struct.unpack(">HBB", magic_bytes)
    magic = int.from_bytes(magic_bytes, "big")
    expected = f" (expected 0x{_IDX_MAGIC[ndim]:08x})" if ndim in _IDX_MAGIC else ""
    if zero != 0:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}{expected}: not an IDX file")
    if dtype_code != _IDX_UBYTE:
        raise DataError(
            f"{path}: bad magic number 0x{magic:08x}{expected}: element type 0x{dtype_code:02x} "
            f"is not unsigned byte (0x08)"
        )
    if ndim is not None and dims != ndim:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}{expected}: {dims} dimensions, expected {ndim}")
    if dims == 0:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}: zero dimensions")
    raw = f.read(4 * dims)
    if len(raw) < 4 * dims:
        raise DataError(f"{path}: truncated IDX header: the {dims} dimension sizes need {4 * dims} bytes")
    return struct.unpack(f">{dims}I", raw)


@contextlib.contextmanager
def _idx_errors(path: Path) -> Iterator[None]:
    """Turn I/O and decompression failures into DataError naming the file."""
    try:
        yield
    except DataError:
        raise
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path}: corrupt gzip stream: {err}") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err}") from err


def read_idx_header(path: str | os.PathLike, *, ndim: int | None = None) -> tuple[int, ...]:
    """The dimension sizes from the header of an IDX ubyte file (payload not read), with the
    declared size checked as :func:`read_idx` checks it."""
    path = Path(path)
    with _idx_errors(path), _open(path) as f:
        dims = _parse_header(f, path, ndim)
        _check_declared(path, dims)
    return dims


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped if the name ends in ``.gz``).

    Strict: the magic number must be ``0x0000 08 nd`` (``0x00000803`` images,
    ``0x00000801`` labels; ``ndim`` fixes ``nd`` when given), the payload must hold
    exactly ``prod(dims)`` bytes (truncation and trailing bytes are errors), and the
    gzip stream must be intact (checked to its CRC). The declared size is checked before
    anything is allocated: at most :data:`MAX_IDX_BYTES`, equal to a raw file's payload,
    within what a gzip file of its size can inflate to; a gzip stream is inflated no
    further than the declared size and one byte. Returns a uint8 array of shape
    ``dims``. Every problem raises :class:`DataError` naming the file.
    """
    path = Path(path)
    with _idx_errors(path), _open(path) as f:
        dims = _parse_header(f, path, ndim)
        size = _check_declared(path, dims)
        payload, got = _read_payload(f, size)  # at most size bytes inflated: a gzip bomb stops here
        if got < size:
            raise DataError(
                f"{path}: truncated payload: header says {'x'.join(map(str, dims))} = {size} bytes, only {got} present"
            )
        if f.read(1):  # also runs gzip's CRC and length check at end of stream
            raise DataError(f"{path}: trailing bytes after the payload of {size} bytes")
    return payload.reshape(dims)


def read_split(name: str, split: str, files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split (``"train"`` or ``"test"``, :data:`IDX_FILES`) of the
    files :func:`find_files` returned: uint8 ``[N, H, W]`` and ``[N]``, checked to hold as many
    images as labels, at least one, and labels below :data:`NUM_CLASSES`."""
    img_path, lbl_path = (files[stem] for stem in IDX_FILES[split])
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lbl_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{name}: {split} count mismatch: {img_path} holds {images.shape[0]} images "
            f"but {lbl_path} holds {labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise DataError(f"{name}: {img_path} holds no images")
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{lbl_path}: label {int(labels[bad])} at index {bad} is out of range 0..{NUM_CLASSES - 1}")
    return images, labels
