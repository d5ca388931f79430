"""RunFolder, the one writer of a run's files: refusal, --overwrite, the lock, resume
truncation of metrics.jsonl, and file-system faults (a tmpfs for disk full and read-only).

No JAX here: these run in milliseconds. The end-to-end cases through `jaxbp train` are in
test_cli_train.py.
"""

import contextlib
import json
import os
import re
import subprocess
import sys

import pytest

from jaxbp import files
from jaxbp.train.runfolder import LOCK_NAME, RunFolder, RunFolderError, kept_metrics


@contextlib.contextmanager
def tmpfs(path, size="64k", options=""):
    """A small tmpfs at ``path`` (root only: skips with the reason elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip() or proc.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_read_only(path):
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def _run(folder, step, lines=()):
    """A finished-looking run: the five files, metrics with records up to ``step``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "summary.json", "training.png", "checkpoint.npz"):
        (folder / name).write_text(f"{name} of the first run\n")
    recs = lines or [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, step + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != LOCK_NAME}


def test_a_new_run_into_a_run_is_refused_and_the_old_files_stay_byte_identical(tmp_path):
    before = _run(tmp_path / "a", 3)
    with pytest.raises(
        RunFolderError, match=r"already holds a run; continue it with `jaxbp train --resume .*--overwrite"
    ):
        RunFolder.open(tmp_path / "a")
    assert _snapshot(tmp_path / "a") == before
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # a folder of other files is never taken, not even with overwrite
        with pytest.raises(RunFolderError, match="is not empty .*notes.txt.* holds no jaxbp run"):
            RunFolder.open(tmp_path / "b", overwrite=overwrite)
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"
    with RunFolder.open(tmp_path / "c") as folder:  # missing or empty: taken
        folder.record({"kind": "train", "step": 1})
    assert (tmp_path / "c" / "metrics.jsonl").read_text() == '{"kind": "train", "step": 1}\n'


def test_overwrite_replaces_the_old_run_completely(tmp_path):
    _run(tmp_path / "a", 3)
    with RunFolder.open(tmp_path / "a", overwrite=True) as folder:
        assert _snapshot(tmp_path / "a") == {"metrics.jsonl": b""}  # nothing of the old run is left
        folder.write_json("config", {"new": True})
    assert sorted(_snapshot(tmp_path / "a")) == ["config.json", "metrics.jsonl"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # the old run, moved aside, is gone


def test_the_lock_refuses_a_second_writer_at_once_and_is_released(tmp_path):
    with RunFolder.open(tmp_path / "a"):
        for kwargs in ({}, {"overwrite": True}, {"resume": tmp_path / "a"}):
            with pytest.raises(RunFolderError, match=r"another jaxbp run is writing to this folder"):
                RunFolder.open(tmp_path / "a", **kwargs)
    RunFolder.open(tmp_path / "a", resume=tmp_path / "a").close()  # released on close
    # another process holding the lock (as a running `jaxbp train` does)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(tmp_path / "a" / LOCK_NAME)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match="another jaxbp run"):
            RunFolder.open(tmp_path / "a", resume=tmp_path / "a")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "tail, note",
    [
        (b'{"kind": "train", "st', "torn or corrupt tail of 21 bytes after the last complete record \\(step 4\\)"),
        (b"\0" * 4096, "torn or corrupt tail of 4096 bytes"),
        (b'{"kind": "train", "step": 5}\n{"kind": "train", "step": 6}\n', "dropped 2 records written after"),
    ],
)
def test_resume_cuts_metrics_back_to_the_checkpoints_step_with_a_note(tmp_path, tail, note):
    _run(tmp_path / "a", 4)
    good = (tmp_path / "a" / "metrics.jsonl").read_bytes()
    with open(tmp_path / "a" / "metrics.jsonl", "ab") as f:
        f.write(tail)
    with RunFolder.open(tmp_path / "a", resume=tmp_path / "a", resume_step=4) as folder:
        assert len(folder.notes) == 1 and folder.notes[0].startswith(str(tmp_path / "a" / "metrics.jsonl"))
        assert re.search(note, folder.notes[0]), folder.notes
        folder.record({"kind": "train", "step": 5})
    text = (tmp_path / "a" / "metrics.jsonl").read_bytes()
    assert text == good + b'{"kind": "train", "step": 5}\n'
    assert [json.loads(line)["step"] for line in text.decode().splitlines()] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "middle, problem",
    [
        (b"not json", "line 3: is not valid JSON"),
        (b'{"step": 2.5}', "line 3: the record has no integer step"),
        (b"[1, 2]", "line 3: is a JSON list, not a record"),
        (b'{"step": NaN}', "line 3: is not valid JSON \\(NaN is not strict JSON\\)"),
        (b'{"step": 3, "step": 4}', "line 3: is not valid JSON \\(the key 'step' appears twice\\)"),
        (b"\xff\xfe", "line 3: is not UTF-8 text"),
        (b"\0" * 8, "line 3: is not valid JSON"),
    ],
    ids=["not-json", "float-step", "list", "nan", "duplicate-key", "not-utf8", "nul"],
)
def test_kept_metrics_refuses_a_bad_line_before_good_ones_naming_it(tmp_path, middle, problem):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2}\n' + middle + b'\n{"step": 3}\n')
    with pytest.raises(RunFolderError, match=f"cannot resume: {path}: {problem}") as info:
        kept_metrics(path, 10)
    assert "\n" not in str(info.value)
    if b"2.5" in middle:  # a record, if not a good one: no torn write
        return
    path.write_bytes(b'{"step": 1}\n{"step": 2}\n' + middle + b"\n\n")  # the same line last: a torn write
    text, notes = kept_metrics(path, 10)
    assert text == '{"step": 1}\n{"step": 2}\n' and "torn or corrupt tail" in notes[0] and "line 3" in notes[0]
    assert kept_metrics(tmp_path / "missing.jsonl", 3)[0] == ""


