"""Run folders handed over by someone else, edited by hand, or left behind by a crash:
`jaxbp train --resume` and `jaxbp plot` refuse what they cannot use exactly (exit 2, one
line naming the file or the flag, no traceback) and leave every file as it was; a
checkpoint never chooses the code that runs.

One tiny run (mlp on digits, 3 of 23 steps) is trained once per module and copied into a
fresh folder per case; hostile edits are made as a forger would (the checkpoint re-saved,
so its checksum matches) or as an editor would (bytes changed, checksum left alone).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import zipfile

import numpy as np
import pytest

from jaxbp import checkpoint, cli
from tests.cli_helpers import run_cli

TINY = ["train", "--model", "mlp", "--epochs", "1", "--quiet"]
STEPS = 23  # 1437 digits in batches of 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _refused(code, err, *needles):
    """Exit 2 with exactly one line on stderr, no traceback, naming what it must."""
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("jaxbp "), err
    for needle in needles:
        assert str(needle) in err, (needle, err)


def _tree(folder):
    """Every file under ``folder`` (the lock too) with its bytes: the data invariant."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    assert cli.main([*map(str, TINY), "--max-steps", "3", "--log-every", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def done(base, tmp_path_factory):
    """The same run, resumed to its end: one epoch, with its eval record, for the plots."""
    out = shutil.copytree(base, tmp_path_factory.mktemp("done") / "run")
    assert cli.main(["train", "--resume", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def run(base, tmp_path):
    """A fresh copy of the stopped 3-step run."""
    return shutil.copytree(base, tmp_path / "run")


def _forge(run_dir, *, state=None, step=None, extra=None, **config):
    """Re-save the checkpoint with changes, as a forger would: its checksum matches."""
    path = run_dir / "checkpoint.npz"
    loaded, meta = checkpoint.load(path)
    checkpoint.save(
        path, loaded if state is None else state(loaded), step=meta["step"] if step is None else step,
        epoch=meta["epoch"], config={**meta["config"], **config}, extra=extra(meta["extra"]) if extra else meta["extra"],
    )  # fmt: skip


def _edit_metadata(run_dir, change):
    """Change the checkpoint's metadata bytes and nothing else, as an editor would."""
    path = run_dir / "checkpoint.npz"
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    name = checkpoint.META_KEY + ".npy"
    meta = json.loads(np.load(io.BytesIO(members[name])).tobytes())
    change(meta)
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    members[name] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for member, blob in members.items():
            zf.writestr(member, blob)


def _payload(tmp_path):
    """A module that leaves a marker when imported (and builds an mlp): ``(spec, marker)``."""
    marker = tmp_path / "payload-ran"
    module = tmp_path / "payload.py"
    module.write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "from jaxbp import models\n\n\n"
        "def make(num_classes):\n    return models.get_model('mlp', num_classes)\n"
    )
    return f"{module}:make", marker


# ------------------------------------------------------------------ a checkpoint never chooses the code


def test_a_model_edited_into_the_checkpoint_fails_the_checksum_and_never_runs(run, tmp_path, capsys):
    spec, marker = _payload(tmp_path)
    _edit_metadata(run, lambda meta: meta["config"].update(model=spec))
    before = _tree(run)
    code, _, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    _refused(code, err, f"{run / 'checkpoint.npz'}: checksum mismatch", "corrupted or edited")
    assert not marker.exists() and _tree(run) == before


def test_a_forged_checkpoint_that_disagrees_with_config_json_is_refused(run, tmp_path, capsys):
    spec, marker = _payload(tmp_path)
    _forge(run, model=spec)  # the checksum matches; config.json still says mlp
    before = _tree(run)
    code, _, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    _refused(code, err, run / "checkpoint.npz", f"differs from {run / 'config.json'}", "model: checkpoint", spec)
    assert not marker.exists() and _tree(run) == before


def test_a_user_module_only_the_files_name_is_never_imported_and_runs_once_named(run, tmp_path, capsys):
    spec, marker = _payload(tmp_path)
    _forge(run, model=spec)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": spec}))
    before = _tree(run)
    for argv in (["--quiet"], ["--model", "mlp", "--quiet"]):
        code, _, err = run_cli(["train", "--resume", run, *argv], capsys)
        _refused(code, err, run / "checkpoint.npz", f"the run's model is the user module {spec!r}", f"--model {spec}")
        assert not marker.exists() and _tree(run) == before
    # Named now, the same module is the user's choice: it runs (the marker proves the payload was live).
    code, _, err = run_cli(["train", "--resume", run, "--model", spec, "--quiet"], capsys)
    assert code == 0, err
    assert marker.read_text() == "imported"
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


# ------------------------------------------------------------------ what a checkpoint says is validated


def _nan_params(state):
    state["params"]["dense1"]["w"][0, 0] = np.nan
    return state


@pytest.mark.parametrize(
    "forge, message",
    [
        (dict(step=10**9), "the checkpoint's step 1000000000 is outside the run's 23 steps (1 epochs of 23)"),
        (dict(step=5), "the checkpoint's step 5 does not follow from its epoch 0 and batch 3"),
        (dict(state=_nan_params), "state['params']['dense1']['w'] holds NaN or infinite values"),
        (dict(extra=lambda e: {**e, "window": {**e["window"], "loss_sum": -1.0}}), "loss_sum is -1.0"),
        (dict(extra=lambda e: {**e, "epoch_acc": {"loss_sum": "0.5"}}), "loss_sum is '0.5', not a finite number"),
        (dict(extra=lambda e: {**e, "worst": "bad"}), "worst is 'bad', not the run's worst agreement"),
        (dict(extra=lambda e: {**e, "wall_time_s": "soon"}), "wall_time_s is 'soon'"),
    ],
    ids=["step-1e9", "step-vs-batch", "nan-parameter", "negative-sum", "string-sum", "worst", "wall-time-string"],
)  # fmt: skip
def test_a_forged_position_or_state_is_refused(run, capsys, forge, message):
    _forge(run, **forge)
    before = _tree(run)
    code, _, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    _refused(code, err, f"{run / 'checkpoint.npz'}: ", message)
    assert _tree(run) == before


def test_a_forged_history_that_the_metrics_do_not_hold_is_refused(run, capsys):
    record = {"kind": "eval", "step": 23, "epoch": 1, "test_accuracy": 1.0}
    _forge(run, extra=lambda e: {**e, "history": [record]})
    before = _tree(run)
    code, _, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    _refused(code, err, f"cannot resume: {run / 'metrics.jsonl'}: epoch 1 differs from the checkpoint's history")
    assert _tree(run) == before


def test_a_checkpoint_copied_from_another_run_is_refused(run, tmp_path, capsys):
    other = tmp_path / "other"
    assert run_cli([*TINY, "--max-steps", "3", "--seed", "1", "--out", other], capsys)[0] == 0
    shutil.copy(other / "checkpoint.npz", run / "checkpoint.npz")
    before = _tree(run)
    code, _, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    _refused(code, err, f"differs from {run / 'config.json'} (seed: checkpoint 1, config.json 0)", "not this folder's")
    assert _tree(run) == before


# ------------------------------------------------------------------ metrics.jsonl


def test_a_bad_middle_line_of_the_metrics_is_refused_naming_the_line(run, capsys):
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 3
    (run / "metrics.jsonl").write_text(lines[0] + '{"kind": "train", "step": 2, "loss": oops}\n' + lines[2])
    before = _tree(run)
    code, _, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    _refused(code, err, f"{run / 'metrics.jsonl'}: line 2: is not valid JSON", "records follow it")
    assert _tree(run) == before


def test_a_torn_last_line_is_dropped_with_a_note_and_the_run_continues(run, capsys):
    torn = b'{"kind": "train", "step": 4, "lo'  # kill -9 in the middle of a write
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(torn)
    code, _, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    assert code == 0 and "Traceback" not in err and err.startswith("note: ")
    assert f"torn or corrupt tail of {len(torn)} bytes after the last complete record (step 3), on line 4" in err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4] and steps[-1] == STEPS


