"""Data sets: ``digits`` (bundled), MNIST and Fashion-MNIST (IDX files), fetch, batches.

* :func:`load` returns a :class:`Dataset`: float32 images ``[N, H, W, 1]`` normalised
  with the mean and standard deviation of the *train* split (applied to both splits),
  int32 labels ``[N]``.
* ``digits`` is scikit-learn's 8x8 digits (bundled, never downloaded), split 80/20,
  stratified, with ``random_state=seed``.
* ``mnist`` and ``fashion-mnist`` are the four standard IDX files, gzipped (``.gz``)
  or raw, looked up in this order (first folder holding all four wins):

  1. the ``data_dir`` argument (``--data-dir``), and ``data_dir/<name>``;
  2. ``$JAXBP_DATA`` and ``$JAXBP_DATA/<name>``;
  3. the cache, ``<cache>/<name>`` (:func:`default_cache_dir`), where :func:`fetch` writes;
  4. ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` installs there).

  :func:`read_idx` parses them strictly; every problem raises :class:`DataError`
  naming the file, missing files raise :class:`MissingDataError` saying where it
  looked and how to get them.
* :func:`fetch` is the only code in jaxbp that touches the network: it downloads the
  four ``.gz`` files, verifies each against a pinned SHA-256 and moves it into place
  atomically.
* :func:`batches` yields fixed-shape batches (the last one padded, with its count of
  valid rows) in an order that depends only on ``(seed, epoch)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import math
import os
import struct
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from jaxbp.checkpoint import fsync_dir

__all__ = [
    "DATASETS",
    "augment_batch",
    "batch_augmenter",
    "DataError",
    "Dataset",
    "MissingDataError",
    "batches",
    "check_val_split",
    "default_cache_dir",
    "exit_on_error",
    "fetch",
    "format_info",
    "info",
    "load",
    "num_batches",
    "read_idx",
    "read_idx_header",
    "report_error",
    "search_dirs",
    "validation_indices",
]

DATASETS = ("digits", "mnist", "fashion-mnist")
IDX_DATASETS = ("mnist", "fashion-mnist")
NUM_CLASSES = 10

# The four files of an IDX data set: split -> (images, labels), names without ".gz".
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILE_NAMES = tuple(name for pair in IDX_FILES.values() for name in pair)

BASE_URLS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}

# SHA-256 of the gzipped files as served at BASE_URLS. The same values are pinned in
# tensorflow/datasets (tensorflow_datasets/url_checksums/{mnist,fashion_mnist}.txt)
# and in several independent projects; the Fashion-MNIST ones belong to the files
# whose MD5s the Fashion-MNIST README publishes (8d4fb7e6..., 25c81989...,
# bef4ecab..., bb300cfd...). Debian's dataset-fashion-mnist re-compresses the files,
# so its .gz digests differ: load() does not check digests, only fetch() does; the
# strict IDX parser checks what load() reads.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

# Where system packages put data sets (Debian: dataset-fashion-mnist).
SYSTEM_DATA_DIR = Path("/usr/share/datasets")
# Debian packages that provide a data set, for the "how to get it" hint.
SYSTEM_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}

ENV_DATA = "JAXBP_DATA"

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # ubyte (0x08) with 3 dims (images) / 1 dim (labels)
_IDX_UBYTE = 0x08
_CHUNK = 1 << 16


class DataError(ValueError):
    """A data set is unknown, malformed, inconsistent or failed to download."""


class MissingDataError(DataError):
    """The files of a data set were not found; the message says where it looked."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set; arrays are read-only.

    ``x_*``: float32 ``[N, H, W, C]`` normalised as ``(x / scale - mean) / std``;
    ``y_*``: int32 ``[N]`` in ``0 .. num_classes - 1``; ``mean``/``std`` come from the
    train split only (without the validation rows, when there are some).
    """

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int
    mean: float
    std: float
    # The validation split held out of the training rows (``load(..., val_split=f)``); None without one.
    x_val: np.ndarray | None = field(default=None, repr=False)
    y_val: np.ndarray | None = field(default=None, repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape[0]}, test={self.x_test.shape[0]}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"mean={self.mean:.4f}, std={self.std:.4f})"
        )


# ------------------------------------------------------------------ locations


def canonical_name(name: str) -> str:
    """``name`` as one of :data:`DATASETS` (``fashion_mnist`` is accepted too)."""
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


def _locate(name: str, data_dir: str | os.PathLike | None) -> tuple[dict[str, Path] | None, list[str]]:
    """The four files from the first folder holding all of them, and a line per folder looked in."""
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
            return files, looked + [f"{folder} (found)"]  # type: ignore[return-value]
        looked.append(f"{folder} (missing {', '.join(s + '[.gz]' for s in missing)})")
    return None, looked


def _missing_message(name: str, looked: list[str]) -> str:
    lines = [f"{name}: the IDX files were not found. Looked in:"]
    lines += [f"  {line}" for line in looked]
    lines.append("Get them with one of:")
    lines.append(f"  jaxbp data fetch {name}    (downloads and verifies them into {default_cache_dir() / name})")
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


def find_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The paths of the four IDX files of ``name`` (keys: file names without ``.gz``).

    Raises :class:`MissingDataError` listing every folder looked in and the remedies.
    """
    name = canonical_name(name)
    if name not in IDX_DATASETS:
        raise DataError(f"{name!r} is bundled with scikit-learn and has no files")
    files, looked = _locate(name, data_dir)
    if files is None:
        raise MissingDataError(_missing_message(name, looked))
    return files


