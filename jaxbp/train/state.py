"""The state of a training run: the arrays (:class:`TrainState`), where the run stands
(:class:`Progress`) and the sums behind its metrics (:class:`Accumulator`).

:class:`Progress` goes whole into a checkpoint's ``extra``, the logging window included,
so that a resumed run writes bitwise the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
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
        """From a checkpoint's JSON; ``TypeError``/``ValueError`` saying which field is wrong."""
        d = dict(d)
        if d.get("worst") is not None:  # a JSON list in a checkpoint
            d["worst"] = Agreement(*d["worst"])
            _check_agreement(d["worst"])
        acc = cls(**d)
        for f in dataclasses.fields(cls):
            value = getattr(acc, f.name)
            if f.name != "worst" and not (_is_number(value, int if f.type == "int" else float) and value >= 0):
                raise ValueError(f"{f.name} is {value!r}, not a finite number >= 0")
        return acc


def _is_number(value: Any, kind: type) -> bool:
    """An int (``kind`` int), or an int or finite float (``kind`` float); never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return False
    return math.isfinite(value)


def _check_agreement(worst: Agreement) -> None:
    if not (_is_number(worst.max_rel_err, float) and isinstance(worst.param, str) and _is_number(worst.min_cos, float)):
        raise ValueError(f"the agreement {list(worst)!r} is not [rel err, parameter name, cosine]")


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
    # Every resume that extended the run (``--epochs`` beyond its epochs): {"step", "from_epochs", "to_epochs"}.
    extensions: list[dict[str, int]] = field(default_factory=list)

    def extra(self, wall_time_s: float) -> dict[str, Any]:
        return {
            "batch_index": self.batch_index, "history": self.history, "worst": self.worst, "audits": self.audits,
            "epoch_acc": dataclasses.asdict(self.epoch_acc), "window": dataclasses.asdict(self.window),
            "wall_time_s": wall_time_s, "extensions": self.extensions,
        }  # fmt: skip

    @classmethod
    def from_checkpoint(
        cls, path: Path, meta: dict[str, Any], *, steps_per_epoch: int | None = None, epochs: int | None = None
    ) -> Progress:
        """Rebuild from a checkpoint's metadata; :class:`CheckpointError` naming ``path`` if
        malformed. With ``steps_per_epoch`` and ``epochs`` (the run's config) the position must
        be one the run can reach: ``step = epoch * steps_per_epoch + batch_index`` within the
        run's ``epochs * steps_per_epoch`` steps, one history record per completed epoch."""
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
                wall_time_s=extra.get("wall_time_s", 0.0),
                extensions=list(extra.get("extensions") or []),
            )
            progress._check_types()
        except (TypeError, ValueError, KeyError) as err:
            raise checkpoint.CheckpointError(
                f"{path}: the checkpoint's run state (extra) is malformed: {err}"
            ) from None
        if steps_per_epoch is not None and epochs is not None:
            problem = progress._position_problem(steps_per_epoch, epochs)
            if problem:
                raise checkpoint.CheckpointError(f"{path}: {problem}; refusing to resume from it")
        return progress

    def _check_types(self) -> None:
        ints = (self.step, self.epoch, self.batch_index)
        if not all(_is_number(v, int) and v >= 0 for v in ints):
            raise ValueError(f"step {self.step!r}, epoch {self.epoch!r}, batch {self.batch_index!r}")
        if not (_is_number(self.wall_time_s, float) and self.wall_time_s >= 0):
            raise ValueError(f"wall_time_s is {self.wall_time_s!r}")
        for i, rec in enumerate(self.history):
            if not isinstance(rec, dict) or rec.get("kind") != "eval":
                raise TypeError(f"history record {i} is not an eval record")
            numeric = [k for k in rec if k in ("step", "epoch") or k.endswith(("_loss", "_accuracy", "_s"))]
            bad = [k for k in numeric if not _is_number(rec[k], int if k in ("step", "epoch") else float)]
            if bad:
                raise ValueError(f"history record {i}: {bad[0]} is {rec[bad[0]]!r}, not a finite number")
        w = self.worst
        if w is not None and not (
            isinstance(w, dict) and _is_number(w.get("step"), int) and isinstance(w.get("param"), str)
            and _is_number(w.get("max_rel_err"), float) and _is_number(w.get("min_cos"), float)
        ):  # fmt: skip
            raise TypeError(f"worst is {w!r}, not the run's worst agreement"[:300])
        if self.audits is not None and not isinstance(self.audits, dict):
            raise TypeError("audits is not a dict")
        keys = ("step", "from_epochs", "to_epochs")
        for i, ext in enumerate(self.extensions):
            if not (isinstance(ext, dict) and set(ext) == set(keys) and all(_is_number(ext[k], int) for k in keys)):
                raise TypeError(f"extension {i} is {ext!r}, not {{step, from_epochs, to_epochs}}"[:300])

    def _position_problem(self, steps_per_epoch: int, epochs: int) -> str | None:
        total = steps_per_epoch * epochs
        if not 0 <= self.step <= total:
            return f"the checkpoint's step {self.step} is outside the run's {total} steps ({epochs} epochs of {steps_per_epoch})"
        if self.step != self.epoch * steps_per_epoch + self.batch_index or self.batch_index > steps_per_epoch:
            return (
                f"the checkpoint's step {self.step} does not follow from its epoch {self.epoch} and batch "
                f"{self.batch_index} ({steps_per_epoch} batches an epoch)"
            )
        steps = [rec["step"] for rec in self.history]
        if steps != [steps_per_epoch * (i + 1) for i in range(self.epoch)]:
            return f"the checkpoint's history of evaluations (at steps {steps}) does not match its {self.epoch} epochs"
        return None
