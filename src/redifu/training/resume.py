"""Resume state that survives ``kill -9``: an atomic ``last.ckpt`` per epoch and a CSV log that a
resumed run continues instead of overwriting.

Lightning writes checkpoints in place and its ``ModelCheckpoint(save_top_k=0, save_last=True)``
writes ``last.ckpt`` only when training ends, and its CSV logger deletes ``metrics.csv`` when a
run starts again. Here:

* :class:`AtomicCheckpointIO` writes every Lightning checkpoint to a temporary file that is
  renamed over the destination once complete.
* :class:`ResumeState` writes the resume state (model, optimiser, scheduler, loop progress, the
  callbacks' states: dev selection, early stopping) at the end of every epoch, beside
  ``last.ckpt`` as ``.last.ckpt.pending``, and renames it to ``last.ckpt`` once the epoch's log
  rows are on disk (at the next epoch's start, or when training ends). A kill at any moment
  leaves the previous ``last.ckpt`` intact; a resumed run redoes at most the epoch that was
  running, which per-step seeding and the per-epoch sampler order make identical.
* :class:`ResumableCSVLogger` keeps ``metrics.csv`` on resume, dropping the rows of epochs the
  resume state does not hold, so a resumed run's log reads like an uninterrupted one's.
  (TensorBoard event files are appended to: an epoch redone after a kill appears twice there.)

Resume is per epoch: a run killed mid-epoch redoes that epoch from its start.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from redifu.files import atomic_file

log = logging.getLogger(__name__)

RESUME_FILE = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing through a temporary file and a rename (:func:`atomic_file`).

    A kill during the write leaves the previous checkpoint and a hidden ``.NAME.*.tmp`` that
    nothing reads.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        with atomic_file(path, "wb") as stream:
            torch.save(checkpoint, stream)


def remove_leftovers(directory: Path, name: str) -> list[Path]:
    """Remove what an interrupted write of ``directory/name`` left behind (hidden temporaries,
    an uncommitted ``.NAME.pending`` and its temporaries); return what was removed."""
    removed = []
    if directory.is_dir():
        for path in directory.glob(f".{name}.*"):
            if path.is_file() and (path.suffix == ".tmp" or path.name == f".{name}.pending"):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class ResumeState(Checkpoint):
    """Write ``directory/last.ckpt`` at the end of every epoch, atomically and in step with the logs.

    The state of epoch ``e`` is written (atomically) to ``.last.ckpt.pending`` in
    ``on_train_epoch_end``, after the dev selection and early stopping have seen the epoch (the
    trainer runs checkpoint callbacks last), and renamed to ``last.ckpt`` once Lightning has
    logged the epoch's training metrics, that is when the next epoch starts or training ends.

    Its own state (in the checkpoint): whether early stopping has ended training (a resumed
    early-stopped run trains no further), the training seconds so far, and the
    epochs at which the run was resumed.

    Args:
        directory: Where ``last.ckpt`` lives (the run's ``lightning/``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RESUME_FILE
        self.pending_path = self.directory / f".{RESUME_FILE}.pending"
        self.stopped_early = False
        self.train_seconds = 0.0
        self.resumed_at_epochs: list[int] = []
        self._pending = False
        self._restored = False
        self._seconds_before = 0.0
        self._session_started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch  # epochs held by the restored state (0 for a fresh run)
        if trainer.is_global_zero:
            for path in remove_leftovers(self.directory, RESUME_FILE):
                log.info("removed %s (an interrupted resume-state write)", path)
            if not self._restored and self.path.is_file():  # a fresh start in an old run directory:
                self.path.unlink()  # a kill in the first epoch must not resume the old run
            for logger in trainer.loggers:
                if isinstance(logger, ResumableCSVLogger):
                    logger.keep_epochs_before(epoch)
        if epoch > 0 and not self.stopped_early:
            self.resumed_at_epochs.append(epoch)
        if self.stopped_early:  # killed after the last state was written, before the results were
            trainer.should_stop = True
        self._seconds_before = self.train_seconds
        self._session_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Early stopping, not any request to stop (an interrupted run stops too, and resumes).
        self.stopped_early = bool(trainer.should_stop) and any(
            callback.stopped_epoch == trainer.current_epoch for callback in trainer.early_stopping_callbacks
        )
        self.train_seconds = self._seconds_before + time.perf_counter() - self._session_started
        trainer.save_checkpoint(self.pending_path, weights_only=False)  # every rank takes part; rank 0 writes
        self._pending = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit(trainer)

    def _commit(self, trainer: L.Trainer) -> None:
        if self._pending and trainer.is_global_zero:
            os.replace(self.pending_path, self.path)
        self._pending = False
        trainer.strategy.barrier("ResumeState.commit")

    def state_dict(self) -> dict[str, Any]:
        return {"stopped_early": self.stopped_early, "train_seconds": self.train_seconds,
                "resumed_at_epochs": list(self.resumed_at_epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = True
        self.stopped_early = bool(state_dict["stopped_early"])
        self.train_seconds = float(state_dict["train_seconds"])
        self.resumed_at_epochs = list(state_dict["resumed_at_epochs"])


def _complete_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the complete rows of a CSV log (a last line without its line end, cut
    short by a kill, is dropped)."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as stream:
        lines = stream.read().splitlines(keepends=True)
    lines = [line for line in lines if line.endswith(("\n", "\r"))]
    if not lines:
        return [], []
    reader = csv.DictReader(lines)
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _epoch_of(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("epoch") or ""))
    except ValueError:
        return None


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps an existing ``metrics.csv`` (the logger trims
    it to the resumed epochs) and rewrites it, when the columns grow, atomically."""

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning's writer deletes metrics.csv here; ResumableCSVLogger.keep_epochs_before trims it

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _, rows = _complete_rows(Path(self.metrics_file_path))
        self._write(fieldnames, rows)

    def _write(self, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
        with atomic_file(self.metrics_file_path, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def keep_epochs_before(self, epoch: int) -> None:
        path = Path(self.metrics_file_path)
        fieldnames, rows = _complete_rows(path)
        kept = [row for row in rows if (_epoch_of(row) is not None and _epoch_of(row) < epoch)]
        self.metrics = []
        if not kept:
            path.unlink(missing_ok=True)
            self.metrics_keys = []
            return
        self.metrics_keys = sorted(fieldnames)
        self._write(self.metrics_keys, kept)


class ResumableCSVLogger(CSVLogger):
    """Lightning's :class:`CSVLogger` whose ``metrics.csv`` a resumed run continues.

    :class:`ResumeState` calls :meth:`keep_epochs_before` when training starts: rows of epochs
    the resume state holds are kept, those of the epoch that was interrupted (or of an earlier
    run, on a fresh start) are dropped.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _ResumableWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment

    def keep_epochs_before(self, epoch: int) -> None:
        """Drop the logged rows of epochs ``epoch`` and later."""
        self.experiment.keep_epochs_before(epoch)
