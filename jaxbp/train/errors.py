"""How a run ends when it does not complete: the errors :func:`jaxbp.train.fit` raises, and
what it returns when it does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jaxbp.train.config import TrainConfig

__all__ = [
    "GradientMismatchError",
    "NonFiniteLossError",
    "TrainError",
    "TrainResult",
    "TrainingInterrupted",
    "UserCodeError",
]


class TrainError(RuntimeError):
    """A run that stopped because training went wrong (the message says where)."""


class GradientMismatchError(TrainError):
    """Compare mode: a manual gradient left ``compare_rtol`` of the autodiff one."""


class UserCodeError(TrainError):
    """A user's model (``--model MODULE:FUNCTION``) failed after its first step: a host callback
    raised, say. The summary says ``failed`` and why; the last checkpoint is kept."""


class NonFiniteLossError(TrainError):
    """A loss (train or test) or a gradient became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM: the checkpoint is written; the message says how to resume."""

    def __init__(self, message: str, checkpoint_path: Path | None = None):
        super().__init__(message)
        self.message = message
        self.checkpoint_path = checkpoint_path

    def __str__(self) -> str:
        return self.message


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``history`` holds one dict per epoch; ``test_accuracy`` and
    ``test_loss`` are those of the last evaluation (at the stop of a ``max_steps`` run too),
    ``val_accuracy`` and ``val_loss`` too where the run holds out a validation split (else None).
    A model that reconstructs its input has no accuracy: ``test_accuracy`` is NaN and
    ``val_accuracy`` None, its losses are mean squared errors. ``status``: ``"completed"``,
    ``"stopped"`` (``max_steps``), or ``"already_completed"``: a resumed run that had completed
    its epochs (nothing trained, nothing written)."""

    config: TrainConfig
    test_accuracy: float
    test_loss: float
    history: list[dict[str, Any]]
    steps: int
    epochs_completed: int
    wall_time_s: float
    compile_time_s: float
    examples_per_s: float
    out_dir: Path
    paths: dict[str, Path]
    worst_agreement: dict[str, Any] | None
    status: str
    val_accuracy: float | None = None
    val_loss: float | None = None
    params: Any = field(repr=False, default=None)
    model_state: Any = field(repr=False, default=None)
