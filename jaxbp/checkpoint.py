"""Checkpoints: one atomic, pickle-free ``.npz`` per run, enough to resume training.

Format (version :data:`FORMAT_VERSION`): an uncompressed ``.npz`` (zip of ``.npy``)
holding

* one array per pytree leaf, named ``"state" + jax.tree_util.keystr(path)``, e.g.
  ``state['params'][0]['w']`` (so ``np.load(path).files`` is readable);
* ``__jaxbp_checkpoint__``: a uint8 array holding UTF-8 JSON with ``format``,
  ``format_version``, ``step``, ``epoch``, ``config``, ``extra``, ``tree`` (the
  container structure: dicts, lists, tuples, namedtuples, None), ``leaves`` (per
  leaf: name, kind, dtype, shape) and ``sha256``: :func:`digest` over every other
  byte of the checkpoint, the metadata (canonical JSON) and every array's name, dtype,
  shape and bytes. Version 1 hashed the arrays only and is refused.

Leaves may be numpy or jax arrays of any dtype (bfloat16 & co. are stored as their
raw bits), numpy scalars, Python ``bool``/``int``/``float``/``str`` (kept in the
JSON, restored with their type) and **typed jax PRNG keys** (``jax.random.key``):
those are stored as ``jax.random.key_data`` (uint32) plus the implementation name,
and restored with ``jax.random.wrap_key_data``, so they come back as typed keys;
raw ``uint32`` keys (``jax.random.PRNGKey``) are plain arrays. Everything else
comes back as numpy.

:func:`save` writes through :func:`jaxbp.files.atomic_write`: a reader sees the old
checkpoint or the new one, never a part. :func:`load` reads with ``np.load(allow_pickle=False)``
and checks before it builds anything: uncompressed entries no larger than the file, the
checksum over every byte, then the structure; any problem is a :class:`CheckpointError`
naming the file. The checksum catches corruption and edits but is no signature (anyone can
recompute it): what a checkpoint says is validated as input and never chooses code to import
(:mod:`jaxbp.train.resume`). Without ``like`` the containers are rebuilt from the JSON
(namedtuples as look-alikes built from their field names); with ``like`` the structure,
shapes and dtypes must match and the result has ``like``'s exact pytree types.

A run keeps its single last good checkpoint at ``<run dir>/checkpoint.npz``
(:data:`CHECKPOINT_NAME`); :func:`latest` finds it for ``--resume``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path, tree_unflatten

from jaxbp.files import (
    InputError,
    atomic_write,
    fsync_dir as fsync_dir,  # jaxbp.datafiles imports it from here
    parse_json,
)

__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "CheckpointError", "digest", "latest", "load", "save"]

FORMAT_VERSION = 2
FORMAT = "jaxbp-checkpoint"
CHECKPOINT_NAME = "checkpoint.npz"
META_KEY = "__jaxbp_checkpoint__"
LEAF_PREFIX = "state"

_PY_SCALARS = {"bool": bool, "int": int, "float": float, "str": str}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another format version, or does not match ``like``."""


# ------------------------------------------------------------------ structure


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(type(node), "_fields")


