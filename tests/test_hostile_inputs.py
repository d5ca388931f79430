"""Hostile and mistaken inputs (issue 25, "Inputs that allocate, hang or crash"): each ends in a
one-line error naming the flag, path or spec, exit 2 (1 for a failure during training, with the
summary saying why), no traceback, and nothing lost: no file changed, no user code run.

In process through ``jaxbp.cli.main`` (JAX starts once); tiny files, the bundled digits, few steps.
"""

import gzip
import struct

import numpy as np
import pytest

from jaxbp import data, datafiles
from tests.cli_helpers import assert_one_line_error, run_cli


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
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert_one_line_error(err, str(path), "1000000x1000x1000 = 1000000000000 bytes", "limit")
    assert not (isolated / "run").exists() and _files(isolated / "d") == before


def test_a_small_gzip_declaring_a_terabyte_is_refused_by_data_info(isolated, capsys):
    bomb = gzip.compress(_header(1_000_000, 1_000, 1_000) + bytes(1 << 20), mtime=0)
    path = _idx_set(isolated / "d", bomb)
    code, out, err = run_cli(["data", "info", "mnist", "--data-dir", isolated / "d"], capsys)
    assert code == 2 and "invalid" in out
    assert_one_line_error(err, str(path), "more than the limit")
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
    code, _, err = run_cli(["train", "--model", "mlp", "--seed", seed, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_line_error(err, f"jaxbp train: error: --seed must be an integer in [0, {data.MAX_SEED}], got {seed}")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ user modules (--model, --target)

TRAIN = ["train", "--epochs", "1", "--quiet"]
HEAD = "from jaxbp.models import Custom, Dense, Flatten, serial\n"


def _module(folder, name, source):
    """A user's module ``folder/name.py``; its spec is ``folder/name.py:``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(source)
    return path


def _refused(capsys, tmp_path, model, *needles):
    """``jaxbp train --model model`` exits 2 with one line naming the spec, before any file is written."""
    code, out, err = run_cli([*TRAIN, "--model", model, "--out", tmp_path / "run"], capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, f"jaxbp train: error: {model!r}", *needles)
    assert not (tmp_path / "run").exists()


def test_a_builder_raising_system_exit_0_is_an_error_not_a_success(tmp_path, capsys):
    path = _module(tmp_path / "m", "exits_zero", "def make(num_classes):\n    raise SystemExit(0)\n")
    _refused(capsys, tmp_path, f"{path}:make", "called sys.exit(0) while calling it with num_classes=10")
    path = _module(tmp_path / "m", "exits_at_import", "import sys\nsys.exit(0)\n")
    _refused(capsys, tmp_path, f"{path}:make", f"called sys.exit(0) while importing {str(path)!r}")


def test_a_module_that_loops_at_import_stops_on_sigint_in_one_line(tmp_path, capsys):
    source = """import signal, time
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.raise_signal(signal.SIGINT)  # Ctrl-C, while the loop below would run forever
else:  # a test runner that ignores SIGINT: what the signal would have raised
    raise KeyboardInterrupt
end = time.monotonic() + 60
while time.monotonic() < end:
    pass
raise RuntimeError("SIGINT did not stop the import")
"""
    path = _module(tmp_path / "m", "loops_at_import", source)
    code, _, err = run_cli([*TRAIN, "--model", f"{path}:make", "--out", tmp_path / "run"], capsys)
    assert code == 130
    assert_one_line_error(err, f"jaxbp train: interrupted while importing {str(path)!r} ('{path}:make')")
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(["check", "--target", f"{path}:f", "--shapes", "3"], capsys)
    assert code == 130
    assert_one_line_error(err, f"jaxbp check: interrupted while importing {str(path)!r}")


def test_a_module_that_parses_sys_argv_at_import_sees_a_clean_argv(tmp_path, capsys):
    source = """import argparse, sys
import jax.numpy as jnp
SEEN = list(sys.argv)
ARGS = argparse.ArgumentParser().parse_args()  # exits 2 on jaxbp's own flags


@__import__("jax").custom_vjp
def f(x):
    return jnp.sin(x)


f.defvjp(lambda x: (jnp.sin(x), x), lambda x, dy: (dy * jnp.cos(x),))


def make_inputs():
    assert sys.argv == SEEN, sys.argv
    return (jnp.arange(3.0),)
"""
    path = _module(tmp_path / "m", "parses_argv", source)
    code, out, err = run_cli(["check", "--target", f"{path}:f", "--example", f"{path}:make_inputs",
                            "--dtype", "float64", "--no-explore"], capsys)  # fmt: skip
    assert code == 0 and err == "" and "PASS" in out and "note:" not in out, (out, err)
    assert __import__("sys").modules["parses_argv"].SEEN in ([f"{path}:f"], [f"{path}:make_inputs"])  # [spec]


@pytest.mark.parametrize("spec", ["os:system", "os.path:join", "builtins:exec", "subprocess:run", "__main__:main"])
def test_a_spec_naming_the_standard_library_is_refused(tmp_path, capsys, spec):
    _refused(capsys, tmp_path, spec, f"{spec.split('.')[0].split(':')[0]!r} is a module of Python's standard library")
    code, _, err = run_cli(["check", "--target", spec, "--shapes", "3"], capsys)
    assert code == 2
    assert_one_line_error(err, "jaxbp check: error: ", "standard library")


@pytest.mark.parametrize("name", ["json", "jax", "numpy"])
def test_a_file_named_like_an_imported_module_is_refused_and_never_runs(tmp_path, capsys, name):
    import sys

    before = sys.modules.get(name)
    marker = tmp_path / "ran"
    path = _module(tmp_path / "m", name, f"open({str(marker)!r}, 'w').close()\n")
    _refused(capsys, tmp_path, f"{path}:make", f"the file name '{name}.py' would replace the module {name!r}")
    assert not marker.exists() and sys.modules.get(name) is before


@pytest.mark.parametrize(
    ("init", "needles"),
    [
        ("raise RuntimeError('init exploded')", ["Custom layer 'custom': init raised RuntimeError: init exploded"]),
        ("return None", ["Custom layer 'custom': init must return (output_shape, params), got None"]),
        ("return 'x', {}", ["Custom layer 'custom': init's output_shape must be a tuple of ints, got 'x'"]),
        ("raise SystemExit(0)", ["Custom layer 'custom': init raised SystemExit: 0"]),
    ],
)
def test_a_custom_layer_whose_init_raises_or_returns_nonsense_is_refused(tmp_path, capsys, init, needles):
    source = (
        HEAD
        + f"""
def init(key, shape):
    {init}


def make(num_classes):
    f = lambda p, x: x
    return serial(Flatten, Custom(f, f, init=init), Dense(num_classes))
"""
    )
    path = _module(tmp_path / "m", "custom_init", source)
    _refused(capsys, tmp_path, f"{path}:make", *needles)


def test_a_model_whose_outputs_are_not_the_classes_is_refused_before_training(tmp_path, capsys):
    source = HEAD + "def make(num_classes):\n    return serial(Flatten, Dense(7))\n"
    path = _module(tmp_path / "m", "seven_outputs", source)
    _refused(capsys, tmp_path, f"{path}:make", "its output has shape (7,) per example, but the data set has 10 classes")


@pytest.mark.parametrize(
    ("layer", "needle"),
    [
        ("Dense(10**12)", "Dense(1000000000000): its weights [64, 1000000000000] would hold 64000000000000 values"),
        ("Dense(0)", "Dense: features must be a positive integer, got 0"),
        ("Dense(2.5)", "Dense: features must be a positive integer, got 2.5"),
    ],
)
def test_a_layer_too_large_or_malformed_is_refused_naming_it(tmp_path, capsys, layer, needle):
    path = _module(tmp_path / "m", "big_layer", HEAD + f"def make(num_classes):\n    return serial(Flatten, {layer})\n")
    _refused(capsys, tmp_path, f"{path}:make", needle)


def test_a_host_callback_that_raises_mid_run_fails_the_run_with_its_reason(tmp_path, capsys):
    source = (
        HEAD
        + """import jax

CALLS = [0]


def host(x):
    CALLS[0] += 1
    if CALLS[0] > 2:
        raise RuntimeError("the sensor went away")
    return x


def f(x):
    return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def make(num_classes):
    return serial(Flatten, Custom(f, f), Dense(num_classes))
"""
    )
    path = _module(tmp_path / "m", "callback_fails", source)
    out = tmp_path / "run"
    code, _, err = run_cli([*TRAIN, "--model", f"{path}:make", "--batch-size", "256", "--out", out], capsys)
    assert code == 1
    assert_one_line_error(
        err, "jaxbp train: UserCodeError: ", f"'{path}:make': step ", "RuntimeError: the sensor went away"
    )
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "RuntimeError: the sensor went away" in summary["error"]


# ------------------------------------------------------------------ check: sys.exit, no hand-written rule

CHECKED = """import sys
import jax.numpy as jnp


def exits(x):
    sys.exit(0)


def exits_making_inputs():
    sys.exit(0)


def plain(x):
    return jnp.sin(x) * 2
"""


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--target", "{m}:exits", "--shapes", "3"], "'{m}:exits' called sys.exit(0) while checking it"),
        (["--target", "{m}:plain", "--example", "{m}:exits_making_inputs"], "called sys.exit(0) while calling it"),
        (["--target", "{x}:f", "--shapes", "3"], "called sys.exit(0) while importing"),
    ],
)
def test_check_code_that_calls_sys_exit_0_is_an_error_not_a_pass(tmp_path, capsys, argv, needle):
    m = _module(tmp_path / "m", "checked_exits", CHECKED)
    x = _module(tmp_path / "m", "checked_exits_at_import", "import sys\nsys.exit(0)\n")
    argv = [a.format(m=m, x=x) for a in argv]
    code, out, err = run_cli(["check", *argv, "--dtype", "float64", "--no-explore"], capsys)
    assert code == 2 and "PASS" not in out
    assert_one_line_error(err, "jaxbp check: error: ", needle.format(m=m))


def test_check_of_a_function_without_a_hand_written_rule_says_so(tmp_path, capsys):
    m = _module(tmp_path / "m", "checked_plain", CHECKED)
    code, out, _ = run_cli(["check", "--target", f"{m}:plain", "--shapes", "3", "--dtype", "float64",
                          "--no-explore"], capsys)  # fmt: skip
    assert code == 0
    assert out.splitlines()[1] == (
        f"  note: {m}:plain is not a jax.custom_vjp or jax.custom_jvp function and calls none: no hand-written "
        "derivative rule was exercised (the check compared JAX's own derivatives)"
    )