# ------------------------------------------------------------------ IDX files


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_exact(f, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at end of file); reads in chunks so a bogus huge
    header cannot make us allocate more than the file actually holds."""
    parts, got = [], 0
    while got < n:
        part = f.read(min(_CHUNK * 64, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


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
    """The dimension sizes from the header of an IDX ubyte file (payload not read)."""
    path = Path(path)
    with _idx_errors(path), _open(path) as f:
        return _parse_header(f, path, ndim)


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped if the name ends in ``.gz``).

    Strict: the magic number must be ``0x0000 08 nd`` (``0x00000803`` images,
    ``0x00000801`` labels; ``ndim`` fixes ``nd`` when given), the payload must hold
    exactly ``prod(dims)`` bytes (truncation and trailing bytes are errors), and the
    gzip stream must be intact (checked to its CRC). Returns a uint8 array of shape
    ``dims``. Every problem raises :class:`DataError` naming the file.
    """
    path = Path(path)
    with _idx_errors(path), _open(path) as f:
        dims = _parse_header(f, path, ndim)
        size = math.prod(dims)
        if path.suffix != ".gz":
            header = 4 + 4 * len(dims)
            actual = os.fstat(f.fileno()).st_size - header
            if actual != size:
                what = "truncated payload" if actual < size else "trailing bytes after the payload"
                raise DataError(
                    f"{path}: {what}: header says {'x'.join(map(str, dims))} = {size} bytes, file holds {actual}"
                )
        payload = _read_exact(f, size)
        if len(payload) < size:
            raise DataError(
                f"{path}: truncated payload: header says {'x'.join(map(str, dims))} = {size} bytes, "
                f"only {len(payload)} present"
            )
        if f.read(1):  # also runs gzip's CRC and length check at end of stream
            raise DataError(f"{path}: trailing bytes after the payload of {size} bytes")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _read_split(name: str, split: str, files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
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


# ------------------------------------------------------------------ loading


def _normalised(name: str, x_train: np.ndarray, y_train, x_test: np.ndarray, y_test, scale: float) -> Dataset:
    """float32 / scale, then (x - mean) / std with the train split's statistics."""
    xs = []
    for x in (x_train, x_test):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., None]
        xs.append(x / np.float32(scale))
    mean = float(xs[0].mean(dtype=np.float64))
    std = float(xs[0].std(dtype=np.float64))
    if not std > 0:  # constant images: centre only
        std = 1.0
    arrays = []
    for x in xs:
        x -= np.float32(mean)
        x /= np.float32(std)
        arrays.append(x)
    ys = [np.asarray(y, dtype=np.int32) for y in (y_train, y_test)]
    for a in (*arrays, *ys):
        a.setflags(write=False)
    return Dataset(name, arrays[0], ys[0], arrays[1], ys[1], NUM_CLASSES, mean, std)


def _load_digits(seed: int, val_split: float = 0.0) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )
    return _with_validation("digits", x_train, y_train, x_test, y_test, 16.0, val_split, seed)