def test_kept_metrics_refuses_eval_records_that_are_not_the_checkpoints_history(tmp_path):
    path = tmp_path / "metrics.jsonl"
    evals = [{"kind": "eval", "step": 2, "epoch": 1, "test_loss": 0.5}, {"kind": "eval", "step": 4, "epoch": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in evals))
    assert kept_metrics(path, 4, evals)[0] == path.read_text()
    other = [evals[0], {**evals[1], "test_loss": 0.25}]
    with pytest.raises(RunFolderError, match=r"epoch 2 differs from the checkpoint's history; .* different runs"):
        kept_metrics(path, 4, other)
    with pytest.raises(RunFolderError, match=r"epoch 2 differs"):
        kept_metrics(path, 4, evals[:1] + evals[:1])


def test_resume_into_another_folder_copies_the_kept_records_and_leaves_the_source(tmp_path):
    before = _run(tmp_path / "a", 4)
    with RunFolder.open(tmp_path / "b", resume=tmp_path / "a", resume_step=2) as folder:
        folder.record({"kind": "train", "step": 3})
    assert _snapshot(tmp_path / "a") == before
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_records_are_strict_json(tmp_path):
    with RunFolder.open(tmp_path / "a") as folder, pytest.raises(ValueError, match="JSON compliant"):
        folder.record({"kind": "eval", "step": 1, "test_loss": float("nan")})
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == b""


def test_the_other_processes_write_nothing(tmp_path):
    with RunFolder.open(tmp_path / "a", primary=False) as folder:
        folder.record({"kind": "train", "step": 1})
        folder.write_json("summary", {"status": "completed"})
    assert not (tmp_path / "a").exists()


def test_out_that_is_a_file_or_under_a_file_is_one_error_naming_it(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match=r"/f: exists and is not a folder"):
        RunFolder.open(tmp_path / "f")
    with pytest.raises(RunFolderError, match=r"/f/sub: a parent of it is a file"):
        RunFolder.open(tmp_path / "f" / "sub")
    assert (tmp_path / "f").read_text() == "x"


