"""jaxbp.checkpoint: round trips, atomic writes, and every corrupt file rejected by name."""

from __future__ import annotations

import collections
import io
import json
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import checkpoint as ck, files

Adam = collections.namedtuple("Adam", ["count", "mu"])


def make_state() -> dict:
    params = [
        {"w": jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 1, 4), "b": jnp.zeros(4, jnp.float32)},
        (),
        {"w": np.ones((4, 3), np.float32) * 0.5, "b": np.arange(3, dtype=np.float32)},
    ]
    return {
        "params": params,
        "opt": (Adam(count=jnp.asarray(7, jnp.int32), mu=jax.tree_util.tree_map(jnp.zeros_like, params)), None),
        "rng": jax.random.PRNGKey(3),  # raw uint32 key data
        "key": jax.random.key(4),  # typed key
        "counts": np.array([[1, -2], [3, 4]], np.int32),
        "half": jnp.ones((2,), jnp.bfloat16) * 1.5,
        "np_scalar": np.float32(2.5),
        "step": 12,
        "lr": 0.125,
        "best": float("inf"),
        "done": False,
        "tag": "run-1",
    }


def assert_same(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert y.dtype == x.dtype
            np.testing.assert_array_equal(jax.random.key_data(y), jax.random.key_data(x))
        elif type(x) in (bool, int, float, str):
            assert type(y) is type(x) and y == x
        else:
            assert np.asarray(y).dtype == np.asarray(x).dtype and np.shape(y) == np.shape(x)
            np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


@pytest.fixture
def saved(tmp_path) -> tuple[Path, dict]:
    state = make_state()
    path = ck.save(tmp_path / "run" / "checkpoint.npz", state, step=12, epoch=3, config={"lr": 0.1}, extra={"acc": 0.5})
    return path, state


def test_roundtrip_nested_pytree(saved):
    path, state = saved
    restored, meta = ck.load(path)
    assert meta["step"] == 12 and meta["epoch"] == 3 and meta["format_version"] == ck.FORMAT_VERSION
    assert meta["config"] == {"lr": 0.1} and meta["extra"] == {"acc": 0.5}
    # Without `like`: plain containers, numpy leaves, a namedtuple look-alike, typed keys as typed keys.
    assert isinstance(restored["params"], list) and restored["params"][1] == ()
    assert isinstance(restored["params"][0]["w"], np.ndarray)
    assert restored["opt"][1] is None and restored["opt"][0]._fields == ("count", "mu")
    assert restored["rng"].dtype == np.uint32
    assert isinstance(restored["np_scalar"], np.float32)
    assert restored["best"] == float("inf")
    # Same values, dtypes and structure (the namedtuple compared by its tuple view).
    expected = dict(state, opt=(tuple(state["opt"][0]), None))
    got = dict(restored, opt=(tuple(restored["opt"][0]), None))
    assert_same(expected, got)
    # Array entries are named by their key paths, readable without jaxbp.
    files = np.load(path, allow_pickle=False).files
    assert "state['params'][0]['w']" in files and "state['opt'][0].count" in files


def test_like_restores_exact_pytree_types(saved):
    path, state = saved
    restored, _ = ck.load(path, like=state)
    assert type(restored["opt"][0]) is Adam
    assert_same(state, restored)
    key = restored["key"]
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.normal(key, (3,)), jax.random.normal(state["key"], (3,)))
    # ShapeDtypeStructs are a fine `like` for arrays.
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, (jax.Array, np.ndarray)) else x, state
    )
    ck.load(path, like=abstract)


def test_mismatched_like_names_the_leaf(saved):
    path, _ = saved
    wrong_shape = make_state()
    wrong_shape["params"][2]["w"] = np.ones((4, 5), np.float32)
    with pytest.raises(ck.CheckpointError, match=r"state\['params'\]\[2\]\['w'\].*\(4, 3\).*float32.*\(4, 5\)") as e:
        ck.load(path, like=wrong_shape)
    assert str(path) in str(e.value)
    wrong_dtype = make_state()
    wrong_dtype["counts"] = np.zeros((2, 2), np.int64)
    with pytest.raises(ck.CheckpointError, match=r"state\['counts'\].*int32.*int64"):
        ck.load(path, like=wrong_dtype)
    extra_leaf = make_state()
    extra_leaf["params"][0]["gamma"] = np.ones(4, np.float32)
    with pytest.raises(
        ck.CheckpointError, match=r"state\['params'\]\[0\]\['gamma'\] of `like` is not in the checkpoint"
    ):
        ck.load(path, like=extra_leaf)
    fewer = make_state()
    del fewer["tag"]
    with pytest.raises(ck.CheckpointError, match=r"state\['tag'\] is in the checkpoint but not in `like`"):
        ck.load(path, like=fewer)