def load(name: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0, val_split: float = 0.0) -> Dataset:
    """Load a data set, normalised with its train statistics.

    ``digits``: 1797 8x8x1 images, 80/20 stratified split drawn with ``seed``
    (``data_dir`` is ignored). ``mnist`` / ``fashion-mnist``: 60000/10000 images
    ``[N, 28, 28, 1]`` from the IDX files (see the module docstring for where they
    are looked for; the train/test split is the official one).

    ``val_split`` (0 <= f < 1, default 0: none) holds a seeded, stratified fraction of
    the training rows out as ``x_val``/``y_val`` (see :func:`validation_indices`); the
    normalisation statistics then come from the remaining training rows only.

    Raises :class:`MissingDataError` when the files are absent and :class:`DataError`
    when they are malformed.
    """
    name = canonical_name(name)
    check_val_split(val_split)  # before any file is read
    if name == "digits":
        return _load_digits(seed, val_split)
    files = find_files(name, data_dir)
    x_train, y_train = _read_split(name, "train", files)
    x_test, y_test = _read_split(name, "test", files)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{name}: train images are {x_train.shape[1]}x{x_train.shape[2]} "
            f"({files[IDX_FILES['train'][0]]}) but test images are {x_test.shape[1]}x{x_test.shape[2]} "
            f"({files[IDX_FILES['test'][0]]})"
        )
    return _with_validation(name, x_train, y_train, x_test, y_test, 255.0, val_split, seed)


def info(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Where a data set is and what it holds, without loading it (headers only).

    Keys: ``name``, ``status`` (``"found"``, ``"bundled"``, ``"not found"`` or
    ``"invalid"``), ``looked_in`` (lines), ``dir``, ``files``, ``train``/``test``
    (``count``, ``image_shape``), ``num_classes``, ``error`` (when invalid) and
    ``remedy`` (when not found).
    """
    name = canonical_name(name)
    if name == "digits":
        n = 1797
        n_test = math.ceil(0.2 * n)
        return {
            "name": name,
            "status": "bundled",
            "source": "sklearn.datasets.load_digits (ships with scikit-learn, no download)",
            "train": {"count": n - n_test, "image_shape": [8, 8, 1]},
            "test": {"count": n_test, "image_shape": [8, 8, 1]},
            "num_classes": NUM_CLASSES,
        }
    files, looked = _locate(name, data_dir)
    out: dict[str, Any] = {"name": name, "looked_in": looked}
    if files is None:
        out["status"] = "not found"
        out["remedy"] = _missing_message(name, looked).split("Get them with one of:\n", 1)[1]
        return out
    out["dir"] = str(files[FILE_NAMES[0]].parent)
    out["files"] = {stem: str(path) for stem, path in files.items()}
    out["num_classes"] = NUM_CLASSES
    try:
        for split, (img, lbl) in IDX_FILES.items():
            dims = read_idx_header(files[img], ndim=3)
            (n_labels,) = read_idx_header(files[lbl], ndim=1)
            if dims[0] != n_labels:
                raise DataError(
                    f"{name}: {split} count mismatch: {files[img]} holds {dims[0]} images "
                    f"but {files[lbl]} holds {n_labels} labels"
                )
            out[split] = {"count": dims[0], "image_shape": [dims[1], dims[2], 1]}
    except DataError as err:
        out["status"] = "invalid"
        out["error"] = str(err)
        return out
    out["status"] = "found"
    return out


def format_info(infos: list[dict[str, Any]]) -> str:
    """Human-readable text for a list of :func:`info` results (``jaxbp data info``)."""
    lines: list[str] = []
    for item in infos:
        status = item["status"]
        where = f" in {item['dir']}" if "dir" in item else ""
        lines.append(f"{item['name']}: {status}{where}")
        if status == "bundled":
            lines.append(f"  source: {item['source']}")
        for split in ("train", "test"):
            if split in item:
                shape = "x".join(str(d) for d in item[split]["image_shape"])
                lines.append(
                    f"  {split + ':':6} {item[split]['count']:>6} images {shape}, {item['num_classes']} classes"
                )
        if status == "invalid":
            lines.append(f"  error: {item['error']}")
        if status in ("not found", "invalid"):
            lines.append("  looked in:")
            lines += [f"    {line}" for line in item["looked_in"]]
        if status == "not found":
            lines.append("  to get it:")
            lines += [f"  {line}" for line in item["remedy"].splitlines()]
    return "\n".join(lines)


# ------------------------------------------------------------------ validation split


def check_val_split(fraction: float) -> float:
    """``fraction`` if it is a number with 0 <= fraction < 1 (0: no validation split); :class:`DataError` otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating, np.integer)):
        raise DataError(f"val_split must be a number in [0, 1), got {fraction!r}")
    if not (math.isfinite(fraction) and 0.0 <= fraction < 1.0):
        raise DataError(f"val_split must be in [0, 1) (a fraction of the training rows), got {fraction!r}")
    return float(fraction)


