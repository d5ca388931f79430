"""Data-parallel training (parallel.py through train.fit and `jaxbp train`), CPU only.

* 8 simulated CPU devices (``--xla_force_host_platform_device_count=8``, which must be
  set before JAX starts, hence a subprocess) train to the same losses and parameters as
  one device, with batch norm (its statistics are over the global batch) and without.
* Two real processes on 127.0.0.1 (``jax.distributed`` with gloo collectives) train,
  stop, resume and evaluate like one process, and only process 0 writes files. A SIGINT or
  SIGTERM that reaches one of them stops both after the same step, with one checkpoint.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jaxbp import checkpoint, cli, parallel, train

RTOL = 1e-5

# Trains one epoch of digits (23 steps of 64, the last padded to 29 real rows, then the
# evaluation) on one device and on 8: an mlp in float32, and a cnn-bn with dropout in
# float64. The batch-norm run is float64 because in float32 the two runs' different
# summation orders (~1e-7) grow to ~1e-4 within an epoch: the conv biases in front of
# batch norm have an exact gradient of 0, adam rescales their float32 noise to steps of
# size lr, and the trajectory is chaotic enough to amplify the rest (measured: losses
# agree to 1e-7 for 10 steps, then drift to 1e-4). In float64 they agree to ~1e-15.
EIGHT_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jaxbp import train

    def run(devices, **kw):
        config = train.TrainConfig(dataset="digits", epochs=1, batch_size=64, log_every=1, devices=devices,
                                   out=f"{sys.argv[1]}/{kw['model']}-{devices}", **kw)
        result = train.fit(config, progress=False)
        lines = (result.paths["metrics"]).read_text().splitlines()
        losses = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
        leaves = jax.tree.leaves((result.params, result.model_state))
        return result, np.array(losses), leaves

    out = {"devices": len(jax.devices())}
    for kw in ({"model": "mlp"}, {"model": "cnn-bn", "dropout": 0.25, "dtype": "float64"}):
        one, l1, p1 = run(None, **kw)
        eight, l8, p8 = run("8", **kw)
        # per parameter, against its own scale floored at 1e-2 of the model's largest entry
        top = max(float(np.max(np.abs(p))) for p in p1)
        param_rel = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) / max(float(np.max(np.abs(a))), 1e-2 * top)
            for a, b in zip(p1, p8)
        )
        summary = json.loads(eight.paths["summary"].read_text())
        out[kw["model"]] = {
            "steps": [len(l1), len(l8)],
            "loss_rel": float(np.max(np.abs(l8 - l1) / np.abs(l1))),
            "test_loss_rel": abs(eight.test_loss - one.test_loss) / one.test_loss,
            "param_rel": param_rel,
            "mesh_sizes": [len(p1[0].sharding.device_set), len(p8[0].sharding.device_set)],
            "replicated": all(p.sharding.is_fully_replicated for p in p8),
            "summary_devices": summary["num_devices"],
            "summary_xla_flags": summary["xla_flags"],
        }
    try:
        train.fit(train.TrainConfig(dataset="digits", model="mlp", batch_size=60, devices="8",
                                    out=f"{sys.argv[1]}/bad"), progress=False)
        out["error"] = None
    except ValueError as err:
        out["error"] = str(err)
    print(json.dumps(out))
    """
)


def _env(**extra):
    # without the suite's fast-compile flags (conftest.py): these processes train for many steps
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "JAXBP_"))}
    env.update(JAX_PLATFORMS="cpu", **extra)
    return env


@pytest.mark.long
def test_eight_devices_train_like_one(tmp_path):
    script = tmp_path / "eight.py"
    script.write_text(EIGHT_DEVICES)
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    print(json.dumps({k: v for k, v in out.items() if k != "error"}))
    for model in ("mlp", "cnn-bn"):
        r = out[model]
        assert r["steps"] == [23, 23] and r["mesh_sizes"] == [1, 8] and r["summary_devices"] == 8, r
        assert r["summary_xla_flags"] == env["XLA_FLAGS"], r  # the flags its numbers were computed under
        assert r["replicated"], r  # the step keeps parameters and batch-norm state replicated
        assert r["loss_rel"] < RTOL and r["test_loss_rel"] < RTOL and r["param_rel"] < RTOL, (model, r)
    assert out["error"] == (
        "batch size 60 is not divisible by the 8 devices of the mesh; choose a multiple of 8 (for example 56)"
    )


