"""`jaxbp train` (and bench/devices) on bad input and hostile environments: every case exits
with a one-line error naming the problem, no traceback, and leaves the data valid.

Most cases call ``cli.main`` in-process and share one tiny configuration (mlp on digits, one
epoch of 23 steps), so its steps compile once; one real subprocess checks the lock and
SIGTERM end to end.
"""

import dataclasses
import gzip
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxbp import bench, checkpoint, cli, data, devices
from jaxbp.train import loop
from tests.cli_helpers import assert_one_line_error, run_cli

TINY = ["train", "--model", "mlp", "--epochs", "1", "--quiet"]
STEPS = 23  # 1437 digits in batches of 64


def _strict_records(folder):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    text = (folder / "metrics.jsonl").read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".jaxbp.lock"}


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def _timeless(recs):
    return [{k: v for k, v in r.items() if "per_s" not in k and "time" not in k} for r in recs]


# ------------------------------------------------------------------ run folders


def test_a_second_run_into_a_run_is_refused_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "a"
    assert run_cli([*TINY, "--max-steps", "3", "--out", out], capsys)[0] == 0
    first = _files(out)
    code, _, err = run_cli([*TINY, "--max-steps", "3", "--out", out], capsys)
    assert code == 2
    assert_one_line_error(err, f"{out}: already holds a run", f"jaxbp train --resume {out}", "--overwrite")
    assert _files(out) == first  # byte-identical
    code, _, _ = run_cli([*TINY, "--max-steps", "5", "--log-every", "1", "--out", out, "--overwrite"], capsys)
    assert code == 0 and _summary(out)["steps"] == 5
    assert [r["step"] for r in _strict_records(out) if r["kind"] == "train"] == [1, 2, 3, 4, 5]