def test_save_is_atomic_and_latest_finds_it(tmp_path):
    run = tmp_path / "run"
    assert ck.latest(run) is None
    for step in range(3):
        path = ck.save(run / ck.CHECKPOINT_NAME, {"w": np.full(3, step, np.float32)}, step=step, epoch=0, config={})
    assert sorted(p.name for p in run.iterdir()) == [ck.CHECKPOINT_NAME]  # no temp files left
    assert ck.latest(run) == path and ck.latest(path) == path
    assert ck.load(ck.latest(run))[1]["step"] == 2
    # A folder as path writes checkpoint.npz inside it.
    assert ck.save(run, {"w": np.zeros(1)}, step=3, epoch=0, config={}) == path


def test_failed_save_leaves_old_checkpoint_and_no_temp(tmp_path, monkeypatch):
    path = ck.save(tmp_path / "c.npz", {"w": np.ones(2)}, step=1, epoch=0, config={})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(files.OutputError, match=r"c\.npz: cannot write: disk full"):
        ck.save(path, {"w": np.zeros(2)}, step=2, epoch=0, config={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]
    assert ck.load(path)[1]["step"] == 1


def test_unsupported_leaves_and_config_are_type_errors(tmp_path):
    with pytest.raises(TypeError, match=r"leaf state\['f'\] has unsupported type"):
        ck.save(tmp_path / "a.npz", {"f": object()}, step=0, epoch=0, config={})
    with pytest.raises(TypeError, match="object arrays"):
        ck.save(tmp_path / "a.npz", {"o": np.array([{}], dtype=object)}, step=0, epoch=0, config={})
    with pytest.raises(TypeError, match="JSON"):
        ck.save(tmp_path / "a.npz", {"w": np.ones(1)}, step=0, epoch=0, config={"x": object()})
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ corrupt files


def rewrite(path: Path, members: dict[str, bytes]) -> None:
    """Write a zip with exactly these members (valid CRCs)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def edit_meta(path: Path, change, resign: bool = True) -> None:
    """Change the metadata; ``resign``: recompute its checksum as a forger would, so that
    the checks behind the checksum are reached."""
    members = read_members(path)
    name = ck.META_KEY + ".npy"
    meta = json.loads(np.load(io.BytesIO(members[name])).tobytes())
    change(meta)
    if resign:
        arrays = [(n[: -len(".npy")], np.load(io.BytesIO(b))) for n, b in members.items() if n != name]
        meta["sha256"] = ck.digest(meta, arrays)
    members[name] = npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    rewrite(path, members)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["config"].update(model="/tmp/payload.py:make"),
        lambda m: m.update(step=10**9),
        lambda m: m["extra"].update(acc=0.75),
        lambda m: m["leaves"][0].update(shape=[24]),
        lambda m: m.update(extra_key=1),
    ],
    ids=["config.model", "step", "extra", "leaf-record", "new-key"],
)
def test_any_edit_of_the_metadata_fails_the_checksum(saved, change):
    path, _ = saved
    edit_meta(path, change, resign=False)
    with pytest.raises(ck.CheckpointError, match="checksum mismatch.*corrupted or edited") as e:
        ck.load(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_compressed_or_oversized_entries_are_refused_before_reading(saved, tmp_path):
    path, _ = saved
    members = read_members(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:  # a zip bomb needs compression
        for name, blob in members.items():
            zf.writestr(name, blob)
    with pytest.raises(ck.CheckpointError, match="is compressed; jaxbp writes checkpoints uncompressed"):
        ck.load(path)
    header = io.BytesIO()  # a .npy header declaring 10**12 float64 with 8 bytes of data
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    members["state['counts'].npy"] = header.getvalue() + b"\0" * 8
    rewrite(path, members)
    with pytest.raises(ck.CheckpointError, match=r"declares shape \(1000000000000,\) float64, more than its"):
        ck.load(path)


def test_flipped_bytes_are_a_checkpoint_error(saved):
    path, _ = saved
    blob = bytearray(path.read_bytes())
    offset = blob.find(np.arange(24, dtype=np.float32).tobytes())  # inside params[0]['w']
    assert offset > 0
    blob[offset + 17] ^= 0x55
    path.write_bytes(bytes(blob))
    with pytest.raises(ck.CheckpointError, match="corrupt|CRC|checksum") as e:
        ck.load(path)
    assert str(path) in str(e.value)


def test_array_changed_behind_the_metadata_fails_the_checksum(saved):
    path, _ = saved
    members = read_members(path)
    members["state['counts'].npy"] = npy(np.array([[1, -2], [3, 5]], np.int32))  # valid zip CRC, new content
    rewrite(path, members)
    with pytest.raises(ck.CheckpointError, match="checksum mismatch"):
        ck.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.98, 10 / 1e9])
def test_truncated_file_is_a_checkpoint_error(saved, keep):
    path, _ = saved
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(ck.CheckpointError) as e:
        ck.load(path)
    assert str(path) in str(e.value) and "not a valid .npz" in str(e.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, not a checkpoint", npy(np.ones(3)), b"\x80\x04\x95" + b"\0" * 20],
    ids=["empty", "text", "plain-npy", "pickle-header"],
)
def test_non_npz_file_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(content)
    with pytest.raises(ck.CheckpointError, match="not a valid .npz") as e:
        ck.load(path)
    assert str(path) in str(e.value)
    with pytest.raises(ck.CheckpointError, match="no such checkpoint"):
        ck.load(tmp_path / "absent.npz")


class _Tripwire:
    """Unpickling this creates a file: proof that pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_object_array_is_refused_and_never_unpickled(saved, tmp_path):
    path, _ = saved
    marker = tmp_path / "unpickled"
    members = read_members(path)
    evil = np.empty(2, dtype=object)
    evil[:] = [_Tripwire(str(marker)), 1]
    members["state['counts'].npy"] = npy(evil, allow_pickle=True)
    rewrite(path, members)
    with pytest.raises(ck.CheckpointError, match="pickle") as e:
        ck.load(path)
    assert "state['counts']" in str(e.value)
    assert not marker.exists()


def test_npz_without_metadata_or_with_bad_json(tmp_path, saved):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.ones(3))
    with pytest.raises(ck.CheckpointError, match="no __jaxbp_checkpoint__ metadata"):
        ck.load(plain)
    path, _ = saved
    members = read_members(path)
    members[ck.META_KEY + ".npy"] = npy(np.frombuffer(b"{not json", np.uint8))
    rewrite(path, members)
    with pytest.raises(ck.CheckpointError, match="metadata is not valid JSON"):
        ck.load(path)
    members[ck.META_KEY + ".npy"] = npy(np.frombuffer(b'{"format": 1, "format": 2}', np.uint8))
    rewrite(path, members)
    with pytest.raises(ck.CheckpointError, match="the key 'format' appears twice"):
        ck.load(path)


