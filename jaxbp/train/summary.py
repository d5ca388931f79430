"""A run's ``summary.json``: how it ended (status, error), its scores, timings, data, machine and config."""

from __future__ import annotations

import os
from typing import Any

import jax

from jaxbp import models
from jaxbp.train import audit
from jaxbp.train.run import Run
from jaxbp.train.runfolder import RunFolderError
from jaxbp.train.state import Progress

__all__ = ["finish", "or_nan", "summary_record"]


def finish(run: Run, progress: Progress, status: str, error, stop_eval, best_effort: bool = False) -> dict:
    """Write ``summary.json`` (and the plot when the run ended normally); ``best_effort``
    (the run is failing already): a write error is shown, not raised over the first."""
    summary = summary_record(run, progress, status, error, stop_eval)
    try:
        run.folder.write_json("summary", summary)
        if status in ("completed", "stopped") and run.folder.primary:
            run.folder.write_plot(run.config)
    except RunFolderError as err:
        if not best_effort:
            raise
        run.display.note(f"the summary could not be written either: {err}")
    return summary


def summary_record(run: Run, progress: Progress, status: str, error, stop_eval) -> dict[str, Any]:
    """summary.json's record: ``status`` and ``error``, the scores (``stop_eval``'s after a mid-epoch
    stop, else the last epoch's), the timings, the data set, the machine, the history and config."""
    config, ds, timing = run.config, run.ds, run.timing
    last = progress.history[-1] if progress.history else {}
    scores = stop_eval or last
    return {
        "status": status,
        "error": error,
        "test_accuracy": scores.get("test_accuracy"),
        "test_loss": scores.get("test_loss"),
        "val_accuracy": scores.get("val_accuracy"),
        "val_loss": scores.get("val_loss"),
        "evaluated_at_step": (progress.step if stop_eval else last.get("step")),
        "epochs_completed": progress.epoch,
        "steps": progress.step,
        "wall_time_s": run.wall_time(progress),
        "compile_time_s": timing.compile_s,
        "examples_per_s": timing.examples / timing.train_s if timing.train_s > 0 else 0.0,
        "worst_agreement": progress.worst,
        "extensions": progress.extensions,
        "compare_rtol": config.compare_rtol if config.grad == "compare" else None,
        **audit.summary_fields(config, run.auditor, progress),
        "dataset": {
            "name": ds.name,
            "train": len(ds.x_train),
            "val": 0 if ds.x_val is None else len(ds.x_val),
            "test": len(ds.x_test),
            "input_shape": list(ds.input_shape),
        },
        "flops_per_example": models.flops(run.model, ds.input_shape),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "num_devices": int(run.mesh.devices.size),
        "num_processes": jax.process_count(),
        "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # float32 rounding depends on them
        "history": progress.history,
        "config": config.to_dict(),
        "paths": {k: str(v) for k, v in run.folder.paths.items()},
    }


def or_nan(value: float | None) -> float:
    """A score, or NaN where there is none (no epoch was evaluated)."""
    return float("nan") if value is None else value
