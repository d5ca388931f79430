"""Downloading the IDX data sets: :func:`fetch`, the only code in jaxbp that touches the network.

It downloads the four ``.gz`` files of ``mnist`` or ``fashion-mnist`` from :data:`BASE_URLS`
(or a mirror, checked by :func:`check_base_url`), verifies each against a pinned SHA-256
(:data:`SHA256`) and moves it into place atomically, in the cache folder where
:func:`jaxbp.datafiles.find_files` looks. Every failure (network, digest, a cache folder
that takes no file) is a one-line :class:`jaxbp.datafiles.DataError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from jaxbp import datafiles
from jaxbp.checkpoint import fsync_dir
from jaxbp.datafiles import FILE_NAMES, IDX_DATASETS, DataError, canonical_name
from jaxbp.files import describe_os_error

__all__ = ["BASE_URLS", "SHA256", "check_base_url", "fetch"]

_CHUNK = 1 << 16

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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK * 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_bar(progress: bool, total: str | None, name: str):
    if not (progress and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    size = int(total) if total and total.isascii() and total.isdigit() else None
    return tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


def _stream(url: str, out, name: str, progress: bool) -> str:
    """Copy ``url`` into the open file ``out``; the SHA-256 of what came. A network failure is a
    :class:`DataError`; an ``OSError`` that escapes is one of writing ``out``."""
    network_errors = (urllib.error.URLError, OSError, ValueError, http.client.HTTPException)
    try:
        response = urllib.request.urlopen(url, timeout=60)  # fetch() allows http(s) only
    except urllib.error.HTTPError as err:
        raise DataError(f"could not download {url}: HTTP {err.code} {err.reason}") from err
    except network_errors as err:  # ValueError: http.client.InvalidURL
        raise DataError(f"could not download {url}: {getattr(err, 'reason', err)}") from err
    digest = hashlib.sha256()
    with response:
        bar = _progress_bar(progress, response.headers.get("Content-Length"), name)
        try:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except network_errors as err:
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
    return digest.hexdigest()


def _download(url: str, dest: Path, expected: str, progress: bool) -> None:
    """Stream ``url`` into a temp file next to ``dest``, verify, fsync, os.replace. A folder that
    takes no file (read-only, full) is a :class:`DataError` naming the path."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as err:
        raise DataError(describe_os_error(err, dest.parent)) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, dest.name, progress)
            out.flush()
            os.fsync(out.fileno())
        if actual != expected:
            raise DataError(
                f"{dest.name}: SHA-256 mismatch for {url}: expected {expected}, got {actual}; "
                f"the download was discarded"
            )
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):  # writing the cache: disk full, quota, read-only
            raise DataError(describe_os_error(err, dest)) from None
        raise


def check_base_url(base: str, what: str = "base URL") -> str:
    """``base`` ending in ``/`` if it is an http(s) URL with a host (and a valid port, no query,
    fragment, spaces, control or non-ASCII characters): the four file names are appended to it.
    :class:`DataError` naming ``what`` (``--base-url`` on the command line) and the URL otherwise."""
    bad = next((c for c in base if c.isspace() or not c.isprintable() or not c.isascii()), None)
    if bad is not None:
        raise DataError(f"{what} {base!r} contains {bad!r}: percent-encode it")
    try:
        parts = urllib.parse.urlsplit(base)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in 0..65535)
    except ValueError as err:
        raise DataError(f"{what} {base!r} is malformed: {err}") from None
    if parts.scheme not in ("http", "https"):
        raise DataError(f"{what} {base!r} must be http:// or https://")
    if not parts.hostname:
        raise DataError(f"{what} {base!r} names no host")
    if parts.query or parts.fragment:
        raise DataError(f"{what} {base!r} has a query or fragment; the file names are appended to it")
    return base if base.endswith("/") else base + "/"


def fetch(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download the four ``.gz`` files of ``name`` into ``<cache_dir>/<name>`` and verify them.

    ``cache_dir`` defaults to :func:`jaxbp.datafiles.default_cache_dir` (where ``load`` looks);
    ``base_url`` (http or https) replaces the canonical :data:`BASE_URLS` entry.
    Each file is checked against its pinned SHA-256 (:data:`SHA256`); a file already
    present with the right digest is not downloaded again. Downloads go to a temp
    file in the same folder, are fsynced and moved into place with ``os.replace``,
    so a file under its final name is always complete and verified. A digest
    mismatch deletes the temp file and raises :class:`DataError` with both digests;
    a malformed ``base_url`` (:func:`check_base_url`), a network failure and a cache
    folder that takes no file (read-only, full) raise :class:`DataError` too.
    A tqdm progress bar is shown when ``progress`` and stderr is a terminal.
    Returns the folder holding the files.
    """
    name = canonical_name(name)
    if name not in IDX_DATASETS:
        raise DataError(
            f"{name!r} ships with scikit-learn and needs no download; fetch one of: {', '.join(IDX_DATASETS)}"
        )
    base = check_base_url(BASE_URLS[name] if base_url is None else base_url)
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else datafiles.default_cache_dir()) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {folder}: {os.strerror(err.errno) if err.errno else err}") from None
    digests = SHA256[name]
    for stem in FILE_NAMES:
        fname = f"{stem}.gz"
        dest = folder / fname
        try:
            if dest.is_file() and _sha256_file(dest) == digests[fname]:
                continue  # present and verified
        except OSError as err:
            raise DataError(f"{dest}: cannot read: {os.strerror(err.errno) if err.errno else err}") from None
        _download(base + fname, dest, digests[fname], progress)
    return folder
