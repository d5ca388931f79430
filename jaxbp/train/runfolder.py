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
  torn or NUL-padded tail (a crash mid-write) is cut back to the last complete record,
  with a note, not an error.
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

from jaxbp import checkpoint, models
from jaxbp.files import InputError, OutputError, atomic_write_text, describe_os_error

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a concurrent run is not detected there
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RUN_FILES", "RunFolder", "RunFolderError", "kept_metrics"]

LOCK_NAME = ".jaxbp.lock"
RUN_FILES = {
    "config": "config.json",
    "metrics": "metrics.jsonl",
    "summary": "summary.json",
    "plot": "training.png",
    "checkpoint": checkpoint.CHECKPOINT_NAME,
}


class RunFolderError(OutputError):
    """The run folder cannot be used: it holds a run, is locked by another, or cannot be written."""


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES.values())


class RunFolder:
    """The files of one run in ``path``; use :meth:`open` (a context manager closes it)."""

    def __init__(self, path: Path, *, primary: bool = True):
        self.path = Path(path)
        self.primary = primary
        self.paths = {key: self.path / name for key, name in RUN_FILES.items()}
        self.notes: list[str] = []  # what resuming repaired, for the caller to show
        self._lock: int | None = None
        self._metrics: Any = None

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
        try:
            folder._take(overwrite=overwrite, resume=None if resume is None else Path(resume))
            source = None if resume is None else Path(resume) / RUN_FILES["metrics"]
            folder._start_metrics(source, resume_step)
        except BaseException:
            folder.close()
            raise
        return folder

    def _take(self, *, overwrite: bool, resume: Path | None) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{path}: exists and is not a folder; choose another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RunFolderError(f"{path}: a parent of it is a file, not a folder; choose another --out") from None
        except OSError as err:
            raise RunFolderError(describe_os_error(err, path)) from None
        self._lock = self._acquire(path)
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
        try:
            path.mkdir()
            self._lock = self._acquire(path)
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
    def _acquire(path: Path) -> int:
        lock_path = path / LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
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
        text = ""
        if source is not None:
            text, notes = kept_metrics(source, step)
            self.notes += notes
        if source is None or not _same(source, dest) or self.notes:
            atomic_write_text(dest, text)
        try:
            self._metrics = open(dest, "ab", buffering=0)  # noqa: SIM115 (closed by close())
        except OSError as err:
            raise RunFolderError(describe_os_error(err, dest)) from None

    # ---------------------------------------------------------------- writing

    def write_json(self, key: str, obj: Any) -> None:
        """``config.json`` or ``summary.json``, atomically, strict JSON."""
        if self.primary:
            atomic_write_text(self.paths[key], json.dumps(obj, indent=2, allow_nan=False) + "\n")

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


def kept_metrics(path: Path, step: int) -> tuple[str, list[str]]:
    """The records of ``metrics.jsonl`` at ``path`` that a run resumed at ``step`` keeps,
    as text, and notes on what was dropped: the records after ``step`` (written after the
    checkpoint), and a torn, corrupt or NUL-padded tail, cut back to the last complete
    record."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "", [f"{path}: not found; the resumed run starts a new one"]
    except OSError as err:
        raise RunFolderError(f"{path}: cannot read: {err.strerror}") from None
    kept: list[str] = []
    notes: list[str] = []
    offset = 0
    later = 0
    while offset < len(raw):
        end = raw.find(b"\n", offset)
        chunk = raw[offset : len(raw) if end < 0 else end]
        rec = _parse(chunk) if end >= 0 else None
        if rec is None:
            last = json.loads(kept[-1])["step"] if kept else 0
            notes.append(
                f"{path}: dropped a torn or corrupt tail of {len(raw) - offset} bytes after the last complete "
                f"record (step {last})"
            )
            break
        if rec["step"] > step:
            later += 1
        else:
            kept.append(chunk.decode("utf-8"))
        offset = end + 1
    if later:
        notes.append(f"{path}: dropped {later} records written after the checkpoint's step {step}")
    return "".join(line + "\n" for line in kept), notes


def _parse(chunk: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(chunk.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(rec, dict) or isinstance(rec.get("step"), bool) or not isinstance(rec.get("step"), int):
        return None
    return rec