def test_resume_writes_into_the_moved_and_the_copied_folder(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_cli([*TINY, "--max-steps", "3", "--out", a], capsys)[0] == 0
    shutil.copytree(a, c)
    os.rename(a, b)
    assert run_cli(["train", "--resume", b, "--quiet"], capsys)[0] == 0
    assert not a.exists()  # the stored out is not recreated
    assert _summary(b)["status"] == "completed" and _summary(b)["steps"] == STEPS
    copy, done = _files(c), _files(b)
    assert run_cli(["train", "--resume", c, "--quiet"], capsys)[0] == 0
    assert _summary(c)["status"] == "completed" and _files(c) != copy
    assert _files(b) == done  # resuming the copy wrote the copy only


def test_max_steps_evaluates_and_its_hint_really_continues_the_run(tmp_path, capsys, monkeypatch):
    totals = []

    class Recording(loop.Display):
        def __init__(self, progress, total_steps, initial, desc):
            totals.append((total_steps, initial))
            super().__init__(progress, total_steps, initial, desc)

    monkeypatch.setattr(loop, "Display", Recording)
    out = tmp_path / "run"
    code, printed, _ = run_cli([*TINY, "--max-steps", "3", "--log-every", "1", "--out", out], capsys)
    assert code == 0 and "at step 3 (epoch 1)" in printed and "nan" not in printed
    summary = _summary(out)
    assert summary["status"] == "stopped" and summary["evaluated_at_step"] == 3
    assert 0 <= summary["test_accuracy"] <= 1 and summary["test_loss"] > 0
    hint = printed.split("continue to the end with: ")[1].split(" (")[0].split()
    assert hint[:3] == ["jaxbp", "train", "--resume"]
    assert run_cli([*hint[1:], "--quiet"], capsys)[0] == 0
    assert _summary(out)["status"] == "completed" and _summary(out)["steps"] == STEPS
    assert totals == [(3, 0), (STEPS, 3)]  # the bar counts the steps the run really takes
    # ... and the continued run is the uninterrupted one
    assert run_cli([*TINY, "--log-every", "1", "--out", tmp_path / "whole"], capsys)[0] == 0
    assert _timeless(_strict_records(out)) == _timeless(_strict_records(tmp_path / "whole"))
    code, _, err = run_cli(["train", "--resume", out, "--max-steps", "3", "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(err, "--max-steps is 3 but the checkpoint is at step 23 already")


def test_a_completed_run_says_so_and_extends_with_epochs_on_a_rebuilt_schedule(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--out", out], capsys)[0] == 0
    done = _files(out)
    code, printed, err = run_cli(["train", "--resume", out, "--quiet"], capsys)
    assert (code, err) == (0, "")
    assert printed == f"{out}: already completed 1 of 1 epochs; nothing to do (pass --epochs N to extend)\n"
    assert _files(out) == done  # nothing written
    code, _, err = run_cli(["train", "--resume", out, "--epochs", "1", "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(err, "--epochs is 1, but the run has completed 1 of its 1 epochs already")
    assert _files(out) == done
    code, _, err = run_cli(["train", "--resume", out, "--epochs", "2", "--quiet"], capsys)
    assert code == 0, err
    assert "note: " in err and "from 1 to 2 epochs" in err and "cosine schedule is rebuilt" in err
    summary = _summary(out)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2 and summary["steps"] == 2 * STEPS
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    extension = {"step": STEPS, "from_epochs": 1, "to_epochs": 2}
    assert summary["extensions"] == [extension]
    recs = _strict_records(out)
    (extended,) = [r for r in recs if r["kind"] == "extended"]
    assert {k: extended[k] for k in extension} == extension and 0 < extended["learning_rate"] < 3e-3
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    assert evals[1]["test_loss"] != evals[0]["test_loss"]  # the extension trains (the old schedule ended at 0)
    code, _, err = run_cli(["train", "--resume", out, "--epochs", "2", "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(err, "--epochs is 2, but the run has completed 2 of its 2 epochs already")


def test_epochs_on_resume_extends_a_stopped_run_and_never_shortens_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*TINY[:4], "2", "--quiet", "--max-steps", "30", "--out", out], capsys)[0] == 0
    code, _, err = run_cli(["train", "--resume", out, "--epochs", "1", "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(err, "--epochs is 1, but the run has completed 1 of its 2 epochs already")
    code, printed, err = run_cli(["train", "--resume", out, "--epochs", "3", "--max-steps", "40", "--quiet"], capsys)
    assert code == 0, err
    assert "continue to the end with: jaxbp train --resume" in printed
    assert _summary(out)["extensions"] == [{"step": 30, "from_epochs": 2, "to_epochs": 3}]
    code, _, err = run_cli(["train", "--resume", out, "--epochs", "2", "--quiet"], capsys)
    assert code == 2
    assert_one_line_error(err, "--epochs is 2, fewer than the run's 3 epochs", "--max-steps")
    assert run_cli(["train", "--resume", out, "--quiet"], capsys)[0] == 0
    assert _summary(out)["steps"] == 3 * STEPS and _summary(out)["extensions"][0]["to_epochs"] == 3


def test_a_run_names_its_folder_and_the_compile_at_the_start_and_the_next_commands_at_the_end(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, printed, err = run_cli([a for a in TINY if a != "--quiet"], capsys)  # log lines: stderr is no terminal
    assert code == 0, err
    assert err.splitlines()[:2] == ["run folder: runs/digits-mlp-manual", "compiling the train step (the first step)"]
    plot, extend = [line.removeprefix("next:").strip() for line in printed.splitlines()[-2:]]
    assert plot == "jaxbp plot runs/digits-mlp-manual --out runs/digits-mlp-manual.png " + (
        "(add other run folders to overlay their curves)"
    )
    assert extend == f"jaxbp train --resume {tmp_path}/runs/digits-mlp-manual --epochs N (N > 1: train on to N epochs)"
    code, _, err = run_cli(shlex.split(plot.split(" (")[0])[1:], capsys)
    assert code == 0 and (tmp_path / "runs" / "digits-mlp-manual.png").exists(), err


def test_a_torn_metrics_tail_is_cut_back_with_a_note_not_fatal(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--max-steps", "4", "--log-every", "1", "--out", out], capsys)[0] == 0
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "step": 5, "lo' + b"\0" * 512)
    code, _, err = run_cli(["train", "--resume", out, "--quiet"], capsys)
    assert code == 0 and "note: " in err and "torn or corrupt tail" in err and "metrics.jsonl" in err
    steps = [r["step"] for r in _strict_records(out) if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1))


# ------------------------------------------------------------------ non-finite values


def test_a_nan_test_loss_stops_with_the_last_good_checkpoint_and_a_summary(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    two = [*TINY[:4], "2", "--quiet", "--out", out]  # two epochs: the first ends clean, with a checkpoint
    assert run_cli([*two, "--max-steps", str(STEPS)], capsys)[0] == 0
    good = (out / "checkpoint.npz").read_bytes()
    ds = data.load("digits")
    x_test = np.array(ds.x_test)
    x_test[0, 0, 0, 0] = np.inf  # an input the parameters turn into a NaN logit: test loss NaN, train finite
    monkeypatch.setattr(data, "load", lambda *a, **k: dataclasses.replace(ds, x_test=x_test))
    code, _, err = run_cli(["train", "--resume", out, "--quiet"], capsys)
    assert code == 1 and "Traceback" not in err
    assert "NonFiniteLossError: test loss is nan at step 46 (epoch 2)" in err and "checkpoint is kept" in err
    recs = _strict_records(out)  # strict JSON lines: no NaN token
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [STEPS]
    assert (out / "checkpoint.npz").read_bytes() == good
    summary = _summary(out)
    assert summary["status"] == "diverged" and "test loss is nan" in summary["error"]


BAD_FLAGS = [
    (["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    (["--compare-rtol", "nan"], "--compare-rtol must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--momentum", "-5"], "--momentum must be in [0, 1), got -5.0"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    (["--label-smoothing", "nan"], "--label-smoothing must be a finite number"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--max-steps", "-1"], "--max-steps must be an integer >= 0, got -1"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--batch-size", "100000000"], "--batch-size is 100000000, more than the 1437 training examples of digits"),
    (["--augment", "crop", "--shift", "1000"], "--shift is 1000; it must be smaller than the 8x8 images of digits"),
    (["--devices", "0"], "--devices must be 'all' or a count >= 1"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_values_name_the_flag_and_write_nothing(tmp_path, capsys, flags, message):
    code, _, err = run_cli([*TINY, *flags, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_line_error(err, f"jaxbp train: error: {message}")
    assert not (tmp_path / "run").exists()


def _idx(folder, stem, arr):
    header = struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    (folder / f"{stem}.gz").write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_images_too_small_for_the_model_are_a_flag_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JAXBP_DATA", raising=False)
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        _idx(tmp_path, f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 1, 1)))
        _idx(tmp_path, f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    argv = ["train", "--dataset", "mnist", "--data-dir", tmp_path, "--batch-size", "8", "--quiet"]
    code, _, err = run_cli([*argv, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert_one_line_error(err, "--model is 'cnn', which cannot take the 1x1x1 images of mnist")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_with_a_malformed_extra_or_a_negative_step_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli([*TINY, "--max-steps", "3", "--out", out], capsys)[0] == 0
    state, meta = checkpoint.load(out / "checkpoint.npz")
    for step, extra, problem in ((3, {"history": 5}, "run state (extra) is malformed"),
                                 (3, {"window": {"bogus": 1}}, "run state (extra) is malformed"),
                                 (-1, meta["extra"], "metadata step is -1, not an integer >= 0")):  # fmt: skip
        checkpoint.save(out / "checkpoint.npz", state, step=step, epoch=0, config=meta["config"], extra=extra)
        code, _, err = run_cli(["train", "--resume", out, "--quiet"], capsys)
        assert code == 2
        assert_one_line_error(err, f"{out / 'checkpoint.npz'}: ", problem)


# ------------------------------------------------------------------ file-system faults


def test_out_that_is_a_file_or_under_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    for out, problem in ((tmp_path / "f", "exists and is not a folder"), (tmp_path / "f" / "sub", "is a file")):
        code, _, err = run_cli([*TINY, "--out", out], capsys)
        assert code == 2
        assert_one_line_error(err, str(out), problem)
    assert (tmp_path / "f").read_text() == "x"


def test_disk_full_exits_2_naming_the_file_and_leaves_valid_files(tmp_path, capsys):
    from test_runfolder import tmpfs

    with tmpfs(tmp_path / "small", size="128k"):  # room for the small files, not for the checkpoint
        out = tmp_path / "small" / "run"
        code, _, err = run_cli([*TINY, "--max-steps", "3", "--log-every", "1", "--out", out], capsys)
        assert code == 2
        assert_one_line_error(err, f"{out / 'checkpoint.npz'}: cannot write: No space left on device")
        assert [r["step"] for r in _strict_records(out)] == [1, 2, 3]
        summary = _summary(out)
        assert summary["status"] == "failed" and "No space left" in summary["error"]
        assert sorted(p.name for p in out.iterdir()) == [".jaxbp.lock", "config.json", "metrics.jsonl", "summary.json"]


def test_read_only_folders_exit_2_before_any_work(tmp_path, capsys):
    from test_runfolder import remount_read_only, tmpfs

    with tmpfs(tmp_path / "disk", size="1m"):
        out = tmp_path / "disk" / "run"
        assert run_cli([*TINY, "--max-steps", "3", "--out", out], capsys)[0] == 0
        remount_read_only(tmp_path / "disk")
        before = _files(out)
        for argv in ([*TINY, "--out", tmp_path / "disk" / "new"], ["train", "--resume", out, "--quiet"]):
            code, _, err = run_cli(argv, capsys)
            assert code == 2
            assert_one_line_error(err, "cannot write: Read-only file system")
        assert _files(out) == before


# ------------------------------------------------------------------ several processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_distributed_settings_fail_fast(capsys, monkeypatch):
    monkeypatch.setenv("JAXBP_NUM_PROCESSES", "abc")
    code, _, err = run_cli(TINY, capsys)
    assert code == 2
    assert_one_line_error(err, "JAXBP_NUM_PROCESSES='abc' is not an integer")
    monkeypatch.delenv("JAXBP_NUM_PROCESSES")
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    argv = [*TINY, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1"]
    code, _, err = run_cli([*argv, "--coordinator-timeout", "1"], capsys)
    assert code == 2 and time.monotonic() - t0 < 10
    assert_one_line_error(err, f"the coordinator 127.0.0.1:{port} did not answer within 1 s")


# ------------------------------------------------------------------ a real process: lock and SIGTERM


def test_a_running_train_holds_its_folder_and_stops_on_sigterm_with_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXBP_")}
    argv = [sys.executable, "-m", "jaxbp.cli", *TINY[:4], "100000", "--log-every", "1", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        for extra in ([], ["--overwrite"]):
            code, _, err = run_cli([*TINY, "--out", out, *extra], capsys)
            assert code == 2
            assert_one_line_error(err, "another jaxbp run is writing to this folder")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "SIGTERM received" in stderr and f"jaxbp train --resume {out}" in stderr and "Traceback" not in stderr
    summary = _summary(out)
    _, meta = checkpoint.load(out / "checkpoint.npz")
    assert summary["status"] == "interrupted" and meta["step"] == summary["steps"] > 0
    assert _strict_records(out)[-1]["step"] == meta["step"]


# ------------------------------------------------------------------ bench and devices


def test_bench_and_devices_check_their_flags_and_outputs_before_running(tmp_path, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the run started")

    monkeypatch.setattr(bench, "bench_train_step", never)
    monkeypatch.setattr(devices, "check_device", never)
    for argv, message in (
        (["bench", "--input-shape", "1,1,1"], "jaxbp bench: error: --input-shape 1,1,1: model cnn cannot take it"),
        (["bench", "--json", tmp_path], f"jaxbp bench: error: --json {tmp_path}: is a folder"),
        (["devices", "--json", tmp_path], f"jaxbp devices: error: --json {tmp_path}: is a folder"),
        (
            ["devices", "--write-golden", "--golden", tmp_path],
            f"jaxbp devices: error: --golden {tmp_path}: is a folder",
        ),
        (["devices", "--train-steps", "1000"], "--train-steps 1000: the golden run holds only 20 steps"),
        (["bench", "--model", "vgg"], "jaxbp bench: error: --model: unknown model 'vgg'"),
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 2, argv
        assert_one_line_error(err, message)
    if not any(d.platform == "gpu" for d in devices.list_devices()):
        code, _, err = run_cli(["devices", "--backend", "gpu"], capsys)
        assert code == 2
        assert_one_line_error(err, "--backend gpu: JAX sees no such device here (backends: cpu)")
    for argv in (["bench", "--warmup", "-3"],):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_running_the_same_command_twice_without_out_gives_two_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a for a in TINY if a != "--quiet"] + ["--quiet", "--max-steps", "2"]
    assert run_cli(argv, capsys)[0] == 0
    first = _files(tmp_path / "runs" / "digits-mlp-manual")
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and "runs/digits-mlp-manual-2" in out, out
    assert _files(tmp_path / "runs" / "digits-mlp-manual") == first  # the first run untouched
    assert (tmp_path / "runs" / "digits-mlp-manual-2" / "summary.json").exists()