# ------------------------------------------------------------------ kill -9


def test_a_killed_run_is_named_so_by_resume_and_plot(run, tmp_path, capsys):
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))  # what kill -9 leaves
    assert (run / ".jaxbp.lock").exists()  # ... with a lock file no process holds
    code, _, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    assert code == 0 and f"note: {run}: the run there was killed" in err and "at step 3" in err
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    code, out, err = run_cli(["plot", run, "--out", tmp_path / "c.png"], capsys)
    assert code == 0 and out == f"wrote {tmp_path / 'c.png'}\n"
    assert (
        err
        == f'jaxbp plot: note: {run}: the run was killed (its summary.json says "running" but no process holds its lock)\n'
    )


# ------------------------------------------------------------------ plot --out


@pytest.mark.parametrize("name", ["metrics.jsonl", "summary.json", "config.json", "checkpoint.npz", "training.png"])
def test_plot_never_writes_over_a_file_of_a_run(done, tmp_path, capsys, name):
    run = shutil.copytree(done, tmp_path / "run")
    (tmp_path / "link").symlink_to(run / name)  # a link to it is refused too
    before = _tree(tmp_path)
    for out in (run / name, tmp_path / "link"):
        code, _, err = run_cli(["plot", run, "--out", out], capsys)
        _refused(code, err, f"--out {out}: is {name} of the run in {run}", "refusing to overwrite a run's files")
        assert _tree(tmp_path) == before and (tmp_path / "link").is_symlink()