def validation_indices(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, val_rows)``: a seeded, stratified hold-out of ``fraction`` (0 < f < 1) of the rows.

    Each class ``c`` with ``n_c`` rows gives ``round(fraction * n_c)`` of them (half up), drawn
    by ``np.random.default_rng(seed)`` class by class in label order, so the validation split
    has the class proportions of ``y`` and the same seed gives the same rows. Both index
    arrays are sorted and disjoint and cover every row. A fraction that leaves a class with
    no validation row, or with no training row, is a :class:`DataError`.
    """
    fraction = check_val_split(fraction)
    if fraction == 0.0:
        raise DataError("val_split must be > 0 to hold out a validation split")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = int(math.floor(fraction * len(rows) + 0.5))
        if not 1 <= k < len(rows):
            raise DataError(
                f"val_split={fraction} holds out {k} of the {len(rows)} training rows of class {c}; "
                "every class needs at least one validation and one training row"
            )
        val.append(rng.permutation(rows)[:k])
    val_rows = np.sort(np.concatenate(val))
    train_rows = np.setdiff1d(np.arange(len(y)), val_rows, assume_unique=True)
    return train_rows, val_rows


def _with_validation(name, x_train, y_train, x_test, y_test, scale: float, fraction: float, seed: int) -> Dataset:
    """:func:`_normalised`, with ``fraction`` of the training rows held out first (when > 0): the
    statistics come from the remaining rows, and the held-out rows are normalised with them."""
    if fraction == 0.0:
        return _normalised(name, x_train, y_train, x_test, y_test, scale=scale)
    train_rows, val_rows = validation_indices(y_train, fraction, seed)
    ds = _normalised(name, x_train[train_rows], y_train[train_rows], x_test, y_test, scale=scale)
    x_val = np.asarray(x_train[val_rows], dtype=np.float32)
    x_val = x_val[..., None] if x_val.ndim == 3 else x_val
    x_val = (x_val / np.float32(scale) - np.float32(ds.mean)) / np.float32(ds.std)  # as _normalised does
    y_val = np.asarray(y_train[val_rows], dtype=np.int32)
    for a in (x_val, y_val):
        a.setflags(write=False)
    return dataclasses.replace(ds, x_val=x_val, y_val=y_val)


# ------------------------------------------------------------------ fetch


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK * 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, expected: str, progress: bool) -> None:
    """Stream ``url`` into a temp file next to ``dest``, verify, fsync, os.replace."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)  # fetch() allows http(s) only
            except urllib.error.HTTPError as err:
                raise DataError(f"could not download {url}: HTTP {err.code} {err.reason}") from err
            except (urllib.error.URLError, OSError) as err:
                raise DataError(f"could not download {url}: {getattr(err, 'reason', err)}") from err
            with response:
                total = response.headers.get("Content-Length")
                bar = None
                if progress and sys.stderr.isatty():
                    from tqdm import tqdm

                    bar = tqdm(
                        total=int(total) if total and total.isdigit() else None,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        leave=False,
                    )
                try:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except OSError as err:
                            raise DataError(f"could not download {url}: {err}") from err
                        if not chunk:
                            break
                        out.write(chunk)
                        digest.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected:
            raise DataError(
                f"{dest.name}: SHA-256 mismatch for {url}: expected {expected}, got {actual}; "
                f"the download was discarded"
            )
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fetch(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download the four ``.gz`` files of ``name`` into ``<cache_dir>/<name>`` and verify them.

    ``cache_dir`` defaults to :func:`default_cache_dir` (where :func:`load` looks);
    ``base_url`` (http or https) replaces the canonical :data:`BASE_URLS` entry.
    Each file is checked against its pinned SHA-256 (:data:`SHA256`); a file already
    present with the right digest is not downloaded again. Downloads go to a temp
    file in the same folder, are fsynced and moved into place with ``os.replace``,
    so a file under its final name is always complete and verified. A digest
    mismatch deletes the temp file and raises :class:`DataError` with both digests.
    A tqdm progress bar is shown when ``progress`` and stderr is a terminal.
    Returns the folder holding the files.
    """
    name = canonical_name(name)
    if name not in IDX_DATASETS:
        raise DataError(
            f"{name!r} ships with scikit-learn and needs no download; fetch one of: {', '.join(IDX_DATASETS)}"
        )
    base = base_url or BASE_URLS[name]
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in ("http", "https"):
        raise DataError(f"base URL {base!r} must be http:// or https://")
    if not base.endswith("/"):
        base += "/"
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {folder}: {err}") from err
    digests = SHA256[name]
    for stem in FILE_NAMES:
        fname = f"{stem}.gz"
        dest = folder / fname
        if dest.is_file() and _sha256_file(dest) == digests[fname]:
            continue  # present and verified
        _download(base + fname, dest, digests[fname], progress)
    return folder


# ------------------------------------------------------------------ batches


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for ``n`` examples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = False,
    start_batch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield ``(x_batch, y_batch, n_valid)`` covering ``x``/``y`` once.

    The order is ``np.random.default_rng((seed, epoch)).permutation(n)`` (or the
    identity without ``shuffle``): the same for the same ``(seed, epoch)``, different
    across epochs. Every batch has exactly ``batch_size`` rows so a jitted step never
    retraces: the last partial batch is padded by repeating its valid rows, and
    ``n_valid`` (< ``batch_size``) says how many leading rows are real, for the step
    to mask out the rest. ``drop_last`` drops the partial batch instead.
    ``start_batch`` skips that many batches (resuming mid-epoch) without gathering them.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"batches: x has {n} rows but y has {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batches: batch_size must be >= 1, got {batch_size}")
    if shuffle:
        order = np.random.default_rng((seed, epoch)).permutation(n)
    else:
        order = np.arange(n)
    for start in range(start_batch * batch_size, n, batch_size):
        idx = order[start : start + batch_size]
        n_valid = len(idx)
        if n_valid < batch_size:
            if drop_last:
                return
            idx = np.resize(idx, batch_size)  # repeats the valid rows cyclically
        yield x[idx], y[idx], n_valid


# ------------------------------------------------------------------ CLI helpers

F = TypeVar("F", bound=Callable[..., Any])


def report_error(err: BaseException, prog: str = "jaxbp") -> int:
    """Print ``err`` for a command line (no traceback) and return exit status 2."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def exit_on_error(*errors: type[BaseException], prog: str = "jaxbp") -> Callable[[F], F]:
    """Decorator for a CLI ``_run_*`` function: the given errors (default
    :class:`DataError`) print their message and return exit status 2.

    ``@exit_on_error(DataError, CheckpointError)`` on ``_run_train`` covers both.
    """
    caught = errors or (DataError,)

    def wrap(run: F) -> F:
        @functools.wraps(run)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return run(*args, **kwargs)
            except caught as err:
                return report_error(err, prog)

        return wrapper  # type: ignore[return-value]

    return wrap


# ------------------------------------------------------------------ augmentation


def augment_batch(x: np.ndarray, mode: str, rng: np.random.Generator, fill: float, pad: int = 2) -> np.ndarray:
    """Random shifts of up to ``pad`` pixels (``crop``: pad with ``fill``, crop back) and/or
    horizontal flips with probability 1/2 (``flip``), per image, in numpy. ``mode`` is one of
    ``none``, ``crop``, ``flip``, ``crop-flip``; ``x`` is ``[N, H, W, C]``."""
    if mode == "none":
        return x
    n, h, w, _ = x.shape
    if "crop" in mode:
        padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
        oy = rng.integers(0, 2 * pad + 1, size=n)
        ox = rng.integers(0, 2 * pad + 1, size=n)
        rows = (oy[:, None] + np.arange(h))[:, :, None]
        cols = (ox[:, None] + np.arange(w))[:, None, :]
        x = padded[np.arange(n)[:, None, None], rows, cols]
    if "flip" in mode:
        flip = rng.random(n) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    return np.ascontiguousarray(x, dtype=np.float32)


def batch_augmenter(config: Any, ds: Dataset) -> Callable[[np.ndarray, int, int], np.ndarray]:
    """``augment(x, epoch, batch_index)``: the augmentation of one batch that ``config`` (a
    ``TrainConfig``: its ``seed``, ``augment`` and ``shift``) asks for, its draws seeded by
    ``(seed, epoch, batch_index)``, so a resumed run (or a twin outside jaxbp that uses this)
    sees the same shifts and flips; shifted-in pixels are blank (0 before normalisation)."""
    fill = float((0.0 - ds.mean) / ds.std)
    seed, mode, shift = config.seed, config.augment, config.shift

    def augment(x: np.ndarray, epoch: int, batch_index: int) -> np.ndarray:
        return augment_batch(x, mode, np.random.default_rng((seed, epoch, batch_index)), fill, shift)

    return augment