def _encode(node: Any, path: str, leaves: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON structure of ``node``; appends ``(name, leaf)`` in jax's flattening order."""
    if node is None:
        return {"t": "none"}
    if isinstance(node, dict) and type(node) in (dict, collections.OrderedDict, collections.defaultdict):
        keys = list(node)
        for key in keys:
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint.save: dict keys must be str or int, got {key!r} at {path or 'the root'}")
        if type(node) is not collections.OrderedDict:  # jax flattens dicts in sorted key order
            keys = sorted(keys)
        children = [_encode(node[k], f"{path}[{k!r}]", leaves) for k in keys]
        return {"t": "dict", "keys": keys, "children": children}
    if _is_namedtuple(node):
        fields = list(type(node)._fields)
        children = [_encode(v, f"{path}.{f}", leaves) for f, v in zip(fields, node)]
        return {"t": "namedtuple", "name": type(node).__name__, "fields": fields, "children": children}
    if type(node) in (list, tuple):
        children = [_encode(v, f"{path}[{i}]", leaves) for i, v in enumerate(node)]
        return {"t": type(node).__name__, "children": children}
    leaves.append((path, node))
    return {"t": "leaf"}


def _decode(spec: dict[str, Any], leaves: list[Any], pos: list[int]) -> Any:
    t = spec["t"]
    if t == "leaf":
        pos[0] += 1
        return leaves[pos[0] - 1]
    if t == "none":
        return None
    children = [_decode(c, leaves, pos) for c in spec["children"]]
    if t == "dict":
        return dict(zip(spec["keys"], children))
    if t == "list":
        return children
    if t == "tuple":
        return tuple(children)
    if t == "namedtuple":
        # A look-alike built from the stored names (no class is imported); pass
        # `like=` to get the original class back.
        return collections.namedtuple(spec["name"], spec["fields"])(*children)
    raise ValueError(f"unknown node type {t!r}")


def _count_leaves(spec: dict[str, Any]) -> int:
    if spec["t"] == "leaf":
        return 1
    return sum(_count_leaves(c) for c in spec.get("children", ()))


# ------------------------------------------------------------------ leaves


def _is_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _storable(dtype: np.dtype) -> np.dtype:
    """The dtype an array is stored as: itself, or unsigned ints of the same width
    for the extended float types numpy cannot name (bfloat16, float8_*, int4...)."""
    if dtype.hasobject:
        raise TypeError("object arrays cannot be stored without pickle")
    if dtype.kind == "V":
        return np.dtype(f"u{dtype.itemsize}")
    return dtype


def _dtype_named(name: str) -> np.dtype:
    """The numpy dtype called ``name`` (including ml_dtypes' extended types); never object."""
    try:
        dtype = np.dtype(name)
    except TypeError:
        import ml_dtypes

        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"unknown dtype {name!r}") from None
        try:
            dtype = np.dtype(getattr(ml_dtypes, name))
        except (AttributeError, TypeError):
            raise ValueError(f"unknown dtype {name!r}") from None
        if dtype.name != name:
            raise ValueError(f"unknown dtype {name!r}") from None
    if dtype.hasobject:
        raise ValueError(f"object dtype {name!r} is not allowed")
    return dtype


def _describe_leaf(name: str, leaf: Any) -> tuple[dict[str, Any], np.ndarray | None]:
    """(the leaf's JSON record, the array to store or None for Python scalars)."""
    if isinstance(leaf, (bool, int, float, str)) and type(leaf) in _PY_SCALARS.values():
        value: Any = leaf
        if isinstance(leaf, float) and not math.isfinite(leaf):
            value = repr(leaf)  # "nan", "inf", "-inf": strict JSON has no such numbers
        return {"name": name, "kind": "py", "dtype": type(leaf).__name__, "shape": [], "value": value}, None
    if _is_key(leaf):
        impl = str(jax.random.key_impl(leaf))
        data = np.asarray(jax.random.key_data(leaf))
        record = {"name": name, "kind": "key", "dtype": str(leaf.dtype), "impl": impl, "shape": list(leaf.shape)}
        return record, data
    if isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
        kind = "scalar" if isinstance(leaf, np.generic) else "array"
        arr = np.asarray(leaf)
        try:
            stored = _storable(arr.dtype)
        except TypeError as err:
            raise TypeError(f"checkpoint.save: leaf {name}: {err}") from None
        record = {"name": name, "kind": kind, "dtype": arr.dtype.name, "shape": list(arr.shape)}
        return record, arr.view(stored) if stored != arr.dtype else arr
    raise TypeError(
        f"checkpoint.save: leaf {name} has unsupported type {type(leaf).__name__}; leaves must be "
        f"arrays (numpy/jax), numpy scalars, bool/int/float/str or typed PRNG keys, inside "
        f"dicts, lists, tuples or namedtuples"
    )