def test_devices_flag_is_validated(tmp_path, capsys):
    with pytest.raises(ValueError, match="devices"):
        train.TrainConfig(devices="0").validate()
    for ok in (None, "all", "1", "8"):
        train.TrainConfig(devices=ok).validate()
    # more devices than visible: exit 2 before any output is written
    assert cli.main(["train", "--devices", "64", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "--devices 64 asks for more devices than the" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert cli.main(["train", "--num-processes", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "missing ['coordinator', 'process_id']" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _processes(flags_of, cwd):
    """Start ``jaxbp train`` as processes 0 and 1 of one jax.distributed run; kill both on
    the way out of the block (they should have ended by then)."""
    port = _free_port()
    procs = []
    try:
        for i in range(2):
            argv = [sys.executable, "-m", "jaxbp.cli", "train", "--coordinator", f"127.0.0.1:{port}"]
            argv += ["--num-processes", "2", "--process-id", str(i), *flags_of(i)]
            procs.append(
                subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            )
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _outputs(procs, timeout, expect):
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == expect, text[-3000:]
    return outputs


def _two_processes(flags_of, cwd, timeout=120, expect=0):
    """Run ``jaxbp train`` as processes 0 and 1 of one jax.distributed run; kill both on any failure."""
    with _processes(flags_of, cwd) as procs:
        return _outputs(procs, timeout, expect)


def _losses(folder):
    recs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "train"], [r for r in recs if r["kind"] == "eval"]


@pytest.mark.long
def test_two_processes_stop_resume_and_match_one_process(tmp_path):
    common = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--batch-size", "64", "--log-every", "1"]
    common += ["--quiet"]
    out0, out1 = tmp_path / "p0", tmp_path / "p1"  # process 1 is told a folder of its own: it must stay empty

    # 10 steps, stop with a checkpoint (written by process 0 from the replicated parameters) ...
    outs = _two_processes(
        lambda i: [*common, "--devices", "all", "--max-steps", "10", "--out", str([out0, out1][i])], tmp_path
    )
    assert "stopped after --max-steps 10" in outs[0] and "outputs in" not in outs[1]
    assert "at step 10 (epoch 1)" in outs[0] and "nan" not in outs[0]  # evaluated before it stopped
    # ... then both processes resume from it (read on the host, replicated again) to the epoch's end.
    resume = ["--resume", str(out0)]  # a resumed run does not inherit the stored limit of 10: it runs to the end
    _two_processes(lambda i: [*common, *resume, "--out", str([out0, out1][i])], tmp_path)
    assert not out1.exists()
    summary = json.loads((out0 / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_processes"] == 2 and summary["num_devices"] == 2

    single = train.fit(
        train.TrainConfig(
            dataset="digits", model="mlp", epochs=1, batch_size=64, log_every=1, out=str(tmp_path / "one")
        ),
        progress=False,
    )
    (dist_train, dist_eval), (one_train, one_eval) = _losses(out0), _losses(single.out_dir)
    assert [r["step"] for r in dist_train] == [r["step"] for r in one_train] == list(range(1, 24))
    a, b = np.array([r["loss"] for r in dist_train]), np.array([r["loss"] for r in one_train])
    np.testing.assert_allclose(a, b, rtol=RTOL)
    assert [r["test_accuracy"] for r in dist_eval] == [r["test_accuracy"] for r in one_eval]
    np.testing.assert_allclose(dist_eval[0]["test_loss"], one_eval[0]["test_loss"], rtol=RTOL)
    print(f"2 processes vs 1: max rel loss diff {np.max(np.abs(a - b) / b):.2e}")


@pytest.mark.long
def test_two_processes_both_stop_when_process_0_refuses_the_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a run is there already
    flags = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--quiet", "--devices", "all"]
    outs = _two_processes(lambda i: [*flags, "--out", str(out)], tmp_path, expect=2)
    assert "already holds a run" in outs[0] and "Traceback" not in outs[0]
    assert "process 0 cannot take the run folder" in outs[1] and "Traceback" not in outs[1]
    assert (out / "config.json").read_text() == "{}"


@pytest.mark.long
@pytest.mark.parametrize("who, signals", [(1, ("SIGINT", "SIGTERM")), (0, ("SIGINT", "SIGINT"))])
def test_a_signal_to_one_process_stops_both_after_the_same_step(tmp_path, who, signals):
    flags = ["--dataset", "digits", "--model", "mlp", "--epochs", "1000", "--batch-size", "64", "--log-every", "1"]
    flags += ["--quiet", "--devices", "all"]
    out0, out1 = tmp_path / "p0", tmp_path / "p1"
    metrics = out0 / "metrics.jsonl"
    with _processes(lambda i: [*flags, "--out", str([out0, out1][i])], tmp_path) as procs:
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.stat().st_size > 0):  # both are training
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
            time.sleep(0.05)
        for name in signals:  # to one process only, 20 ms apart
            procs[who].send_signal(getattr(signal, name))
            time.sleep(0.02)
        outputs = _outputs(procs, timeout=120, expect=130)
    _, meta = checkpoint.load(out0 / "checkpoint.npz")
    step = meta["step"]
    assert f"{signals[0]} received: stopped after step {step} " in outputs[who], outputs[who]
    assert f"{signals[0]} received by another process: stopped after step {step} " in outputs[1 - who]
    assert "Traceback" not in outputs[0] + outputs[1]
    assert "process 0 wrote the checkpoint" in outputs[1] and not out1.exists()
    summary = json.loads((out0 / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == step and summary["num_processes"] == 2
    train_steps = [r["step"] for r in _losses(out0)[0]]
    assert train_steps == list(range(1, step + 1))
    # one process resumes the two's checkpoint and goes on
    resumed = train.fit(train.resume_config(out0, max_steps=step + 2), progress=False)
    assert resumed.status == "stopped" and [r["step"] for r in _losses(out0)[0]] == list(range(1, step + 3))


def test_max_over_processes_is_the_value_itself_in_one_process():
    mesh = parallel.make_mesh(None)
    assert [parallel.max_over_processes(mesh, v) for v in (0, 2, 15)] == [0, 2, 15]
