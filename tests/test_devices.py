"""The portability check on the CPU: it passes against golden values, and a planted wrong one fails its row."""

import json

import numpy as np
import pytest

from jaxbp import checkpoint, cli, devices, registry

LAYERS = ["dense", "relu"]  # the full registry runs in test_layers; here the golden plumbing


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    path = tmp_path_factory.mktemp("golden") / "golden.npz"
    return devices.write_golden(path, layers=LAYERS, train_steps=4)


def test_cpu_passes_against_its_golden_file(golden):
    (report,) = devices.check_devices(layers=LAYERS, backends=["cpu"], golden_path=golden, train_steps=4)
    assert report.backend == "cpu" and report.float64
    assert report.passed, devices.format_reports([report])
    checks = [r.check for r in report.rows]
    expected = [f"{n}[{c.name}]" for n in LAYERS for c in registry.get(n).cases]
    assert checks[:-1] == expected and checks[-1].startswith("train:")
    # Same machine, same code: the golden gradients and losses come back exactly.
    assert report.worst_gradient_error == 0.0 and report.loss_difference == 0.0
    assert all(r.autodiff_ok for r in report.rows[:-1])


def test_a_planted_wrong_golden_value_fails_its_row(golden, tmp_path):
    arrays, meta = checkpoint.load(golden)
    key = "grad/dense/" + registry.get("dense").cases[0].name + "/1"  # dw of the first dense case
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] += 1e-6 * np.abs(arrays[key]).max()  # far above the float64 tolerance
    planted = checkpoint.save(tmp_path / "planted.npz", arrays, step=0, epoch=0, config=meta["config"])
    (report,) = devices.check_devices(layers=LAYERS, backends=["cpu"], golden_path=planted, suite=False, train_steps=4)
    failed = [r.check for r in report.rows if not r.passed]
    assert failed == ["dense[" + registry.get("dense").cases[0].name + "]"]
    assert not report.passed


def test_a_planted_wrong_loss_fails_the_training_row(golden, tmp_path):
    arrays, meta = checkpoint.load(golden)
    arrays["train/losses"] = arrays["train/losses"] * np.float32(1.01)
    planted = checkpoint.save(tmp_path / "planted.npz", arrays, step=0, epoch=0, config=meta["config"])
    (report,) = devices.check_devices(
        layers=["relu"], backends=["cpu"], golden_path=planted, suite=False, train_steps=4
    )
    assert [r.check for r in report.rows if not r.passed] == ["train:cnn/digits"]


def test_cli_exit_codes_and_json(golden, tmp_path, capsys):
    out = tmp_path / "devices.json"
    args = ["devices", "--golden", str(golden), "--layer", "relu", "--train-steps", "4", "--no-suite"]
    assert cli.main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cpu" in printed and "PASS" in printed
    (rec,) = json.loads(out.read_text())
    assert rec["passed"] and rec["matmul_precision"] == "highest" and rec["rows"][0]["check"].startswith("relu[")
    assert cli.main(["devices", "--golden", str(tmp_path / "missing.npz"), "--layer", "relu"]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["devices", "--layer", "no_such_layer"])
    assert e.value.code == 2


def test_shipped_golden_file_covers_every_registered_case():
    arrays, meta = devices.load_golden()
    want = {
        devices._golden_key(spec, case, i)
        for spec in registry.REGISTRY.values()
        for case in spec.cases
        for i in case.argnums
    }
    missing = want - set(arrays)
    assert not missing, f"regenerate with `jaxbp devices --write-golden`: missing {sorted(missing)[:5]}"
    assert arrays["train/losses"].shape == (devices.TRAIN_RUN["steps"],)
    assert meta["train_run"] == devices.TRAIN_RUN