def _special(tmp_path, kind):
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "folder":
        path.mkdir()
    elif kind == "device":  # a twin of /dev/null: a real one would be lost to a bug
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("creating a device node needs root")
    else:
        path.write_text("my own notes, not a figure\n")
    return path


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("device", "is a character device, not a regular file; refusing to write there"),
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("socket", "is a socket, not a regular file"),
        ("folder", "is a folder; give a file name"),
        ("notes.txt", "exists and is not a figure (PNG, PDF or SVG); refusing to replace it"),
    ],
)
def test_plot_refuses_an_out_that_is_not_a_new_path_or_a_figure(done, tmp_path, capsys, kind, problem):
    out = _special(tmp_path, kind)
    mode = os.lstat(out).st_mode
    before = _tree(tmp_path)
    code, _, err = run_cli(["plot", done, "--out", out], capsys)
    _refused(code, err, f"jaxbp plot: error: --out {out}: {problem}")
    assert os.lstat(out).st_mode == mode and _tree(tmp_path) == before


def test_plot_replaces_a_previous_figure_atomically(done, tmp_path, capsys):
    out = tmp_path / "curves.png"
    for _ in range(2):  # the second replaces the first
        code, printed, _ = run_cli(["plot", done, "--out", out], capsys)
        assert code == 0 and printed == f"wrote {out}\n" and out.read_bytes().startswith(PNG_MAGIC)
    assert os.listdir(tmp_path) == ["curves.png"]  # no temp file beside it
    code, _, _ = run_cli(["plot", done, "--out", tmp_path / "curves.svg"], capsys)
    assert code == 0 and b"<svg" in (tmp_path / "curves.svg").read_bytes()[:1000]


def test_plot_names_mathtext_that_does_not_parse(done, tmp_path, capsys):
    for flag, value in (("--title", "$x^$"), ("--labels", r"$\foo$")):
        code, _, err = run_cli(["plot", done, "--out", tmp_path / "c.png", flag, value], capsys)
        _refused(code, err, f"jaxbp plot: error: {flag} {value!r}: matplotlib cannot draw it")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ a refused --out folder is left as it was


def test_a_refused_out_folder_gets_no_lock(base, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\documentclass{article}\n")
    copied = shutil.copytree(base, tmp_path / "copied", ignore=shutil.ignore_patterns(".jaxbp.lock"))
    before = _tree(tmp_path)
    for out, problem in ((mine, "holds no jaxbp run"), (copied, "already holds a run")):
        code, _, err = run_cli([*TINY, "--max-steps", "3", "--out", out], capsys)
        _refused(code, err, f"{out}: ", problem)
        assert not (out / ".jaxbp.lock").exists()
    assert _tree(tmp_path) == before
