"""Data sets in memory: ``digits`` (bundled), MNIST and Fashion-MNIST loaded, split, batched, augmented.

* :func:`load` returns a :class:`Dataset`: float32 images ``[N, H, W, 1]`` normalised
  with the mean and standard deviation of the *train* split (applied to both splits),
  int32 labels ``[N]``.
* ``digits`` is scikit-learn's 8x8 digits (bundled, never downloaded), split 80/20,
  stratified, with ``random_state=seed``.
* ``mnist`` and ``fashion-mnist`` are read from the four standard IDX files, which
  :mod:`jaxbp.datafiles` looks up (``data_dir``, ``$JAXBP_DATA``, the cache,
  ``/usr/share/datasets``) and parses strictly, and :mod:`jaxbp.download` fetches; this
  module re-exports their public names (:func:`fetch`, :func:`read_idx`, :func:`search_dirs`, :class:`DataError`,
  :class:`MissingDataError`, ...), so ``jaxbp.data`` stays the one import for callers.
  :func:`info` and :func:`format_info` describe a data set without loading it.
* ``val_split`` holds out a seeded, stratified validation split (:func:`validation_indices`).
* :func:`batches` yields fixed-shape batches (the last one padded, with its count of
  valid rows) in an order that depends only on ``(seed, epoch)``;
  :func:`batch_augmenter` shifts and flips them, seeded per batch.
* :func:`report_error` turns a :class:`DataError` into a CLI's one-line message and exit
  status 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxbp.choices import DATASETS

# The file side and the download, re-exported (``X as X`` marks the names this module itself does
# not use) so that callers keep using ``jaxbp.data.<name>``. Code that monkeypatches one of these
# globals must patch ``jaxbp.datafiles`` or ``jaxbp.download``, where it is read: patching the alias
# here has no effect.
from jaxbp.datafiles import (
    ENV_DATA as ENV_DATA,
    FILE_NAMES,
    IDX_DATASETS as IDX_DATASETS,
    IDX_FILES,
    MAX_IDX_BYTES as MAX_IDX_BYTES,
    NUM_CLASSES,
    SYSTEM_DATA_DIR as SYSTEM_DATA_DIR,
    SYSTEM_PACKAGES as SYSTEM_PACKAGES,
    DataError,
    Located as Located,
    MissingDataError,
    canonical_name,
    default_cache_dir,
    find_files,
    locate,
    missing_message as missing_message,
    read_idx,
    read_idx_header,
    read_split,
    remedies,
    search_dirs,
)
from jaxbp.download import BASE_URLS as BASE_URLS, SHA256 as SHA256, check_base_url as check_base_url, fetch

__all__ = [
    "MAX_SEED",
    "augment_batch",
    "batch_augmenter",
    "DataError",
    "Dataset",
    "MissingDataError",
    "batches",
    "check_val_split",
    "default_cache_dir",
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


# The largest seed: seeds go to scikit-learn's train_test_split (digits), NumPy and jax.random,
# and the first takes [0, 2**32 - 1] only.
MAX_SEED = 2**32 - 1


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

    @classmethod
    def from_arrays(
        cls,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        *,
        num_classes: int | None = None,
        name: str = "arrays",
        val_split: float = 0.0,
        seed: int = 0,
    ) -> Dataset:
        """A data set of your own arrays, for ``jaxbp.train.fit(config, dataset=...)``.

        ``x_*``: images ``[N, H, W]`` or ``[N, H, W, C]`` of any integer or float dtype (finite),
        the same ``H, W, C`` in both splits; ``y_*``: integer labels ``[N]`` in ``0 ..
        num_classes - 1`` (``num_classes`` defaults to the largest label + 1, at least 2). The
        images become float32 normalised as the built-in data sets are: ``(x - mean) / std``
        with the statistics of the training rows, applied to every split. ``val_split`` holds a
        seeded (``seed``), stratified fraction of the training rows out as ``x_val``/``y_val``
        (:func:`validation_indices`). ``name`` names the data set in the run (``config.json``,
        the default folder ``runs/<name>-<model>-<grad>``): a word of letters, digits, ``.``,
        ``_`` and ``-``, not the name of a data set jaxbp loads. The arrays are copied; the
        data set's own are read-only. Raises :class:`DataError` naming the array and the problem.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise DataError(f"name {name!r} must be a word of letters, digits, '.', '_' and '-'")
        if name in DATASETS or name.replace("_", "-") in DATASETS:
            raise DataError(f"name {name!r} is a data set jaxbp loads; choose another")
        x_train, x_test = _images("x_train", x_train), _images("x_test", x_test)
        if x_test.shape[1:] != x_train.shape[1:]:
            shapes = ["x".join(map(str, x.shape[1:])) for x in (x_test, x_train)]
            raise DataError(f"x_test holds {shapes[0]} images but x_train {shapes[1]}")
        y_train, y_test = (
            _labels("y_train", y_train, "x_train", len(x_train)),
            _labels("y_test", y_test, "x_test", len(x_test)),
        )
        if num_classes is None:
            num_classes = max(int(y_train.max()), int(y_test.max()), 1) + 1
        elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise DataError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        for what, y in (("y_train", y_train), ("y_test", y_test)):
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= num_classes:
                raise DataError(
                    f"{what} holds the label {low if low < 0 else high}; labels must be in [0, {num_classes})"
                )
        y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)  # copies: made read-only below
        ds = _with_validation(name, x_train, y_train, x_test, y_test, 1.0, check_val_split(val_split), seed)
        return dataclasses.replace(ds, num_classes=int(num_classes))

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape[0]}, test={self.x_test.shape[0]}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"mean={self.mean:.4f}, std={self.std:.4f})"
        )


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _images(what: str, x: Any) -> np.ndarray:
    """``x`` as ``[N, H, W, C]`` numbers (not yet copied); :class:`DataError` naming ``what``."""
    x = np.asarray(x)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{what} is {x.dtype}; images must be numbers (integers or floats)")
    if x.ndim not in (3, 4):
        raise DataError(f"{what} has shape {x.shape}; give [N, H, W] or [N, H, W, C]")
    if len(x) == 0:
        raise DataError(f"{what} holds no images")
    if min(x.shape[1:]) < 1:
        raise DataError(f"{what} has shape {x.shape}; every image dimension must be at least 1")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{what} holds NaN or infinite values")
    return x if x.ndim == 4 else x[..., None]


def _labels(what: str, y: Any, images: str, n: int) -> np.ndarray:
    """``y`` as ``[n]`` integers; :class:`DataError` naming ``what``."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what} is {y.dtype}; labels must be integers")
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}; give one integer label per image, [N]")
    if len(y) != n:
        raise DataError(f"{what} has {len(y)} labels for the {n} images of {images}")
    return y


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
    x_train, y_train = read_split(name, "train", files)
    x_test, y_test = read_split(name, "test", files)
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
    files, looked = locate(name, data_dir)
    out: dict[str, Any] = {"name": name, "looked_in": looked}
    if files is None:
        out["status"] = "not found"
        out["remedy"] = remedies(name)
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


def report_error(err: BaseException, prog: str = "jaxbp") -> int:
    """Print ``err`` for a command line (no traceback) and return exit status 2."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


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