def digest(meta: dict[str, Any], arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """The checkpoint's ``sha256``: over the metadata without its ``sha256`` (canonical JSON:
    sorted keys, no spaces) and every array's name, dtype, shape and bytes, by name."""
    h = hashlib.sha256(f"{FORMAT}-v{FORMAT_VERSION}\0".encode())
    body = {k: v for k, v in meta.items() if k != "sha256"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\0")
    for name, arr in sorted(arrays, key=lambda pair: pair[0]):
        h.update(name.encode("utf-8") + b"\0")
        h.update(f"{arr.dtype.str}{arr.shape}".encode() + b"\0")
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ save / load


def save(
    path: str | os.PathLike,
    state: Any,
    *,
    step: int,
    epoch: int,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``state`` (a pytree) with its metadata to ``path`` atomically.

    ``path`` is the ``.npz`` file, or a folder to write :data:`CHECKPOINT_NAME` into.
    ``config`` (a dict, or a dataclass converted with ``dataclasses.asdict``) and
    ``extra`` must be JSON-serialisable. Returns the path written.
    Raises ``TypeError`` for leaves or containers that cannot be stored, and
    :class:`jaxbp.files.OutputError` naming the path when it cannot be written (disk full,
    a folder or device there); the old checkpoint then stays.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)

    named_leaves: list[tuple[str, Any]] = []
    tree = _encode(state, "", named_leaves)
    # Our walk must agree with jax's flattening, which is what `like=` uses on load.
    jax_leaves = tree_flatten_with_path(state)[0]
    if len(jax_leaves) != len(named_leaves) or any(
        keystr(p) != n or leaf is not m for (p, leaf), (n, m) in zip(jax_leaves, named_leaves)
    ):
        raise TypeError(
            "checkpoint.save: state holds a container type checkpoints do not know (custom pytree "
            "node or dict subclass); use dicts, lists, tuples and namedtuples"
        )

    records, arrays = [], []
    for name, leaf in named_leaves:
        record, arr = _describe_leaf(LEAF_PREFIX + name, leaf)
        records.append(record)
        if arr is not None:
            arrays.append((record["name"], arr))
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "step": int(step), "epoch": int(epoch),
        "config": config, "extra": extra if extra is not None else {}, "tree": tree, "leaves": records,
    }  # fmt: skip
    try:  # the digest covers the metadata as load() will parse it (tuples as lists, keys as str)
        meta = json.loads(json.dumps(meta, allow_nan=False))
        meta["sha256"] = digest(meta, arrays)
        meta_bytes = json.dumps(meta, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint.save: config/extra must be JSON-serialisable: {err}") from None
    payload = {name: arr for name, arr in arrays}
    payload[META_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: np.savez(f, allow_pickle=False, **payload))


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}")


def _read_member(path: Path, npz: Any, name: str) -> np.ndarray:
    try:
        value = npz[name]
    except KeyError:
        raise _fail(path, f"entry {name!r} is missing") from None
    except ValueError as err:
        if "pickle" in str(err):
            raise _fail(path, f"entry {name!r} holds a pickled object array; refusing to unpickle") from None
        raise _fail(path, f"entry {name!r} is corrupt: {err}") from None
    except Exception as err:  # noqa: BLE001 (BadZipFile, OSError, zlib.error... from a damaged archive)
        raise _fail(path, f"entry {name!r} is corrupt: {type(err).__name__}: {err}") from None
    if not isinstance(value, np.ndarray):
        raise _fail(path, f"entry {name!r} is not a .npy array")
    return value


def _read_meta(path: Path, npz: Any) -> dict[str, Any]:
    if META_KEY not in npz.files:
        raise _fail(path, f"no {META_KEY} metadata entry: not a jaxbp checkpoint")
    raw = _read_member(path, npz, META_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _fail(path, f"metadata entry has dtype {raw.dtype} shape {raw.shape}, expected 1-D uint8")
    try:
        meta = parse_json(raw.tobytes(), "metadata")
    except InputError as err:
        raise _fail(path, f"{err}".replace("metadata: is not", "metadata is not", 1)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, f"metadata does not describe a {FORMAT} file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        why = " (version 1 does not cover its metadata by its checksum)" if version == 1 else ""
        raise _fail(
            path, f"format version {version!r} is not supported{why}; this jaxbp reads version {FORMAT_VERSION}"
        )
    missing = [k for k in ("step", "epoch", "config", "extra", "tree", "leaves", "sha256") if k not in meta]
    if missing:
        raise _fail(path, f"metadata lacks {', '.join(missing)}")
    for key in ("step", "epoch"):
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail(path, f"metadata {key} is {value!r}, not an integer >= 0")
    for key in ("extra", "config"):
        if not isinstance(meta[key], dict):
            raise _fail(path, f"metadata {key} is {type(meta[key]).__name__}, not a dict")
    return meta


def _check_sizes(path: Path, npz: Any) -> None:
    """Every entry stored uncompressed (as :func:`save` writes them) and its array no larger
    than the entry, so that nothing read allocates more than the file's own size."""
    for info in npz.zip.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise _fail(path, f"entry {info.filename!r} is compressed; jaxbp writes checkpoints uncompressed")
        try:
            with npz.zip.open(info) as f:
                version = np.lib.format.read_magic(f)  # np.save writes 1.0, or 2.0 for huge headers
                read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                shape, _, dtype = read[version](f)
        except Exception as err:  # noqa: BLE001 (a damaged header: ValueError, EOFError, BadZipFile...)
            raise _fail(path, f"entry {info.filename!r} is corrupt: {type(err).__name__}: {err}") from None
        if math.prod(shape) * dtype.itemsize > info.file_size:
            raise _fail(
                path, f"entry {info.filename!r} declares shape {shape} {dtype}, more than its {info.file_size} bytes"
            )


_KINDS = ("py", "key", "scalar", "array")


def _check_records(path: Path, records: Any) -> None:
    if not isinstance(records, list):
        raise _fail(path, "metadata leaves is not a list")
    for i, r in enumerate(records):
        if not (
            isinstance(r, dict)
            and isinstance(r.get("name"), str)
            and r.get("kind") in _KINDS
            and isinstance(r.get("dtype"), str)
            and isinstance(r.get("shape"), list)
            and (r["kind"] != "py" or "value" in r)
            and (r["kind"] != "key" or isinstance(r.get("impl"), str))
        ):
            raise _fail(path, f"metadata record of leaf {i} is malformed: {r!r}"[:500])


def _restore_leaf(path: Path, record: dict[str, Any], stored: np.ndarray | None) -> Any:
    name, kind = record["name"], record["kind"]
    if kind == "py":
        value = record["value"]
        pytype = _PY_SCALARS.get(record["dtype"])
        named_float = pytype is float and value in ("nan", "inf", "-inf")  # strict JSON has no such numbers
        if pytype is None or not (named_float or type(value) is pytype or (pytype is float and type(value) is int)):
            raise _fail(path, f"leaf {name}: {value!r} is not a Python {record['dtype']}"[:300])
        return pytype(value)
    assert stored is not None
    if kind == "key":
        try:
            key = jax.random.wrap_key_data(stored, impl=record["impl"])
        except Exception as err:  # noqa: BLE001 (unknown impl name, wrong trailing shape)
            raise _fail(path, f"leaf {name}: cannot rebuild the PRNG key: {err}") from None
        if list(key.shape) != record["shape"]:
            raise _fail(path, f"leaf {name}: key shape {list(key.shape)} differs from metadata {record['shape']}")
        return key
    try:
        dtype = _dtype_named(record["dtype"])
    except ValueError as err:
        raise _fail(path, f"leaf {name}: {err}") from None
    arr = stored.view(dtype) if dtype != stored.dtype else stored
    if list(arr.shape) != record["shape"]:
        raise _fail(path, f"leaf {name}: stored shape {list(arr.shape)} differs from metadata {record['shape']}")
    if kind == "scalar":
        return arr[()]
    if kind != "array":
        raise _fail(path, f"leaf {name}: unknown kind {kind!r}")
    return arr


def _signature(leaf: Any) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) used to compare a leaf with ``like``'s."""
    if type(leaf) in _PY_SCALARS.values():
        return (), f"python {type(leaf).__name__}"
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return tuple(np.shape(leaf)), type(leaf).__name__
    return tuple(leaf.shape), str(dtype) if _is_key(leaf) else np.dtype(dtype).name


def _match_like(path: Path, names: list[str], leaves: list[Any], like: Any) -> Any:
    like_leaves, like_def = tree_flatten_with_path(like)
    like_names = [LEAF_PREFIX + keystr(p) for p, _ in like_leaves]
    for i in range(max(len(names), len(like_names))):
        have = names[i] if i < len(names) else None
        want = like_names[i] if i < len(like_names) else None
        if have != want:
            if want is None or (have is not None and have not in like_names):
                raise _fail(path, f"leaf {have} is in the checkpoint but not in `like`")
            raise _fail(path, f"leaf {want} of `like` is not in the checkpoint (found {have} there)")
    for name, leaf, (_, expected) in zip(names, leaves, like_leaves):
        got, want = _signature(leaf), _signature(expected)
        if got != want:
            raise _fail(
                path,
                f"leaf {name} does not match `like`: checkpoint has shape {got[0]} dtype {got[1]}, "
                f"`like` has shape {want[0]} dtype {want[1]}",
            )
    return tree_unflatten(like_def, leaves)


def load(path: str | os.PathLike, like: Any = None) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save`: ``(state, meta)``.

    ``state`` is rebuilt as numpy arrays (typed PRNG keys as jax keys, Python
    scalars as themselves); with ``like`` (a pytree of arrays or
    ``jax.ShapeDtypeStruct``) the leaf paths, shapes and dtypes must match and the
    result takes ``like``'s pytree structure. ``meta`` holds ``step``, ``epoch``,
    ``config``, ``extra`` and the format details. Every problem raises
    :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    meta, stored = _read_verified(path)
    records = meta["leaves"]
    names = [r["name"] for r in records]
    leaves = [_restore_leaf(path, r, stored.get(r["name"])) for r in records]
    if like is not None:
        state = _match_like(path, names, leaves, like)
    else:
        try:
            state = _decode(meta["tree"], leaves, [0])
        except (KeyError, TypeError, ValueError) as err:
            raise _fail(path, f"metadata tree is malformed: {err}") from None
    return state, meta


def _read_verified(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The metadata and the arrays of the checkpoint at ``path``, after the checksum over
    all of them matched and the metadata's structure was checked."""
    if not path.is_file():
        raise _fail(path, "no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise _fail(path, "not a valid .npz checkpoint (not a zip archive, or truncated)")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 (BadZipFile, OSError, ValueError, ...)
        raise _fail(path, f"cannot open as .npz: {type(err).__name__}: {err}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _fail(path, "not an .npz archive")
    with npz:
        _check_sizes(path, npz)
        meta = _read_meta(path, npz)
        stored = {name: _read_member(path, npz, name) for name in npz.files if name != META_KEY}
    actual = digest(meta, stored.items())
    if actual != meta["sha256"]:
        raise _fail(
            path, f"checksum mismatch: metadata says sha256 {meta['sha256']!r}, the checkpoint hashes to {actual}; "
            "it was corrupted or edited"
        )  # fmt: skip
    records = meta["leaves"]
    _check_records(path, records)
    try:
        n_leaves = _count_leaves(meta["tree"])
    except (KeyError, TypeError, AttributeError, RecursionError):
        raise _fail(path, "metadata tree is malformed") from None
    if n_leaves != len(records):
        raise _fail(path, f"metadata tree has {n_leaves} leaves but {len(records)} are listed")
    expected = {r["name"] for r in records if r["kind"] != "py"}
    unexpected, missing = sorted(set(stored) - expected), sorted(expected - set(stored))
    if unexpected:
        raise _fail(path, f"unexpected entries {unexpected}")
    if missing:
        raise _fail(path, f"entry {missing[0]!r} is missing")
    return meta, stored


def latest(directory: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: ``<directory>/checkpoint.npz`` if it exists
    (``directory`` may also be the ``.npz`` itself), else ``None``. Leftover temp
    files of an interrupted save are never returned."""
    directory = Path(directory)
    if directory.is_file() and directory.suffix == ".npz":
        return directory
    candidate = directory / CHECKPOINT_NAME
    return candidate if candidate.is_file() else None
