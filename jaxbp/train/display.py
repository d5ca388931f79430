"""What a user sees while a run trains: the progress display (a tqdm bar, log lines or a
callback). Stop signals are :mod:`jaxbp.train.stopping`'s."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Display", "format_record"]


class Display:
    """The progress display: tqdm on a TTY, log lines otherwise, a callback, or nothing."""

    def __init__(self, progress, total_steps: int, initial: int, desc: str):
        self.callback = progress if callable(progress) else None
        show = progress is None or progress is True
        self.bar = None
        self.lines = False
        if show and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
        elif show:
            self.lines = True

    def note(self, text: str) -> None:
        print(f"note: {text}", file=sys.stderr, flush=True)

    def _say(self, text: str) -> None:
        """A line above the bar, or a log line (nothing when the display is off or a callback)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.lines:
            print(text, file=sys.stderr, flush=True)

    def folder(self, path) -> None:
        """Name the run folder the run writes (at the start: where to look, what to resume)."""
        self._say(f"run folder: {path}")

    def compiling(self) -> None:
        """The first step compiles (seconds to minutes at 0 %): the bar says so until :meth:`compiled`."""
        if self.bar is not None:
            self.bar.set_postfix_str("compiling the train step")
        elif self.lines:
            print("compiling the train step (the first step)", file=sys.stderr, flush=True)

    def compiled(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("")

    def record(self, rec: dict[str, Any]) -> None:
        if self.callback:
            self.callback(rec)
        if self.lines:
            print(format_record(rec), file=sys.stderr, flush=True)
        elif self.bar is not None and rec["kind"] == "eval":
            self.bar.write(format_record(rec))

    def advance(self, n: int, rec: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if rec is not None:
                acc = {"acc": f"{rec['accuracy']:.3f}"} if "accuracy" in rec else {}
                self.bar.set_postfix(loss=f"{rec['loss']:.4f}", **acc)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_record(rec: dict[str, Any]) -> str:
    """One line of a train or eval record; the accuracies where the record has them (a model
    that reconstructs its input has none)."""

    def split(name: str, label: str) -> str:
        acc = f"  {label} acc {rec[f'{name}_accuracy']:.4f}" if f"{name}_accuracy" in rec else ""
        return f"{label} loss {rec[f'{name}_loss']:.4f}{acc}  " if f"{name}_loss" in rec else ""

    if rec["kind"] == "eval":
        return (
            f"epoch {rec['epoch']:3d}  step {rec['step']:6d}  {split('train', 'train')}{split('val', 'val')}"
            f"{split('test', 'test')}{rec['examples_per_s']:.0f} ex/s"
        )
    acc = f"acc {rec['accuracy']:.4f}  " if "accuracy" in rec else ""
    line = (
        f"epoch {rec['epoch']:3d}  step {rec['step']:6d}  loss {rec['loss']:.4f}  {acc}{rec['examples_per_s']:.0f} ex/s"
    )
    if "grad_max_rel_err" in rec:
        line += f"  grad rel err {rec['grad_max_rel_err']:.2e} ({rec['grad_worst_param']})"
    return line
