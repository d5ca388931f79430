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
    assert "the equations for da:" in out and "y = a b;  da = dy b^T;  db = a^T dy" in out
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
    with pytest.raises(SystemExit) as info:
        main(["check", "--target", target.format(mod=mod), "--reference", f"{mod}:softplus_reference",
              "--shapes", "3"])  # fmt: skip
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shapes", "3,a"], "malformed shape '3,a'"),
        (["--shapes", "3", "4"], "cannot take the 2 argument(s)"),
        (["--shapes", "3", "--argnums", "2"], "out of range"),
        ([], "--target needs --reference and --shapes"),
    ],
)
def test_target_bad_shapes_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    mod = write_module(tmp_path, monkeypatch, "user_shapes")
    with pytest.raises(SystemExit) as info:
        main(["check", "--target", f"{mod}:softplus", "--reference", f"{mod}:softplus_reference", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_target_cannot_be_combined_with_layer(capsys, tmp_path, monkeypatch):
    mod = write_module(tmp_path, monkeypatch, "user_combo")
    with pytest.raises(SystemExit) as info:
        main(["check", "--layer", "relu", "--target", f"{mod}:softplus", "--reference", f"{mod}:softplus_reference",
              "--shapes", "3"])  # fmt: skip
    assert info.value.code == 2


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

    code = "import sys, jaxbp, jaxbp.verify, jaxbp.plots, jaxbp.cli; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
