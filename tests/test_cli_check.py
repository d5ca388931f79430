"""``jaxbp check``: exit codes, the table, --json, --target on a user's module, --plot.

In process through ``jaxbp.cli.main`` (JAX starts once), with tiny shapes.
"""

import json
import textwrap

import pytest

from jaxbp.cli import main

USER_MODULE = '''
import jax
import jax.numpy as jnp


def softplus_reference(x):
    return jnp.logaddexp(x, 0.0)


@jax.custom_vjp
def softplus(x):
    """y = log(1 + exp(x));  dx = dy * sigmoid(x)"""
    return softplus_reference(x)


softplus.defvjp(lambda x: (softplus_reference(x), x), lambda x, dy: (dy * jax.nn.sigmoid({sign}x),))


def matmul_reference(a, b):
    return a @ b


@jax.custom_vjp
def matmul(a, b):
    """y = a b;  da = dy b^T;  db = a^T dy"""
    return a @ b


matmul.defvjp(lambda a, b: (a @ b, (a, b)), lambda r, dy: ({da}, r[0].T @ dy))

NOT_A_FUNCTION = 3
'''


def write_module(tmp_path, monkeypatch, name, *, correct=True):
    """A user's module in a fresh directory that becomes the current one."""
    source = USER_MODULE.format(sign="" if correct else "-", da="dy @ r[1].T" if correct else "dy @ r[1]")
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_check_layers_prints_a_table_and_writes_json(capsys, tmp_path):
    out = tmp_path / "report.json"
    assert main(["check", "--layer", "relu", "--layer", "dense", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    text = text[text.index("\nlayer ") + 1 :]  # after the line per configuration streamed to a non-terminal
    header = text.splitlines()[0].split()
    assert header[:2] == ["layer", "config"] and "result" in header
    from jaxbp import registry

    n = len(registry.get("relu").cases) + len(registry.get("dense").cases)
    rows = [line for line in text.splitlines() if line.endswith(("PASS", "FAIL"))]
    assert len(rows) == n and all(r.endswith("PASS") for r in rows)
    assert rows[0].startswith("relu") and any(r.startswith("dense") for r in rows)
    assert f"{n}/{n} configurations pass" in text

    data = json.loads(out.read_text())
    assert {"passed", "dtypes", "seed", "matmul_precision", "backend", "summary", "reports"} <= set(data)
    assert data["passed"] is True and data["dtypes"] == ["float64", "float32"] and data["matmul_precision"] == "highest"
    assert len(data["reports"]) == len(data["summary"]) == n
    report = data["reports"][0]
    assert report["layer"] == "relu" and {"grads", "transforms", "passed"} <= set(report)
    assert set(data["derivations"]) == {"relu", "dense"}  # each layer's math once, not once per report
    assert "derivation" not in report and data["derivations"]["relu"].startswith(registry.get("relu").doc[:40])
    assert {"max_rel_err", "fd_rel_err", "worst_index", "tolerance_source", "ratio"} <= set(report["grads"][0])
    row = data["summary"][0]
    assert {"float64_vs_autodiff", "float64_vs_fd", "float32_vs_autodiff", "float32_vs_fd", "vmap"} <= set(row)


def test_unknown_layer_exits_2_listing_the_known_ones(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", "--layer", "relu", "--layer", "nope"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown layer 'nope'" in err and "relu" in err and "dense" in err


def test_bad_dtype_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", "--dtype", "int8"])
    assert info.value.code == 2


def test_target_correct_pair_passes(capsys, tmp_path, monkeypatch):
    mod = write_module(tmp_path, monkeypatch, "user_ok")
    code = main(["check", "--target", f"{mod}:softplus", "--reference", f"{mod}:softplus_reference",
                 "--shapes", "3,4", "--dtype", "float64"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith(f"{mod}:softplus: PASS") and "forward_mode" in out and "known limitation" in out


def test_target_two_arguments_with_argnums(capsys, tmp_path, monkeypatch):
    mod = write_module(tmp_path, monkeypatch, "user_mm")
    code = main(["check", "--target", f"{mod}:matmul", "--reference", f"{mod}:matmul_reference",
                 "--shapes", "3,4", "4,2", "--argnums", "0", "1", "--dtype", "float64"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out


def test_target_wrong_pair_exits_1_with_the_worst_element_and_derivation(capsys, tmp_path, monkeypatch):
    mod = write_module(tmp_path, monkeypatch, "user_bad", correct=False)
    json_path = tmp_path / "r.json"
    code = main(["check", "--target", f"{mod}:matmul", "--reference", f"{mod}:matmul_reference",
                 "--shapes", "3,3", "3,3", "--dtype", "float64", "--json", str(json_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert f"{mod}:matmul: FAIL" in out
    assert "FAIL da (float64, shape (3, 3))" in out and "worst element a[" in out  # the argument and element
    assert "the equations for da:" in out and out.count("y = a b;  da = dy b^T;  db = a^T dy") == 1  # once
    data = json.loads(json_path.read_text())
    grads = {g["arg"]: g["passed"] for g in data["reports"][0]["grads"]}
    assert grads == {"a": False, "b": True}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("user_spec_softplus", "not of the form MODULE:FUNCTION"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:NOT_A_FUNCTION", "is not callable"),
        ("{mod}:", "not of the form MODULE:FUNCTION"),
        ("{mod}:softplus()", "not a dotted Python name"),
    ],
)
def test_target_bad_specs_exit_2(capsys, tmp_path, monkeypatch, target, message):
    mod = write_module(tmp_path, monkeypatch, "user_spec")
    argv = ["check", "--target", target.format(mod=mod), "--reference", f"{mod}:softplus_reference", "--shapes", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("jaxbp check: error: ")  # one line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shapes", "3,a"], "malformed shape '3,a' (--shapes)"),
        (["--shapes", "\u00b2,3"], "malformed shape '\u00b2,3' (--shapes)"),  # a digit to str.isdigit
        (["--shapes", "100000,100000"], "holds 10000000000 elements, more than the limit of 10000000"),
        (["--shapes", "99999999999999999999999"], "holds 99999999999999999999999 elements, more than the limit"),
        (["--shapes", "3000,3000", "3000,3000"], "the shapes (--shapes) holds 18000000 elements"),
        (["--shapes", ",".join(["1"] * 40)], "has 40 axes, more than 32"),
        (["--shapes", "3", "--seed=-1"], "--seed must be an integer in [0, 4294967295], got -1"),
        (["--shapes", "3", "--seed", str(2**32)], "--seed must be an integer in [0, 4294967295], got 4294967296"),
        (["--shapes", "3", "4"], "cannot take the 2 argument(s)"),
        (["--shapes", "3", "--argnums", "2"], "out of range"),
        ([], "--target needs --shapes or --example"),
        (["--shapes", "3", "--rtol=-1e-3"], "--rtol must be a finite number >= 0"),
        (["--shapes", "3", "--rtol", "nan"], "--rtol must be a finite number >= 0"),
        (["--shapes", "3", "--rtol", "tight"], "--rtol 'tight'"),
        (["--shapes", "3", "--example", "m:f"], "either --shapes or --example"),
    ],
)
def test_target_bad_shapes_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    mod = write_module(tmp_path, monkeypatch, "user_shapes")
    try:
        code = main(["check", "--target", f"{mod}:softplus", "--reference", f"{mod}:softplus_reference", *argv])
    except SystemExit as exit_:  # argparse's flag errors (usage, then the error)
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if "usage:" not in err:  # the inputs' errors are one line
        assert err.count("\n") == 1 and err.startswith("jaxbp check: error: "), err


def test_target_cannot_be_combined_with_layer(capsys, tmp_path, monkeypatch):
    mod = write_module(tmp_path, monkeypatch, "user_combo")
    with pytest.raises(SystemExit) as info:
        main(["check", "--layer", "relu", "--target", f"{mod}:softplus", "--reference", f"{mod}:softplus_reference",
              "--shapes", "3"])  # fmt: skip
    assert info.value.code == 2


@pytest.mark.long
def test_plot_writes_the_pngs(capsys, tmp_path):
    out = tmp_path / "plots"
    assert main(["check", "--layer", "relu", "--dtype", "float64", "--plot", str(out)]) == 0
    names = {p.name for p in out.glob("*.png")}
    assert names == {"conv2d_gradients.png", "max_pool2d_gradients.png", "max_pool2d_routing.png"}
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out


def test_importing_jaxbp_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, jaxbp, jaxbp.verify, jaxbp.plots, jaxbp.curves, jaxbp.figure, jaxbp.cli; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


EXAMPLE_MODULE = """
import jax
import jax.numpy as jnp
import numpy as np


def reference(x, labels, key):
    keep = jax.random.bernoulli(key, 0.5, x.shape)
    return jnp.sum(jnp.where(keep, x, 0.0) * labels)


@jax.custom_vjp
def masked(x, labels, key):
    return reference(x, labels, key)


def bwd(res, g):
    x, labels, key = res
    keep = jax.random.bernoulli(key, 0.5, x.shape)
    return g * jnp.where(keep, labels * {scale}, 0.0), None, None


masked.defvjp(lambda x, labels, key: (reference(x, labels, key), (x, labels, key)), bwd)


def make_inputs(seed):
    return np.abs(np.random.default_rng(seed).standard_normal((3, 4))) + 0.1, np.arange(4), jax.random.key(seed)
"""


@pytest.mark.parametrize("correct", [True, False])
def test_example_inputs_from_a_file_path_with_integer_labels_and_a_key(capsys, tmp_path, correct):
    path = tmp_path / "masked_layer.py"
    path.write_text(EXAMPLE_MODULE.format(scale=1.0 if correct else 2.0))
    code = main(["check", "--target", f"{path}:masked", "--reference", f"{path}:reference",
                 "--example", f"{path}:make_inputs", "--dtype", "float64"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == (0 if correct else 1), out
    assert "skipped labels: int64" in out and "skipped key: PRNG key" in out
    assert ("FAIL dx (float64" in out) is not correct


def test_without_a_reference_finite_differences_alone_catch_a_wrong_pair(capsys, tmp_path, monkeypatch):
    mod = write_module(tmp_path, monkeypatch, "user_fd", correct=False)
    code = main(["check", "--target", f"{mod}:softplus", "--shapes", "5", "--dtype", "float64"])
    out = capsys.readouterr().out
    assert code == 1 and "reference: finite differences only" in out and "FAIL dx (float64" in out


@pytest.mark.parametrize(
    ("flag", "make", "message"),
    [
        ("--json", lambda d: d, "is a folder, not a file"),
        ("--json", lambda d: d / "missing" / "r.json", "does not exist"),
        ("--plot", lambda d: d / "missing" / "plots", "does not exist"),
        ("--plot", lambda d: (d / "file.txt").write_text("x") and d / "file.txt", "is a file, not a folder"),
    ],
)
def test_output_destinations_are_checked_before_the_run(capsys, tmp_path, flag, make, message):
    with pytest.raises(SystemExit) as info:
        main(["check", "--layer", "relu", flag, str(make(tmp_path))])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and flag in captured.err and captured.out == ""  # nothing ran


def test_an_unwritable_destination_is_refused(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.access(locked, os.W_OK):  # running as root: permissions do not bind
            pytest.skip("permissions are not enforced for this user")
        with pytest.raises(SystemExit) as info:
            main(["check", "--layer", "relu", "--json", str(locked / "r.json")])
        assert info.value.code == 2 and "is not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_results_stream_line_by_line_when_stdout_is_not_a_terminal(capsys):
    assert main(["check", "--layer", "relu", "--dtype", "float64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from jaxbp import registry

    n = len(registry.get("relu").cases)
    assert all(line.startswith("relu[") and ": PASS" in line for line in lines[:n])  # before the table
    assert lines[n] == "" and lines[n + 1].split()[:2] == ["layer", "config"]


def test_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    # Five layers: their later lines and the summary come seconds after the first line, so the child
    # still writes after the pipe is closed (with relu alone its output fit the pipe first under load).
    layers = ", ".join(f"'--layer', '{name}'" for name in ("relu", "leaky_relu", "sigmoid", "tanh", "softmax"))
    code = f"import sys; from jaxbp.cli import main; sys.exit(main(['check', {layers}, '--dtype', 'float64']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and first.startswith(b"relu[")
    assert "Traceback" not in err and "BrokenPipe" not in err


SHAPE_MODULE = """
import jax
import jax.numpy as jnp
import numpy as np


def mean_rows_reference(x):
    return jnp.mean(x, axis=1)


@jax.custom_vjp
def mean_rows(x):
    return mean_rows_reference(x)


mean_rows.defvjp(lambda x: (mean_rows_reference(x), x.shape),
                 lambda s, g: (jnp.broadcast_to(g[:, None] / s[{axis}], s),))


def make_inputs(seed, shape=(3, 3)):
    return np.random.default_rng(seed).standard_normal(shape)
"""


@pytest.mark.parametrize("correct", [True, False])
def test_an_example_factory_that_takes_a_shape_checks_other_shapes(capsys, tmp_path, monkeypatch, correct):
    """The bug (divide by shape[0], not shape[1]) hides at the factory's square default shape."""
    (tmp_path / "rows.py").write_text(SHAPE_MODULE.format(axis=1 if correct else 0))
    monkeypatch.chdir(tmp_path)
    code = main(["check", "--target", "rows.py:mean_rows", "--reference", "rows.py:mean_rows_reference",
                 "--example", "rows.py:make_inputs", "--dtype", "float64", "--no-explore"])  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("rows.py:mean_rows: PASS"), out  # at (3, 3), both ways
    assert code == (0 if correct else 1), out
    assert ("at other shapes: PASS" if correct else "shape (2, 3): FAIL grad x float64") in out


def test_plot_with_a_target_draws_the_target_s_gradients(capsys, tmp_path, monkeypatch):
    mod = write_module(tmp_path, monkeypatch, "user_plot")
    argv = ["check", "--target", f"{mod}:matmul", "--shapes", "3,4", "4,2", "--dtype", "float64", "--no-explore"]
    assert main([*argv, "--plot", "pics"]) == 2  # no reference: nothing to draw it against
    assert "needs --reference" in capsys.readouterr().err and not (tmp_path / "pics").exists()
    assert main([*argv, "--reference", f"{mod}:matmul_reference", "--plot", "pics"]) == 0
    assert [p.name for p in (tmp_path / "pics").iterdir()] == ["matmul_gradients.png"]
    assert "wrote pics/matmul_gradients.png" in capsys.readouterr().out