def test_wrong_format_version_is_refused(saved):
    path, _ = saved
    edit_meta(path, lambda m: m.update(format_version=3))
    with pytest.raises(ck.CheckpointError, match="format version 3 is not supported.*reads version 2") as e:
        ck.load(path)
    assert str(path) in str(e.value)
    edit_meta(path, lambda m: m.update(format_version=1))  # its checksum left the metadata out
    with pytest.raises(ck.CheckpointError, match="version 1 does not cover its metadata by its checksum"):
        ck.load(path)


def test_tampered_metadata_is_refused(saved):
    path, _ = saved

    def set_dtype(dtype):
        def change(meta):
            (record,) = [r for r in meta["leaves"] if r["name"] == "state['counts']"]
            record["dtype"] = dtype

        return change

    edit_meta(path, set_dtype("object"))
    with pytest.raises(ck.CheckpointError, match=r"leaf state\['counts'\]: object dtype 'object' is not allowed"):
        ck.load(path)
    edit_meta(path, set_dtype("float64"))
    with pytest.raises(ck.CheckpointError, match=r"leaf state\['counts'\]: stored shape \[2, 1\] differs"):
        ck.load(path)
    edit_meta(path, set_dtype("int32"))

    def set_py(meta):
        (record,) = [r for r in meta["leaves"] if r["name"] == "state['step']"]
        record["value"] = "12; import os"

    edit_meta(path, set_py)
    with pytest.raises(ck.CheckpointError, match=r"leaf state\['step'\]: '12; import os' is not a Python int"):
        ck.load(path)
    path2 = path.with_name("b.npz")
    ck.save(path2, {"w": np.ones(2)}, step=0, epoch=0, config={})
    members = read_members(path2)
    members["state['extra'].npy"] = npy(np.ones(1))
    rewrite(path2, members)
    with pytest.raises(ck.CheckpointError, match="checksum mismatch"):  # the checksum covers every entry
        ck.load(path2)
    edit_meta(path2, lambda m: None)
    with pytest.raises(ck.CheckpointError, match="unexpected entries"):
        ck.load(path2)


def test_no_pickle_in_the_module():
    source = Path(ck.__file__).read_text()
    assert "import pickle" not in source and "allow_pickle=True" not in source
    assert os.path.basename(ck.__file__) == "checkpoint.py"
