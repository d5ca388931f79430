"""jaxbp.data and jaxbp.datafiles: digits, strict IDX loading, lookup order, fetch (local server), batches,
`jaxbp data`.

The tests call everything through ``jaxbp.data`` (which re-exports the file side), but patch the
globals of ``jaxbp.datafiles``: that is where the lookup and fetch code reads them.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from jaxbp import data, datafiles, download
from jaxbp.choices import DATASETS
from jaxbp.cli import main

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------ helpers


def idx_bytes(arr: np.ndarray, *, magic: bytes | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    header = magic if magic is not None else struct.pack(">HBB", 0, 0x08, arr.ndim)
    return header + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def make_split(n: int, rng: np.random.Generator, hw=(6, 5)) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, *hw), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_idx_set(folder: Path, *, gz: bool = True, n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict:
    """Write the four IDX files into ``folder``; return the arrays and paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"] = make_split(n_train, rng)
    arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"] = make_split(n_test, rng)
    paths = {}
    for stem, arr in arrays.items():
        paths[stem] = write_file(folder, stem, idx_bytes(arr), gz=gz)
    return {"arrays": arrays, "paths": paths}


def write_file(folder: Path, stem: str, payload: bytes, *, gz: bool) -> Path:
    path = folder / (f"{stem}.gz" if gz else stem)
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $JAXBP_DATA, an empty cache and an empty system data folder."""
    monkeypatch.delenv(datafiles.ENV_DATA, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(datafiles, "SYSTEM_DATA_DIR", tmp_path / "system")
    cache = datafiles.default_cache_dir
    monkeypatch.setattr(datafiles, "default_cache_dir", lambda platform=None: cache("linux"))  # honour XDG on any OS
    # The patches reach the lookup (a patch of a re-exported alias would not): the last two
    # folders looked in are the ones under tmp_path, not the user's cache or /usr/share/datasets.
    assert data.search_dirs("mnist")[-2:] == [tmp_path / "xdg-cache" / "jaxbp" / "mnist", tmp_path / "system" / "mnist"]
    return tmp_path


@pytest.mark.parametrize("module", [datafiles, download], ids=["datafiles", "download"])
def test_data_reexports_every_public_name_of_datafiles_and_download(module):
    # Callers use jaxbp.data.<name> for the file side too: the very same objects.
    assert module.__all__
    for name in module.__all__:
        assert getattr(data, name) is getattr(module, name), name


# ------------------------------------------------------------------ digits


def test_digits_shapes_dtypes_and_train_only_normalisation():
    ds = data.load("digits", seed=0)
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.input_shape == (8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    # Normalised with the train split's statistics: train is centred and unit-scaled ...
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4
    # ... and the test split went through the very same affine map of the raw 0..16 pixels.
    raw_test = (ds.x_test * ds.std + ds.mean) * 16
    np.testing.assert_allclose(raw_test, np.round(raw_test), atol=1e-3)
    assert 0.2 < ds.mean < 0.4  # 0..16 scaled to 0..1, not 0..255 or raw
    # The test split's own mean is not exactly 0 (it was not normalised with its own stats).
    assert float(ds.x_test.mean()) != pytest.approx(0.0, abs=1e-6)


def test_digits_split_is_stratified_and_seeded():
    a, b, c = data.load("digits", seed=0), data.load("digits", seed=0), data.load("digits", seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)
    total = np.bincount(np.concatenate([a.y_train, a.y_test]), minlength=10)
    test = np.bincount(a.y_test, minlength=10)
    assert np.all(np.abs(test - 0.2 * total) <= 1), (test, total)
    assert a.x_train.flags.writeable is False


def test_unknown_name_is_a_data_error():
    with pytest.raises(data.DataError, match="unknown data set 'cifar'.*digits, mnist, fashion-mnist"):
        data.load("cifar")


# ------------------------------------------------------------------ IDX loading


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_set_loads_from_data_dir(isolated, gz):
    written = write_idx_set(isolated / "d", gz=gz)
    ds = data.load("mnist", data_dir=isolated / "d")
    arr = written["arrays"]
    assert ds.x_train.shape == (30, 6, 5, 1) and ds.x_test.shape == (10, 6, 5, 1)
    assert ds.input_shape == (6, 5, 1)
    np.testing.assert_array_equal(ds.y_train, arr["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arr["t10k-labels-idx1-ubyte"])
    x01 = arr["train-images-idx3-ubyte"].astype(np.float64) / 255
    assert ds.mean == pytest.approx(x01.mean()) and ds.std == pytest.approx(x01.std())
    expected_test = (arr["t10k-images-idx3-ubyte"][..., None] / 255 - x01.mean()) / x01.std()
    np.testing.assert_allclose(ds.x_test, expected_test, rtol=1e-5, atol=1e-5)


def test_read_idx_roundtrip_and_header(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_file(tmp_path, "x-idx3-ubyte", idx_bytes(arr), gz=True)
    np.testing.assert_array_equal(data.read_idx(path), arr)
    assert data.read_idx_header(path) == (2, 3, 4)


def _corrupt(folder: Path, stem: str, payload: bytes, gz: bool = True) -> Path:
    for old in folder.glob(stem + "*"):
        old.unlink()
    return write_file(folder, stem, payload, gz=gz)


IMG, LBL = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def _bad_magic(arrs):
    return IMG, idx_bytes(arrs[IMG], magic=b"\x12\x34\x08\x03"), True, "bad magic number 0x12340803"


def _wrong_dtype(arrs):
    return IMG, idx_bytes(arrs[IMG], magic=b"\x00\x00\x0d\x03"), True, "bad magic number 0x00000d03"


def _labels_as_images(arrs):
    return LBL, idx_bytes(arrs[IMG]), True, "bad magic number 0x00000803 .expected 0x00000801."


def _truncated(arrs):
    return IMG, idx_bytes(arrs[IMG])[:-7], True, "truncated payload"


def _truncated_raw(arrs):
    return IMG, idx_bytes(arrs[IMG])[:-7], False, "truncated payload"


def _trailing(arrs):
    return IMG, idx_bytes(arrs[IMG]) + b"\0", True, "trailing bytes"


def _trailing_raw(arrs):
    return LBL, idx_bytes(arrs[LBL]) + b"\0\0", False, "trailing bytes"


def _short_header(arrs):
    return LBL, b"\x00\x00", False, "truncated IDX header"


def _label_out_of_range(arrs):
    labels = arrs[LBL].copy()
    labels[7] = 10
    return LBL, idx_bytes(labels), True, "label 10 at index 7 is out of range 0..9"


CORRUPTIONS = [
    _bad_magic,
    _wrong_dtype,
    _labels_as_images,
    _truncated,
    _truncated_raw,
    _trailing,
    _trailing_raw,
    _short_header,
    _label_out_of_range,
]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=[c.__name__.strip("_") for c in CORRUPTIONS])
def test_corrupt_idx_file_is_a_data_error_naming_it(isolated, corruption):
    folder = isolated / "d"
    written = write_idx_set(folder)
    stem, payload, gz, message = corruption(written["arrays"])
    bad = _corrupt(folder, stem, payload, gz=gz)
    with pytest.raises(data.DataError, match=message) as err:
        data.load("mnist", data_dir=folder)
    assert str(bad) in str(err.value)
    assert not isinstance(err.value, data.MissingDataError)


def test_count_mismatch_names_both_files(isolated):
    folder = isolated / "d"
    written = write_idx_set(folder)
    _corrupt(folder, LBL, idx_bytes(written["arrays"][LBL][:-1]))
    with pytest.raises(data.DataError, match="train count mismatch") as err:
        data.load("mnist", data_dir=folder)
    assert str(folder / f"{IMG}.gz") in str(err.value) and str(folder / f"{LBL}.gz") in str(err.value)
    assert "30 images" in str(err.value) and "29 labels" in str(err.value)


@pytest.mark.parametrize("how", ["not-gzip", "bit-flip", "cut-stream"])
def test_broken_gzip_is_a_data_error_naming_the_file(isolated, how):
    folder = isolated / "d"
    written = write_idx_set(folder)
    path = written["paths"][IMG]
    blob = bytearray(path.read_bytes())
    if how == "not-gzip":
        blob = bytearray(b"this is not gzip at all" * 4)
    elif how == "bit-flip":
        blob[len(blob) // 2] ^= 0xFF
    else:
        blob = blob[: len(blob) - 12]
    path.write_bytes(bytes(blob))
    with pytest.raises(data.DataError) as err:
        data.load("mnist", data_dir=folder)
    assert str(path) in str(err.value)
    assert "gzip" in str(err.value) or "truncated" in str(err.value)


def test_missing_files_list_where_it_looked_and_both_remedies(isolated):
    partial = isolated / "partial"
    write_idx_set(partial)
    (partial / f"{LBL}.gz").unlink()
    with pytest.raises(data.MissingDataError) as err:
        data.load("fashion-mnist", data_dir=partial)
    msg = str(err.value)
    assert isinstance(err.value, data.DataError) and isinstance(err.value, ValueError)
    assert f"{partial} (missing {LBL}[.gz])" in msg
    assert str(isolated / "xdg-cache" / "jaxbp" / "fashion-mnist") in msg
    assert str(isolated / "system" / "fashion-mnist") in msg
    assert "jaxbp data fetch fashion-mnist" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg
    # mnist has no Debian package: only the fetch and --data-dir remedies.
    with pytest.raises(data.MissingDataError) as err:
        data.load("mnist")
    assert "jaxbp data fetch mnist" in str(err.value) and "apt-get" not in str(err.value)


def test_lookup_order_data_dir_env_cache_system(isolated, monkeypatch):
    # Each location holds a set with a different train size, so we can tell which one won.
    write_idx_set(isolated / "system" / "mnist", n_train=11)
    assert data.load("mnist").x_train.shape[0] == 11
    write_idx_set(isolated / "xdg-cache" / "jaxbp" / "mnist", n_train=12, gz=False)
    assert data.load("mnist").x_train.shape[0] == 12
    write_idx_set(isolated / "env" / "mnist", n_train=13)
    monkeypatch.setenv(datafiles.ENV_DATA, str(isolated / "env"))
    assert data.load("mnist").x_train.shape[0] == 13
    write_idx_set(isolated / "arg", n_train=14)
    assert data.load("mnist", data_dir=isolated / "arg").x_train.shape[0] == 14
    # An empty data_dir falls through to the next location.
    (isolated / "empty").mkdir()
    assert data.load("mnist", data_dir=isolated / "empty").x_train.shape[0] == 13


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {"XDG_CACHE_HOME": "/xdg"}, "/xdg/jaxbp"),
        ("linux", {"XDG_CACHE_HOME": "relative/ignored"}, "~/.cache/jaxbp"),
        ("linux", {}, "~/.cache/jaxbp"),
        ("darwin", {}, "~/Library/Caches/jaxbp"),
        ("win32", {"LOCALAPPDATA": "/appdata"}, "/appdata/jaxbp"),
    ],
)
def test_default_cache_dir(monkeypatch, platform, env, expected):
    for var in ("XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert data.default_cache_dir(platform) == Path(expected).expanduser()


def test_info_reports_found_and_not_found(isolated):
    write_idx_set(isolated / "d", n_train=20, n_test=7)
    found = data.info("mnist", data_dir=isolated / "d")
    assert found["status"] == "found" and found["dir"] == str(isolated / "d")
    assert found["train"] == {"count": 20, "image_shape": [6, 5, 1]} and found["test"]["count"] == 7
    missing = data.info("fashion-mnist")
    assert missing["status"] == "not found"
    assert any(str(isolated / "system" / "fashion-mnist") in line for line in missing["looked_in"])
    assert "jaxbp data fetch fashion-mnist" in missing["remedy"]
    assert data.info("digits")["status"] == "bundled"


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_DIR})")
def test_fashion_mnist_from_debian_package():
    ds = data.load("fashion-mnist", data_dir=FASHION_DIR)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert np.array_equal(np.bincount(ds.y_test), np.full(10, 1000))
    # The well-known Fashion-MNIST train statistics.
    assert ds.mean == pytest.approx(0.2860, abs=1e-3) and ds.std == pytest.approx(0.3530, abs=1e-3)


# ------------------------------------------------------------------ fetch


class _Server:
    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def count(self, name: str | None = None) -> int:
        return len(self.requests) if name is None else self.requests.count(name)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A local HTTP server with a small valid gz IDX set; its digests patched into download.SHA256."""
    src = write_idx_set(tmp_path / "src")
    files = {p.name: p.read_bytes() for p in src["paths"].values()}
    monkeypatch.setitem(download.SHA256, "mnist", {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
    server = _Server(files)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)


def test_fetch_downloads_verifies_and_is_atomic(tmp_path, served):
    folder = data.fetch("mnist", tmp_path / "cache", base_url=served.url, progress=False)
    assert folder == tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.gz" for s in data.FILE_NAMES)  # no temp left
    assert served.count() == 4
    ds = data.load("mnist", data_dir=tmp_path / "cache")
    assert ds.x_train.shape == (30, 6, 5, 1)
    # Already present and verified: nothing is downloaded again.
    data.fetch("mnist", tmp_path / "cache", base_url=served.url.rstrip("/"), progress=False)
    assert served.count() == 4
    # A damaged file is replaced (only that one).
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    data.fetch("mnist", tmp_path / "cache", base_url=served.url, progress=False)
    assert served.count() == 5 and served.count("t10k-labels-idx1-ubyte.gz") == 2
    assert data.load("mnist", data_dir=tmp_path / "cache").y_test.shape == (10,)


def test_fetch_digest_mismatch_keeps_nothing(tmp_path, served, monkeypatch):
    name = "train-labels-idx1-ubyte.gz"
    wrong = "0" * 64
    monkeypatch.setitem(download.SHA256["mnist"], name, wrong)
    actual = hashlib.sha256(served.files[name]).hexdigest()
    with pytest.raises(data.DataError) as err:
        data.fetch("mnist", tmp_path, base_url=served.url, progress=False)
    msg = str(err.value)
    assert name in msg and wrong in msg and actual in msg
    folder = tmp_path / "mnist"
    assert not (folder / name).exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # temp file deleted


def test_fetch_http_error_and_bad_scheme(tmp_path, served):
    del served.files["t10k-images-idx3-ubyte.gz"]
    with pytest.raises(data.DataError, match="HTTP 404"):
        data.fetch("mnist", tmp_path, base_url=served.url, progress=False)
    assert not [p for p in (tmp_path / "mnist").iterdir() if p.name.startswith(".")]
    with pytest.raises(data.DataError, match="http"):
        data.fetch("mnist", tmp_path, base_url="file:///etc/", progress=False)
    with pytest.raises(data.DataError, match="needs no download"):
        data.fetch("digits", tmp_path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://[::1", "is malformed: Invalid IPv6 URL"),
        ("http://", "names no host"),
        ("https:///files/", "names no host"),
        ("http://exa mple.com/", "contains ' '"),
        ("http://host:99999/", "is malformed: Port out of range"),
        ("http://host/?q=", "has a query or fragment"),
        ("http://h\u00f6st/", "contains '\u00f6'"),
        ("file:///etc/", "must be http:// or https://"),
    ],
)
def test_cli_data_fetch_malformed_base_url_is_one_line_before_any_download(tmp_path, capsys, url, message):
    assert main(["data", "fetch", "mnist", "--dir", str(tmp_path / "cache"), "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert err == f"jaxbp data: error: --base-url {url!r} {message}" + err.split(message, 1)[1]
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "cache").exists()  # checked before the cache folder is made


@pytest.mark.parametrize(
    ("where", "errno_", "message"),
    [
        ("mkstemp", 30, "Read-only file system (the file system is mounted read-only)"),
        ("mkstemp", 13, "Permission denied"),
        ("fsync", 28, "No space left on device (the disk is full)"),
    ],  # fmt: skip
)
def test_cli_data_fetch_into_a_read_only_or_full_cache_is_one_line(
    tmp_path, served, capsys, monkeypatch, where, errno_, message
):
    def fail(*args, **kwargs):
        raise OSError(errno_, "refused")

    monkeypatch.setattr(download.tempfile if where == "mkstemp" else download.os, where, fail)
    assert main(["data", "fetch", "mnist", "--dir", str(tmp_path / "cache"), "--base-url", served.url]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("jaxbp data: error: "), err
    assert f"cannot write: {message}" in err and str(tmp_path / "cache" / "mnist") in err
    assert not [p for p in (tmp_path / "cache" / "mnist").iterdir()]  # no temp file left


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_cli_data_info_into_a_full_stdout_is_one_line(tmp_path):
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from jaxbp import cli; sys.exit(cli.main(['data', 'info', 'digits']))"],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "jaxbp data: error: cannot write to standard output: No space left on device\n"


# ------------------------------------------------------------------ batches


def _rows(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32), np.arange(n, dtype=np.int32)


def test_batches_are_a_permutation_reproducible_per_epoch():
    x, y = _rows(10)
    epoch0 = list(data.batches(x, y, 4, seed=1, epoch=0))
    again = list(data.batches(x, y, 4, seed=1, epoch=0))
    epoch1 = list(data.batches(x, y, 4, seed=1, epoch=1))
    seen = np.concatenate([yb[:n] for _, yb, n in epoch0])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(epoch0, again))
    assert np.concatenate([yb[:n] for _, yb, n in epoch1]).tolist() != seen.tolist()
    expected = np.random.default_rng((1, 0)).permutation(10)
    np.testing.assert_array_equal(seen, expected)
    for xb, yb, _ in epoch0:  # rows stay paired with their labels
        np.testing.assert_array_equal(xb[:, 0], yb.astype(np.float32))
    # Resuming mid-epoch gives the same remaining batches.
    resumed = list(data.batches(x, y, 4, seed=1, epoch=0, start_batch=1))
    assert [b[1].tolist() for b in resumed] == [b[1].tolist() for b in epoch0[1:]]


def test_last_batch_is_padded_with_valid_rows_and_counted():
    x, y = _rows(10)
    out = list(data.batches(x, y, 4, seed=0, epoch=0))
    assert len(out) == data.num_batches(10, 4) == 3
    assert [n for _, _, n in out] == [4, 4, 2]
    assert all(xb.shape == (4, 3) and yb.shape == (4,) for xb, yb, _ in out)
    last = out[-1][1]
    assert set(last[2:].tolist()) <= set(last[:2].tolist())  # padding repeats valid rows
    plain = list(data.batches(x, y, 4, seed=0, epoch=0, shuffle=False))
    assert plain[0][1].tolist() == [0, 1, 2, 3] and plain[-1][1].tolist() == [8, 9, 8, 9]


def test_drop_last_and_num_batches():
    x, y = _rows(10)
    out = list(data.batches(x, y, 4, seed=0, epoch=0, drop_last=True))
    assert len(out) == data.num_batches(10, 4, drop_last=True) == 2 and all(n == 4 for *_, n in out)
    assert list(data.batches(x, y, 16, seed=0, epoch=0, drop_last=True)) == []
    assert data.num_batches(8, 4) == 2 and data.num_batches(8, 4, True) == 2 and data.num_batches(9, 4) == 3
    with pytest.raises(ValueError, match="rows"):
        next(data.batches(x, y[:5], 4, seed=0, epoch=0))


# ------------------------------------------------------------------ CLI


def test_cli_data_info_fashion_mnist_runs(capsys):
    assert main(["data", "info", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out
    assert ("found" in out) or ("not found" in out)
    if FASHION_DIR.is_dir():
        assert str(FASHION_DIR) in out and "60000" in out


def test_cli_data_info_not_found_exits_0_and_says_where(isolated, capsys):
    assert main(["data", "info", "mnist", "--data-dir", str(isolated / "nowhere")]) == 0
    out = capsys.readouterr().out
    assert "not found" in out and str(isolated / "nowhere") in out and "jaxbp data fetch mnist" in out


def test_cli_data_info_all_and_json(isolated, capsys):
    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in DATASETS)
    assert main(["data", "info", "digits", "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)[0]["status"] == "bundled"


def test_cli_data_fetch_bad_name_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "fetch", "imagenet"])
    assert exit_.value.code == 2
    assert main(["data", "fetch", "digits"]) == 2
    err = capsys.readouterr().err
    assert "needs no download" in err and "Traceback" not in err


def test_cli_data_fetch_via_local_server(tmp_path, served, capsys):
    assert main(["data", "fetch", "mnist", "--dir", str(tmp_path), "--base-url", served.url]) == 0
    assert str(tmp_path / "mnist") in capsys.readouterr().out
    assert served.count() == 4
    del served.files["t10k-images-idx3-ubyte.gz"]
    assert main(["data", "fetch", "mnist", "--dir", str(tmp_path / "other"), "--base-url", served.url]) == 2
    assert "HTTP 404" in capsys.readouterr().err


# ------------------------------------------------------------------ augmentation


def test_augmentation_is_seeded_shifts_and_flips():
    from jaxbp import train

    digits = data.load("digits")
    x = np.asarray(digits.x_train[:16])
    fill = float(-digits.mean / digits.std)
    a = data.augment_batch(x, "crop-flip", np.random.default_rng((0, 1, 2)), fill)
    b = data.augment_batch(x, "crop-flip", np.random.default_rng((0, 1, 2)), fill)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.float32
    assert data.augment_batch(x, "none", np.random.default_rng(0), fill) is x
    flipped = data.augment_batch(x, "flip", np.random.default_rng(0), fill)
    assert all(np.array_equal(f, img) or np.array_equal(f, img[:, ::-1]) for f, img in zip(flipped, x))
    shifted = data.augment_batch(x, "crop", np.random.default_rng(0), fill)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=fill)
    for s, p in zip(shifted, padded):  # each is a window of the padded image
        assert any(np.array_equal(s, p[i : i + 8, j : j + 8]) for i in range(5) for j in range(5))
    shifted = data.augment_batch(x, "crop", np.random.default_rng(0), fill, 1)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
    offsets = [[(i, j) for i in range(3) for j in range(3) if np.array_equal(s, p[i : i + 8, j : j + 8])]
               for s, p in zip(shifted, padded)]  # fmt: skip
    assert all(offsets) and any((1, 1) not in o for o in offsets)  # within 1 pixel, and some do move
    # what train.fit (and the PyTorch twin) call: the draws of (seed, epoch, batch_index)
    augment = data.batch_augmenter(train.TrainConfig(augment="crop-flip", shift=1, seed=0), digits)
    np.testing.assert_array_equal(
        augment(x, 1, 2), data.augment_batch(x, "crop-flip", np.random.default_rng((0, 1, 2)), fill, 1)
    )


# ------------------------------------------------------------------ a user's own arrays


def _arrays(n=30, hw=(5, 4), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(3.0, 2.0, size=(n, *hw)), rng.integers(0, classes, n)


def test_from_arrays_normalises_with_the_train_statistics_and_leaves_the_callers_arrays_alone():
    x, y = _arrays()
    y = y.astype(np.int32)
    ds = data.Dataset.from_arrays(x[:24], y[:24], x[24:], y[24:], name="blobs")
    assert (ds.name, ds.input_shape, ds.num_classes) == ("blobs", (5, 4, 1), 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4
    np.testing.assert_allclose(ds.x_test[..., 0], (x[24:] - ds.mean) / ds.std, rtol=1e-5, atol=1e-5)
    assert y.flags.writeable and x.flags.writeable  # copies were made read-only, not the caller's arrays
    assert data.Dataset.from_arrays(x, y, x, y, num_classes=10).num_classes == 10
    held = data.Dataset.from_arrays(x, y, x[:3], y[:3], val_split=0.2, seed=1)
    assert len(held.x_val) + len(held.x_train) == 30 and held.x_val.shape[1:] == (5, 4, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "x_train": a["x_train"][0]}, "x_train has shape (5, 4); give [N, H, W] or [N, H, W, C]"),
        (lambda a: {**a, "x_test": a["x_test"][..., :3]}, "x_test holds 5x3x1 images but x_train 5x4x1"),
        (lambda a: {**a, "y_train": a["y_train"][:-1]}, "y_train has 23 labels for the 24 images of x_train"),
        (lambda a: {**a, "y_test": a["y_test"] + 0.5}, "y_test is float64; labels must be integers"),
        (lambda a: {**a, "y_train": -a["y_train"]}, "y_train holds the label -2; labels must be in [0, 3)"),
        (lambda a: {**a, "num_classes": 2}, "y_train holds the label 2; labels must be in [0, 2)"),
        (lambda a: {**a, "x_train": np.where(a["x_train"] > 4, np.nan, a["x_train"])}, "x_train holds NaN"),
        (lambda a: {**a, "x_train": a["x_train"].astype(str)}, "x_train is <U32; images must be numbers"),
        (lambda a: {**a, "x_test": a["x_test"][:0], "y_test": a["y_test"][:0]}, "x_test holds no images"),
        (lambda a: {**a, "name": "mnist"}, "name 'mnist' is a data set jaxbp loads; choose another"),
    ],
)
def test_from_arrays_refuses_what_cannot_train_in_one_line(change, message):
    x, y = _arrays()
    args = change({"x_train": x[:24], "y_train": y[:24], "x_test": x[24:], "y_test": y[24:]})
    with pytest.raises(data.DataError) as info:
        data.Dataset.from_arrays(**args)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