def test_disk_full_drops_the_partial_record_and_names_the_file(tmp_path):
    with tmpfs(tmp_path / "small", size="8k"):
        with RunFolder.open(tmp_path / "small" / "run") as folder:
            with pytest.raises(
                RunFolderError, match=r"metrics.jsonl: cannot write: No space left on device \(the disk is full\)"
            ):
                for step in range(1, 10_000):
                    folder.record({"kind": "train", "step": step, "pad": "x" * 100})
        lines = (tmp_path / "small" / "run" / "metrics.jsonl").read_text().splitlines()
        assert lines and [json.loads(line)["step"] for line in lines] == list(range(1, len(lines) + 1))
        with pytest.raises(files.OutputError, match=r"summary.json: cannot write: No space left"):
            RunFolder(tmp_path / "small" / "run").write_json("summary", {"pad": "x" * 10_000})
        assert not [p for p in (tmp_path / "small" / "run").iterdir() if p.name.endswith(".tmp")]


def test_read_only_folders_are_one_error_naming_the_path(tmp_path):
    with tmpfs(tmp_path / "ro", size="64k"):
        before = _run(tmp_path / "ro" / "old", 2)
        remount_read_only(tmp_path / "ro")
        with pytest.raises(RunFolderError, match=r"/ro/new: cannot write: Read-only file system"):
            RunFolder.open(tmp_path / "ro" / "new")
        with pytest.raises(RunFolderError, match=r"/ro/old: cannot write: Read-only file system"):
            RunFolder.open(tmp_path / "ro" / "old", resume=tmp_path / "ro" / "old", resume_step=2)
        assert _snapshot(tmp_path / "ro" / "old") == before
        with pytest.raises(files.OutputError, match=r"--json .*/ro/x.json: cannot write: Read-only file system"):
            files.check_output_file(tmp_path / "ro" / "x.json", "--json")


def test_check_output_file_refuses_a_folder_and_a_file_as_parent(tmp_path):
    with pytest.raises(files.OutputError, match="--json .*: is a folder; give a file name"):
        files.check_output_file(tmp_path, "--json")
    (tmp_path / "f").write_text("x")
    with pytest.raises(files.OutputError, match="--plot .*f/x.png: .*f exists and is not a folder"):
        files.check_output_file(tmp_path / "f" / "x.png", "--plot")
    assert files.check_output_file(tmp_path / "new" / "r.json", "--json") == tmp_path / "new" / "r.json"
    assert not (tmp_path / "new" / "r.json").exists() and os.listdir(tmp_path / "new") == []


def test_a_refused_open_leaves_the_folder_as_it_was(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    copied = tmp_path / "copied"
    before = _run(copied, 2)  # a run folder copied without its lock
    for folder, problem in ((mine, "holds no jaxbp run"), (copied, "already holds a run")):
        with pytest.raises(RunFolderError, match=problem):
            RunFolder.open(folder)
        assert not (folder / LOCK_NAME).exists()
    assert sorted(os.listdir(mine)) == ["notes.txt"] and _snapshot(copied) == before
    (copied / "metrics.jsonl").write_text('{"step": 1}\nbad\n{"step": 2}\n')  # refused after the lock was taken
    with pytest.raises(RunFolderError, match="line 2"):
        RunFolder.open(tmp_path / "fork", resume=copied, resume_step=2)
    assert not (tmp_path / "fork").exists() and not (copied / LOCK_NAME).exists()


def test_resuming_a_run_whose_summary_says_running_notes_that_it_was_killed(tmp_path):
    _run(tmp_path / "a", 2)
    (tmp_path / "a" / "summary.json").write_text('{"status": "running"}\n')
    with RunFolder.open(tmp_path / "a", resume=tmp_path / "a", resume_step=2) as folder:
        assert folder.notes == [
            f'{tmp_path / "a"}: the run there was killed (its summary.json says "running" but no process held '
            f"{LOCK_NAME}); it resumes from its checkpoint at step 2"
        ]
        assert files.lock_is_held(tmp_path / "a")  # held by this open: a plot would not call it killed
        assert not files.killed_run(tmp_path / "a")
    assert files.killed_run(tmp_path / "a")
