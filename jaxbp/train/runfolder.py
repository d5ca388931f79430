"""The folder of a training run, and the one writer that owns every file in it.

A run folder holds ``config.json``, ``metrics.jsonl`` (strict JSON, one record a line),
``summary.json``, ``training.png``, ``checkpoint.npz`` and ``.jaxbp.lock``.
:class:`RunFolder` guarantees, in one place:

* **never clobbered**: a new run into a folder that holds a run is refused with
  :class:`RunFolderError` (exit 2 on the command line) saying how to resume or
  overwrite it; ``overwrite=True`` (``--overwrite``) first moves the old run aside with
  one atomic rename, then deletes it, so the folder holds the old run or the new one,
  never a mix. A folder holding other files than a run's is never touched.
* **one writer**: an exclusive ``flock`` on ``.jaxbp.lock``, held for the run's lifetime,
  makes a second run into the same folder (a new one, an overwrite or a resume) refuse
  at once.
* **atomic files**: ``config.json`` and ``summary.json`` are replaced atomically, the
  checkpoint by :func:`jaxbp.checkpoint.save`; a metrics record is appended whole or
  (disk full) truncated away again. Non-finite numbers are refused (strict JSON).
* **resume**: the records of ``metrics.jsonl`` up to the checkpoint's step are kept; a
  torn or NUL-padded last line (a crash mid-write) is left out with a note, but a bad line
  with records after it is an error naming the line (a valid record is never dropped
  unsaid). A run whose ``summary.json`` still says "running" was killed: a note says so.
* **a refusal leaves the folder as it was**: no ``.jaxbp.lock`` (nor a folder) is left
  behind by a refused open.
* **the primary-process rule**: only process 0 of a multi-process run writes; the
  others hold a folder object that writes nothing.

Every file-system fault (disk full, read-only, a file where a folder is wanted) is a
:class:`RunFolderError` naming the path.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from jaxbp import checkpoint, files, models
from jaxbp.files import LOCK_NAME, InputError, OutputError, atomic_write_text, describe_os_error

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a concurrent run is not detected there
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RUN_FILES", "RunFolder", "RunFolderError", "kept_metrics", "next_free_folder"]

RUN_FILES = {
    "config": "config.json",
    "metrics": "metrics.jsonl",
    "summary": "summary.json",
    "plot": "training.png",
    "checkpoint": checkpoint.CHECKPOINT_NAME,
}  # the names of files.RUN_FILE_NAMES, which refuses them as other commands' outputs


class RunFolderError(OutputError):
    """The run folder cannot be used: it holds a run, is locked by another, or cannot be written."""


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES.values())


def next_free_folder(base: Path) -> Path:
    """``base`` if it holds no run, else the first of ``base-2``, ``base-3``, ... that holds none:
    a second run without ``--out`` goes next to the first instead of being refused."""
    path, n = Path(base), 1
    while holds_run(path) or (path.exists() and not path.is_dir()):
        n += 1
        path = Path(f"{base}-{n}")
    return path


class RunFolder:
    """The files of one run in ``path``; use :meth:`open` (a context manager closes it)."""

    def __init__(self, path: Path, *, primary: bool = True):
        self.path = Path(path)
        self.primary = primary
        self.paths = {key: self.path / name for key, name in RUN_FILES.items()}
        self.notes: list[str] = []  # what resuming repaired, for the caller to show
        self._lock: int | None = None
        self._metrics: Any = None
        self._created: list[Path] = []  # the folder and lock file this open made: a refusal removes them

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        resume: str | os.PathLike | None = None,
        resume_step: int = 0,
        primary: bool = True,
    ) -> RunFolder:
        """Take ``path`` for a run: a new one, or one that continues the run folder ``resume``
        (in place when ``resume`` is ``path``) from its checkpoint at ``resume_step``.
        Refuses a folder that holds another run unless ``overwrite``."""
        folder = cls(Path(path), primary=primary)
        if not primary:
            return folder
        resume = None if resume is None else Path(resume)
        try:
            folder._take(overwrite=overwrite, resume=resume)
            if resume is not None and files.killed_run(resume, locked_here=_same(resume, folder.path)):
                folder.notes.append(
                    f'{resume}: the run there was killed (its summary.json says "running" but no process held '
                    f"{LOCK_NAME}); it resumes from its checkpoint at step {resume_step}"
                )
            folder._start_metrics(None if resume is None else resume / RUN_FILES["metrics"], resume_step)
        except BaseException:
            folder.close()
            folder._remove_created()
            raise
        folder._created = []
        return folder

    def _remove_created(self) -> None:
        """Undo what a refused open made: its lock file, then its folder (if left empty)."""
        for made in reversed(self._created):
            try:
                if made.is_dir():
                    made.rmdir()
                else:
                    made.unlink()
            except OSError:
                pass  # not empty, or gone already: leave it
        self._created = []

    def _take(self, *, overwrite: bool, resume: Path | None) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{path}: exists and is not a folder; choose another --out")
        try:
            if not path.is_dir():
                path.mkdir(parents=True)
                self._created.append(path)
        except (FileExistsError, NotADirectoryError):
            raise RunFolderError(f"{path}: a parent of it is a file, not a folder; choose another --out") from None
        except OSError as err:
            raise RunFolderError(describe_os_error(err, path)) from None
        self._lock = self._acquire(path, self._created)
        in_place = resume is not None and _same(resume, path)
        if in_place:
            return
        others = sorted(name for name in os.listdir(path) if name != LOCK_NAME)
        if not others:
            return
        if not holds_run(path):
            raise RunFolderError(
                f"{path}: is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) and holds "
                "no jaxbp run; choose another --out"
            )
        if not overwrite:
            raise RunFolderError(
                f"{path}: already holds a run; continue it with `jaxbp train --resume {path}`, "
                "replace it with --overwrite, or choose another --out"
            )
        self._replace_old_run()

    def _replace_old_run(self) -> None:
        """Move the old run aside with one rename (atomic), start the new folder, then delete it."""
        path = self.path
        aside = path.parent / f".{path.name}.replaced-{os.getpid()}"
        try:
            os.rename(path, aside)
        except OSError as err:
            raise RunFolderError(f"{path}: cannot move the old run aside to replace it: {err.strerror}") from None
        old_lock, self._lock = self._lock, None
        self._created = []  # the old run is gone: the new folder stays, whatever happens next
        try:
            path.mkdir()
            self._lock = self._acquire(path, [])
        except FileExistsError:
            raise RunFolderError(f"{path}: another run created it while the old run was being replaced") from None
        except OSError as err:
            raise RunFolderError(describe_os_error(err, path)) from None
        finally:
            if old_lock is not None:
                os.close(old_lock)
        shutil.rmtree(aside, ignore_errors=True)
        if aside.exists():
            self.notes.append(f"the replaced run could not be deleted completely; it is in {aside}")

    @staticmethod
    def _acquire(path: Path, created: list[Path]) -> int:
        """An exclusive ``flock`` on ``path``'s lock file; appends the lock file to ``created``
        if this call made it."""
        lock_path = path / LOCK_NAME
        try:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                created.append(lock_path)
            except FileExistsError:
                fd = os.open(lock_path, os.O_RDWR)
        except OSError as err:
            raise RunFolderError(describe_os_error(err, path)) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunFolderError(
                    f"{path}: another jaxbp run is writing to this folder (it holds {LOCK_NAME}); "
                    "wait for it to finish, or choose another --out"
                ) from None
        return fd

    def _start_metrics(self, source: Path | None, step: int) -> None:
        dest = self.paths["metrics"]
        text, notes = ("", []) if source is None else kept_metrics(source, step)
        self.notes += notes
        if source is None or not _same(source, dest) or notes:
            atomic_write_text(dest, text)
        try:
            self._metrics = open(dest, "ab", buffering=0)  # noqa: SIM115 (closed by close())
        except OSError as err:
            raise RunFolderError(describe_os_error(err, dest)) from None

    # ---------------------------------------------------------------- writing

    def write_json(self, key: str, obj: Any) -> None:
        """``config.json`` or ``summary.json``, atomically, strict JSON."""
        if self.primary:
            try:
                atomic_write_text(self.paths[key], json.dumps(obj, indent=2, allow_nan=False) + "\n")
            except OutputError as err:
                raise RunFolderError(str(err)) from None

    def record(self, rec: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl``: whole, or (on a write error) not at all."""
        if not self.primary or self._metrics is None:
            return
        line = (json.dumps(rec, allow_nan=False) + "\n").encode("utf-8")
        f = self._metrics
        start = f.seek(0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[f.write(view) :]
        except OSError as err:
            try:
                f.truncate(start)
            except OSError:
                pass
            raise RunFolderError(describe_os_error(err, self.paths["metrics"])) from None

    def save_checkpoint(self, state: Any, *, step: int, epoch: int, config: dict, extra: dict) -> Path:
        """Write the checkpoint atomically (process 0 only); the old one stays on any error."""
        path = self.paths["checkpoint"]
        if self.primary:
            try:
                checkpoint.save(path, state, step=step, epoch=epoch, config=config, extra=extra)
            except OutputError as err:
                raise RunFolderError(str(err)) from None
        return path

    def write_plot(self, config: Any) -> None:
        """``training.png``: the curves of ``metrics.jsonl`` (process 0 only)."""
        if not self.primary:
            return
        from jaxbp import curves

        label = "manual" if config.grad == "compare" else config.grad  # compare mode updates with the manual grads
        title = f"{config.dataset} / {models.short_name(config.model)} / {config.grad}"
        try:
            curves.plot_training({label: self.paths["metrics"]}, self.paths["plot"], title=title)
        except (InputError, OutputError) as err:
            raise RunFolderError(str(err)) from None

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def kept_metrics(path: Path, step: int, history: list[dict[str, Any]] | None = None) -> tuple[str, list[str]]:
    """The records of ``metrics.jsonl`` at ``path`` that a run resumed at ``step`` keeps, as
    text, and notes on what was left out: the records after ``step`` (written after the
    checkpoint) and a torn last line (:func:`jaxbp.files.read_json_lines`). A bad line with
    records after it, or a record without an integer ``step``, is a :class:`RunFolderError`
    naming the line: resuming would drop the records after it. With ``history`` (the
    checkpoint's eval records) the kept eval records must be exactly those: the file must
    belong to the checkpoint's run."""
    if not path.exists():
        return "", [f"{path}: not found; the resumed run starts a new one"]
    try:
        lines = files.read_json_lines(path)
    except InputError as err:
        raise RunFolderError(f"cannot resume: {err}") from None
    kept, later = [], 0
    for line in lines.records:
        if isinstance(line.record.get("step"), bool) or not isinstance(line.record.get("step"), int):
            raise RunFolderError(f"cannot resume: {path}: line {line.number}: the record has no integer step")
        if line.record["step"] > step:
            later += 1
        else:
            kept.append(line)
    if history is not None:
        _check_history(path, [line.record for line in kept if line.record.get("kind") == "eval"], history)
    notes = []
    if lines.torn_line is not None:
        last = f" (step {lines.records[-1].record['step']})" if lines.records else ""
        notes.append(
            f"{path}: dropped a torn or corrupt tail of {lines.torn_bytes} bytes after the last complete "
            f"record{last}, on line {lines.torn_line}"
        )
    if later:
        notes.append(f"{path}: dropped {later} records written after the checkpoint's step {step}")
    return "".join(line.text + "\n" for line in kept), notes


def _check_history(path: Path, evals: list[dict[str, Any]], history: list[dict[str, Any]]) -> None:
    for i in range(max(len(evals), len(history))):
        have = evals[i] if i < len(evals) else None
        want = history[i] if i < len(history) else None
        if have != want:
            where = f"epoch {i + 1}" if want is not None else f"an eval record at step {have['step']}"
            raise RunFolderError(
                f"cannot resume: {path}: {where} differs from the checkpoint's history; the metrics and "
                "the checkpoint are of different runs"
            )
