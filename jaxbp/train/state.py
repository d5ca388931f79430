"""The state of a training run: the arrays (:class:`TrainState`), where the run stands
(:class:`Progress`) and the sums behind its metrics (:class:`Accumulator`).

:class:`Progress` goes whole into a checkpoint's ``extra``, the logging window included,
so that a resumed run writes bitwise the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from jaxbp import checkpoint

__all__ = ["Accumulator", "Agreement", "Progress", "TrainState"]


class TrainState(NamedTuple):
    """The arrays of a run: what a step updates, and the key its dropout keys come from."""

    params: Any
    opt_state: Any
    model_state: Any
    rng: Any  # dropout key of step s: fold_in(rng, s)


class Agreement(NamedTuple):
    """Compare mode, over some steps: the worst parameter's relative error and the lowest
    cosine of any parameter (a checkpoint stores it as a JSON list in this order)."""

    max_rel_err: float
    param: str
    min_cos: float


@dataclass
class Accumulator:
    """Sums over some steps (a logging window, an epoch): loss and accuracy weighted by the
    real rows, throughput over the steps that did not compile, and in compare mode the
    autodiff loss and the worst gradient agreement (:class:`Agreement`)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0
    timed: int = 0
    loss_autodiff_sum: float = 0.0
    worst: Agreement | None = None

    def add(self, loss: float, correct: int, n: int, seconds: float | None, loss_autodiff: float | None) -> None:
        self.loss_sum += loss * n
        self.correct += correct
        self.count += n
        if seconds is not None:  # None: the step compiled, its time is not throughput
            self.seconds += seconds
            self.timed += n
        if loss_autodiff is not None:
            self.loss_autodiff_sum += loss_autodiff * n

    def add_agreement(self, rel: float, name: str, cos: float) -> None:
        if self.worst is None:
            self.worst = Agreement(rel, name, cos)
        elif rel > self.worst.max_rel_err:
            self.worst = Agreement(rel, name, min(cos, self.worst.min_cos))
        else:
            self.worst = self.worst._replace(min_cos=min(cos, self.worst.min_cos))

    @property
    def examples_per_s(self) -> float:
        return self.timed / self.seconds if self.seconds > 0 else 0.0

    def train_record(self, step: int, epoch: int) -> dict[str, Any]:
        rec = {
            "kind": "train", "step": step, "epoch": epoch, "loss": self.loss_sum / self.count,
            "accuracy": self.correct / self.count, "examples_per_s": self.examples_per_s,
        }  # fmt: skip
        if self.worst is not None:
            rel, name, cos = self.worst
            rec.update(
                loss_autodiff=self.loss_autodiff_sum / self.count,
                grad_max_rel_err=rel,
                grad_worst_param=name,
                grad_min_cos=cos,
            )
        return rec

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Accumulator:
        d = dict(d)
        if d.get("worst") is not None:  # a JSON list in a checkpoint
            d["worst"] = Agreement(*d["worst"])
        return cls(**d)


@dataclass
class Progress:
    """Where a run stands, beyond its arrays; all of it goes into the checkpoint's ``extra``."""

    step: int = 0
    epoch: int = 0  # epochs completed
    batch_index: int = 0  # batches of the current epoch done
    history: list[dict[str, Any]] = field(default_factory=list)  # the eval records
    worst: dict[str, Any] | None = None  # compare mode: the worst agreement of the run
    audits: dict[str, Any] | None = None  # compare mode: jaxbp.train.audit.AuditLog as a dict
    epoch_acc: Accumulator = field(default_factory=Accumulator)
    window: Accumulator = field(default_factory=Accumulator)
    wall_time_s: float = 0.0  # of the processes before this one

    def extra(self, wall_time_s: float) -> dict[str, Any]:
        return {
            "batch_index": self.batch_index, "history": self.history, "worst": self.worst, "audits": self.audits,
            "epoch_acc": dataclasses.asdict(self.epoch_acc), "window": dataclasses.asdict(self.window),
            "wall_time_s": wall_time_s,
        }  # fmt: skip

    @classmethod
    def from_checkpoint(cls, path: Path, meta: dict[str, Any]) -> Progress:
        """Rebuild from a checkpoint's metadata; :class:`CheckpointError` naming ``path`` if malformed."""
        extra = meta.get("extra")
        try:
            if not isinstance(extra, dict):
                raise TypeError("not a dict")
            epoch_acc = extra.get("epoch_acc")
            if epoch_acc is None and "epoch_sums" in extra:  # checkpoints of jaxbp before the TrainState loop
                loss_sum, correct, count = extra["epoch_sums"]
                epoch_acc = {"loss_sum": float(loss_sum), "correct": int(correct), "count": int(count)}
            progress = cls(
                step=meta["step"],
                epoch=meta["epoch"],
                batch_index=extra.get("batch_index", 0),
                history=list(extra.get("history") or []),
                worst=extra.get("worst"),
                audits=extra.get("audits"),
                epoch_acc=Accumulator.from_dict(epoch_acc or {}),
                window=Accumulator.from_dict(extra.get("window") or {}),
                wall_time_s=float(extra.get("wall_time_s", 0.0)),
            )
            ints = (progress.step, progress.epoch, progress.batch_index)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
                raise ValueError(f"step {progress.step}, epoch {progress.epoch}, batch {progress.batch_index}")
            if not all(isinstance(h, dict) for h in progress.history):
                raise TypeError("history holds a non-record")
            if progress.worst is not None and not isinstance(progress.worst, dict):
                raise TypeError("worst is not a dict")
            if progress.audits is not None and not isinstance(progress.audits, dict):
                raise TypeError("audits is not a dict")
        except (TypeError, ValueError, KeyError) as err:
            raise checkpoint.CheckpointError(
                f"{path}: the checkpoint's run state (extra) is malformed: {err}"
            ) from None
        return progress
