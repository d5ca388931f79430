"""A run while it trains: :class:`Run`, what stays fixed (config, data, compiled steps, outputs),
and this process's :class:`Timing`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from jaxbp import data, models
from jaxbp.train import audit
from jaxbp.train.config import TrainConfig
from jaxbp.train.display import Display
from jaxbp.train.runfolder import RunFolder
from jaxbp.train.state import Progress

__all__ = ["Run", "Timing", "kept_checkpoint", "last_step"]


@dataclass
class Timing:
    """This process's step timings (not checkpointed): the first step compiles."""

    compile_s: float = 0.0
    train_s: float = 0.0
    examples: int = 0


@dataclass(frozen=True)
class Run:
    """What stays fixed while a run trains: the config, data, compiled steps and outputs."""

    config: TrainConfig
    ds: data.Dataset
    mesh: Any
    model: models.Model
    train_step: Any
    eval_step: Any
    dtype: Any
    steps_per_epoch: int
    folder: RunFolder
    display: Display
    augment: Any
    timing: Timing
    t_start: float
    auditor: audit.Auditor | None = None  # compare mode: the float64 audits

    @property
    def last_step(self) -> int:
        return last_step(self.config, self.steps_per_epoch)

    def scored(self, rec: dict[str, Any]) -> dict[str, Any]:
        """``rec`` without its accuracy fields where the model has none (it reconstructs its input)."""
        if self.model.objective == "classify":
            return rec
        return {k: v for k, v in rec.items() if not k.endswith("accuracy")}

    def log(self, rec: dict[str, Any]) -> None:
        self.folder.record(rec)
        self.display.record(rec)

    def wall_time(self, progress: Progress) -> float:
        return progress.wall_time_s + time.perf_counter() - self.t_start


def last_step(config: TrainConfig, steps_per_epoch: int) -> int:
    """The step a run stops after: the end of the last epoch, or ``max_steps``."""
    total = steps_per_epoch * config.epochs
    return min(total, config.max_steps) if config.max_steps else total


def kept_checkpoint(run: Run) -> str:
    """The sentence an error ends with: where the last good checkpoint is, or that there is none yet."""
    path = run.folder.paths["checkpoint"]
    return f"The last good checkpoint is kept: {path}." if path.exists() else "No checkpoint was written yet."
