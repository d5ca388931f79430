"""SIGINT and SIGTERM, however they arrive, stop a run at the next step boundary with a
checkpoint, an ``interrupted`` summary, exit status 130 and no traceback (train/stopping.py).

Real processes get two signals 20 ms apart once a step record is in ``metrics.jsonl``; in
this process, signals are sent from exactly the places that used to lose a run: inside the
checkpoint and summary writes, and inside a garbage-collection callback (where Python
swallows a ``KeyboardInterrupt``, as it does in XLA's ``_xla_gc_callback``). Two processes:
``tests/test_parallel.py``.
"""

import dataclasses
import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from jaxbp import checkpoint, cli, data, train

CONFIG = train.TrainConfig(dataset="digits", model="mlp", epochs=3, batch_size=64, log_every=1)
STEPS_PER_EPOCH = 23  # 1437 digits in batches of 64
CLI_RUN = ["train", "--model", "mlp", "--epochs", "1000", "--log-every", "1", "--quiet"]


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _stopped_cleanly(out) -> int:
    """The folder of an interrupted run: summary, a loadable checkpoint and metrics that end at
    the same step. Returns the step."""
    summary = json.loads((out / "summary.json").read_text())
    _, meta = checkpoint.load(out / "checkpoint.npz")
    assert summary["status"] == "interrupted" and meta["step"] == summary["steps"] > 0, (summary["status"], meta)
    assert _records(out)[-1]["step"] == meta["step"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no torn write left behind
    return meta["step"]


def _resume_continues(out, step: int) -> None:
    result = train.fit(train.resume_config(out, max_steps=step + 2), progress=False)
    assert result.status == "stopped" and result.steps == step + 2
    assert [r["step"] for r in _records(out) if r["kind"] == "train"] == list(range(1, step + 3))


# ------------------------------------------------------------------ a real process, real signals


def _train_and_signal(out, signums):
    """``jaxbp train`` in a subprocess; once a step is recorded, ``signums`` 20 ms apart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXBP_")}
    argv = [sys.executable, "-m", "jaxbp.cli", *CLI_RUN, "--out", str(out)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        for signum in signums:
            proc.send_signal(signum)
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_two_signals_20ms_apart_stop_with_a_checkpoint_and_status_130(tmp_path, capsys, second):
    out = tmp_path / "run"
    code, stderr = _train_and_signal(out, [signal.SIGINT, getattr(signal, second)])
    assert code == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.startswith("jaxbp train: SIGINT received: stopped after step") and stderr.count("\n") == 1, stderr
    step = _stopped_cleanly(out)
    assert cli.main(["train", "--resume", str(out), "--max-steps", str(step + 2), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "stopped"
    assert [r["step"] for r in _records(out) if r["kind"] == "train"] == list(range(1, step + 3))
    capsys.readouterr()


# ------------------------------------------------------------------ in this process, from the worst places


@pytest.fixture
def handlers():
    """The SIGINT and SIGTERM handlers before the test, put back after it."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield before
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])


@dataclasses.dataclass
class BeforeStep:
    """Calls ``action`` just before step ``step`` (1-based), from the run's augmenter, which
    the loop asks for every batch before its step."""

    step: int
    action: Callable[[], None]

    def install(self, monkeypatch):
        make = data.batch_augmenter
        monkeypatch.setattr(data, "batch_augmenter", lambda config, ds: self.wrap(make(config, ds)))

    def wrap(self, augment):
        def wrapped(x, epoch, batch_index):
            if epoch * STEPS_PER_EPOCH + batch_index + 1 == self.step:
                self.action()
            return augment(x, epoch, batch_index)

        return wrapped


def _while_loading(monkeypatch, action):
    """Calls ``action`` as the data set loads, before the run starts."""
    load = data.load

    def loading(*args, **kwargs):
        action()
        return load(*args, **kwargs)

    monkeypatch.setattr(data, "load", loading)


@dataclasses.dataclass
class SignalStorm:
    """SIGINT before a step, then SIGINT and SIGTERM around every fsync: inside the
    checkpoint write (between the temporary file and its rename), the summary and the
    metrics writes, however often they come."""

    fsync: Callable[[int], None]
    sent: int = 0

    def kill(self, signum=signal.SIGINT):
        self.sent += 1
        os.kill(os.getpid(), signum)

    def fsync_(self, fd):
        if self.sent:
            self.kill(signal.SIGINT)
        self.fsync(fd)
        if self.sent:
            self.kill(signal.SIGTERM)


def test_signals_inside_the_checkpoint_and_summary_writes_change_nothing(tmp_path, monkeypatch, handlers):
    storm = SignalStorm(os.fsync)
    BeforeStep(5, storm.kill).install(monkeypatch)
    monkeypatch.setattr(os, "fsync", storm.fsync_)
    out = tmp_path / "run"
    with pytest.raises(train.TrainingInterrupted, match=r"^SIGINT received: stopped after step 5 \(epoch 1, batch 5\)"):
        train.fit(dataclasses.replace(CONFIG, out=str(out)), progress=False)
    assert storm.sent > 5  # the checkpoint, the summary: each with signals inside
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back
    monkeypatch.undo()
    assert _stopped_cleanly(out) == 5
    _resume_continues(out, 5)


@dataclasses.dataclass
class SignalInGc:
    """A garbage-collection callback that sends a signal once, from inside itself: the
    handler runs there, and whatever it raises Python swallows ("Exception ignored in"),
    as in XLA's ``_xla_gc_callback``."""

    signum: int
    sent: bool = False

    def __call__(self, phase, info):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def collect(self):
        gc.callbacks.append(self)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(self)


@pytest.mark.parametrize("where", ["while loading", "before step 4"])
def test_a_signal_inside_a_gc_callback_still_stops_the_run(tmp_path, monkeypatch, capsys, handlers, where):
    in_gc = SignalInGc(signal.SIGINT)
    if where == "before step 4":
        BeforeStep(4, in_gc.collect).install(monkeypatch)
    else:  # Python's KeyboardInterrupt would be raised there, and swallowed
        _while_loading(monkeypatch, in_gc.collect)
    out = tmp_path / "run"
    step = 4 if where == "before step 4" else 1  # one swallowed before the run: at the first boundary
    with pytest.raises(train.TrainingInterrupted, match=rf"^SIGINT received: stopped after step {step} "):
        train.fit(dataclasses.replace(CONFIG, out=str(out)), progress=False)
    assert in_gc.sent and "Exception ignored" not in capsys.readouterr().err
    monkeypatch.undo()
    assert _stopped_cleanly(out) == step
    _resume_continues(out, step)


def test_a_signal_before_the_run_starts_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, handlers):
    _while_loading(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "mlp", "--quiet", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err == "jaxbp train: SIGTERM received before training started: stopped; nothing was written\n", err
    assert not out.exists()
    # the command ignores stop signals from its stop on, until it exits (the fixture puts them back)
    assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
