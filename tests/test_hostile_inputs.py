"""Hostile and mistaken inputs (issue 25, "Inputs that allocate, hang or crash"): each ends in a
one-line error naming the flag, path or spec, exit 2 (1 for a failure during training, with the
summary saying why), no traceback, and nothing lost: no file changed, no user code run.

In process through ``jaxbp.cli.main`` (JAX starts once); tiny files, the bundled digits, few steps.
"""

import gzip
import struct

import numpy as np
import pytest

from jaxbp import cli, data, datafiles


def _main(argv, capsys):
    """``(exit code, stdout, stderr)`` of ``jaxbp`` in this process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err, *needles):
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("jaxbp "), err
    for needle in needles:
        assert needle in err, (needle, err)


def _files(folder):
    """Every file under ``folder``: its bytes (its size and mtime where it is huge, a sparse file)."""
    snap = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        snap[p] = p.read_bytes() if p.is_file() and st.st_size < 1 << 24 else (st.st_size, st.st_mtime_ns)
    return snap


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $JAXBP_DATA, an empty cache and an empty system data folder."""
    monkeypatch.delenv(datafiles.ENV_DATA, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(datafiles, "SYSTEM_DATA_DIR", tmp_path / "system")
    return tmp_path


# ------------------------------------------------------------------ IDX files that declare too much


def _header(*dims):
    return struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def _idx_set(folder, images: bytes, *, gz=True):
    """The four files of a small valid set, with ``images`` as the train images file's content."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        img = _header(n, 4, 4) + rng.integers(0, 256, n * 16, dtype=np.uint8).tobytes()
        lbl = _header(n) + (np.arange(n) % 10).astype(np.uint8).tobytes()
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(img, mtime=0))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lbl, mtime=0))
    path = folder / "train-images-idx3-ubyte.gz"
    if gz:
        path.write_bytes(images)
    else:
        path.unlink()
        path = folder / "train-images-idx3-ubyte"
        path.write_bytes(images)
    return path


def test_a_sparse_terabyte_idx_file_is_refused_before_allocating(isolated, capsys):
    path = _idx_set(isolated / "d", _header(1_000_000, 1_000, 1_000), gz=False)
    with open(path, "r+b") as f:
        f.truncate(len(_header(1, 1, 1)) + 10**12)  # sparse: a terabyte that takes no disk
    before = _files(isolated / "d")
    with pytest.raises(data.DataError, match="more than the limit of 1073741824 bytes"):
        data.read_idx(path)
    argv = ["train", "--dataset", "mnist", "--data-dir", isolated / "d", "--out", isolated / "run"]
    code, _, err = _main(argv, capsys)
    assert code == 2
    _one_line_error(err, str(path), "1000000x1000x1000 = 1000000000000 bytes", "limit")
    assert not (isolated / "run").exists() and _files(isolated / "d") == before


def test_a_small_gzip_declaring_a_terabyte_is_refused_by_data_info(isolated, capsys):
    bomb = gzip.compress(_header(1_000_000, 1_000, 1_000) + bytes(1 << 20), mtime=0)
    path = _idx_set(isolated / "d", bomb)
    code, out, err = _main(["data", "info", "mnist", "--data-dir", isolated / "d"], capsys)
    assert code == 2 and "invalid" in out
    _one_line_error(err, str(path), "more than the limit")
    # Under the limit, but more than a gzip file of this size can inflate to.
    path.write_bytes(gzip.compress(_header(8_000, 256, 256) + bytes(1 << 20), mtime=0))
    with pytest.raises(data.DataError, match=r"more than a gzip file of \d+ bytes can hold"):
        data.read_idx(path)


def test_a_gzip_that_inflates_past_its_header_is_read_no_further(isolated):
    # 64 MiB of zeros after a header declaring 2x2x2: the reader stops one byte past the payload.
    path = _idx_set(isolated / "d", gzip.compress(_header(2, 2, 2) + bytes(64 << 20), compresslevel=1, mtime=0))
    with pytest.raises(data.DataError, match="trailing bytes after the payload of 8 bytes"):
        data.read_idx(path)


# ------------------------------------------------------------------ seeds


@pytest.mark.parametrize("seed", [2**32, 10**30])
def test_train_seed_out_of_range_names_the_flag(tmp_path, capsys, seed):
    code, _, err = _main(["train", "--model", "mlp", "--seed", seed, "--out", tmp_path / "run"], capsys)
    assert code == 2
    _one_line_error(err, f"jaxbp train: error: --seed must be an integer in [0, {data.MAX_SEED}], got {seed}")
    assert not (tmp_path / "run").exists()
