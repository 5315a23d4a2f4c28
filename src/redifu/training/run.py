"""One training run, end to end: data, model, Lightning fit with dev selection, one test pass.

Layout of a run directory::

    DIR/config.yaml              resolved experiment config
    DIR/checkpoint/              selected model (config.json, model.safetensors, labels.json, run.json)
    DIR/metrics.json             selected_epoch, dev and test metrics, history, provenance
    DIR/classification_report.txt, DIR/confusion_matrix.png, DIR/curves.png
    DIR/logs/                    CSV (or TensorBoard) logs
    DIR/lightning/last.ckpt      resume state (Lightning's format; read with weights_only=True)

The test split is evaluated exactly once, after training, at the checkpoint selected on dev;
with ``evaluate_test=False`` (the trials of ``redifu tune``) it is neither read nor evaluated.

The resume state is written atomically after every epoch (:mod:`redifu.training.resume`); a run
killed at any moment resumes (``resume=True``) to the results of an uninterrupted one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import subprocess
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

import redifu
from redifu.checkpoint import RunInfo, load_checkpoint, save_checkpoint
from redifu.config import ExperimentConfig, dump_config
from redifu.data.batching import feature_statistics
from redifu.data.dialogue import DialogueCorpus
from redifu.data.loading import fingerprint, load_corpus
from redifu.errors import SPLITS, ConfigError
from redifu.features.context import future_context_problem
from redifu.files import recover_directory, write_json_atomic, write_text_atomic
from redifu.training.evaluation import evaluate_split
from redifu.training.loss import inverse_frequency_weights
from redifu.training.metrics import format_report
from redifu.training.report import plot_confusion_matrix, plot_curves
from redifu.training.resume import RESUME_FILE, AtomicCheckpointIO, ResumableCSVLogger, ResumeState
from redifu.training.system import DEV_METRIC, DialogueDataModule, ReDiFuSystem, lightning_precision

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("weighted_f1", "accuracy", "macro_f1")


class SelectBestOnDev(Callback):
    """Export the model as a portable checkpoint whenever the dev weighted F1 improves.

    Also records the per-epoch history (train loss, dev loss, dev F1) for the curves. Its state
    travels in Lightning's resume checkpoint, so a resumed run keeps its best-so-far.
    """

    def __init__(self, directory: Path, classes: tuple[str, ...], run_info: RunInfo) -> None:
        self.directory = directory
        self.classes = classes
        self.run_info = run_info
        self.best_score = -1.0
        self.best_epoch = -1
        self.history: list[dict[str, float]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: ReDiFuSystem) -> None:
        if trainer.is_global_zero:  # a kill between the two renames of a replacement left the old one aside
            recover_directory(self.directory)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: ReDiFuSystem) -> None:
        metrics = trainer.callback_metrics
        if DEV_METRIC not in metrics:
            return
        epoch = trainer.current_epoch
        row = {"epoch": epoch}
        for key in ("train/loss", "dev/loss", DEV_METRIC, "dev/accuracy"):
            if key in metrics:
                row[key] = float(metrics[key])
        self.history.append(row)
        score = row[DEV_METRIC]
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            if trainer.is_global_zero:
                info = replace(self.run_info, selected_epoch=epoch, dev_weighted_f1=score)
                save_checkpoint(self.directory, pl_module.model, self.classes, info)
        trainer.strategy.barrier()

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict["best_score"]
        self.best_epoch = state_dict["best_epoch"]
        self.history = list(state_dict["history"])


def git_commit() -> str | None:
    """The commit of the redifu source tree, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(redifu.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _logger(config: ExperimentConfig, output: Path):
    kind = config.training.logger
    if kind == "none":
        return False
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise ConfigError("training.logger: 'tensorboard' needs the tensorboard package "
                              "(pip install 'redifu[tensorboard]'), or use training.logger=csv")

        return TensorBoardLogger(save_dir=str(output / "logs"), name="", version="")
    return ResumableCSVLogger(save_dir=str(output / "logs"), name="", version="")


def _accelerator(config: ExperimentConfig) -> str:
    requested = config.training.accelerator
    if requested == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return requested


def train(
    config: ExperimentConfig,
    output: str | Path,
    *,
    corpus: DialogueCorpus | None = None,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    evaluate_test: bool = True,
) -> dict[str, Any] | None:
    """Train with ``config``, write the run directory ``output``, return its metrics.

    ``callbacks`` are extra Lightning callbacks. ``evaluate_test=False`` leaves the test split
    out entirely: it is not loaded (a given ``corpus`` has it dropped), not fingerprinted and not
    evaluated; metrics.json then has ``"test": null`` and the report and confusion matrix are
    dev's. Model selection never depends on it. ``resume`` continues from ``output``'s resume
    state; a run killed before its first epoch ended has none and starts again from the
    beginning. Returns ``None`` on non-zero DDP ranks (only rank 0 evaluates and writes results).
    """
    output = Path(output)
    training = config.training
    if training.threads is not None:
        torch.set_num_threads(training.threads)
    kept = SPLITS if evaluate_test else ("train", "dev")
    if corpus is None:
        corpus = load_corpus(config.data, splits=kept)
    elif not evaluate_test:
        corpus = replace(corpus, splits={s: d for s, d in corpus.splits.items() if s in kept})
    metadata = corpus.metadata
    model_config = config.model_config(
        modality_dims=metadata.modality_dims, num_classes=metadata.num_classes, num_speakers=metadata.num_speakers
    )
    if model_config.causal and "text" in model_config.modalities:
        problem = future_context_problem(corpus.provenance.get("extractors", {}).get("text"))
        if problem is not None:
            raise ConfigError(f"model.causal: {problem}")
    data_fingerprint = fingerprint(corpus)
    resume_path = output / "lightning" / RESUME_FILE
    if resume and not resume_path.is_file():
        if not (output / "config.yaml").is_file():
            raise FileNotFoundError(f"{resume_path}: nothing to resume from")
        log.warning("%s: no resume state (the run stopped during its first epoch); starting from epoch 0", resume_path)
        resume = False

    L.seed_everything(training.seed, workers=True, verbose=False)
    train_dialogues, dev_dialogues = corpus.splits["train"], corpus.splits["dev"]
    class_weights = (
        inverse_frequency_weights(train_dialogues, metadata.num_classes).tolist() if training.class_weights else None
    )
    steps_per_epoch = -(-len(train_dialogues) // (training.batch_size * training.devices))
    system = ReDiFuSystem(
        model_config=model_config.to_dict(),
        training=config.to_dict()["training"],
        class_weights=class_weights,
        steps_per_epoch=steps_per_epoch,
    )
    system.model.set_feature_statistics(feature_statistics(train_dialogues, model_config.modalities))
    datamodule = DialogueDataModule(
        train=train_dialogues, dev=dev_dialogues, modalities=model_config.modalities,
        batch_size=training.batch_size, eval_batch_size=training.eval_batch_size, num_workers=training.num_workers,
        seed=training.seed, distributed=training.devices > 1,
    )
    run_info = RunInfo(
        data=config.to_dict()["data"],
        eval_batch_size=training.eval_batch_size,
        data_fingerprint=data_fingerprint,
        modalities=tuple(model_config.modalities),
        extractors={m: e for m, e in corpus.provenance.get("extractors", {}).items() if m in model_config.modalities},
        seed=training.seed,
        redifu_version=redifu.__version__,
        commit=git_commit(),
    )
    selector = SelectBestOnDev(output / "checkpoint", metadata.classes, run_info)
    resume_state = ResumeState(output / "lightning")
    callbacks = [*(callbacks or []), selector, resume_state]  # the trainer runs resume_state last
    if training.patience > 0:
        callbacks.append(EarlyStopping(monitor=DEV_METRIC, mode="max", patience=training.patience))
    accelerator = _accelerator(config)
    deterministic: bool | str = training.deterministic
    if deterministic and accelerator != "cpu":
        deterministic = "warn"  # scatter kernels on GPUs have no deterministic implementation
    strategy = training.strategy
    if training.devices > 1 and strategy == "auto":
        # Every built parameter gets a gradient (the model builds only what its config uses),
        # except the per-modality classifiers when no loss reads them.
        unread = training.aux_loss_weight == 0 and set(model_config.logit_weights or ()) != set(model_config.modalities)
        strategy = "ddp_find_unused_parameters_true" if unread else "ddp"
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=training.devices,
        strategy=strategy,
        precision=lightning_precision(training.precision),
        max_epochs=training.max_epochs,
        gradient_clip_val=training.grad_clip or None,
        deterministic=deterministic,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=_logger(config, output),
        enable_progress_bar=training.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        default_root_dir=str(output),
    )
    if trainer.is_global_zero:
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output / "config.yaml", dump_config(config))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*srun.*")
        trainer.fit(
            system, datamodule=datamodule, ckpt_path=str(resume_path) if resume else None, weights_only=True
        )
    if not trainer.is_global_zero:
        return None
    if selector.best_epoch < 0:
        raise RuntimeError("training produced no dev evaluation; nothing to select")
    return finish_run(
        output=output, corpus=corpus, selector=selector, train_seconds=resume_state.train_seconds,
        epochs_run=trainer.current_epoch, device=accelerator, config=config,
        num_parameters=system.model.num_parameters(), resumed_at_epochs=resume_state.resumed_at_epochs,
        evaluate_test=evaluate_test,
    )


def finish_run(
    *,
    output: Path,
    corpus: DialogueCorpus,
    selector: SelectBestOnDev,
    train_seconds: float,
    epochs_run: int,
    device: str,
    config: ExperimentConfig,
    num_parameters: int,
    resumed_at_epochs: list[int] | None = None,
    evaluate_test: bool = True,
) -> dict[str, Any]:
    """Evaluate the selected checkpoint on dev and, once, on test; write metrics, report, plots.

    ``evaluate_test=False``: dev only (``"test": None``; the confusion matrix is dev's).

    ``train_seconds`` counts the epochs kept in the run (an epoch redone after a kill counts
    once); ``resumed_at_epochs`` lists the epochs at which the run was resumed.
    """
    torch_device = "cuda" if device in ("gpu", "cuda") else device
    checkpoint = load_checkpoint(output / "checkpoint", map_location=torch_device)
    classes = checkpoint.classes
    batch_size = config.training.eval_batch_size
    dev = evaluate_split(checkpoint.model, corpus.splits["dev"], classes, batch_size=batch_size, device=torch_device)
    test = (evaluate_split(checkpoint.model, corpus.splits["test"], classes, batch_size=batch_size, device=torch_device)
            if evaluate_test else None)
    metrics = {
        "selected_epoch": selector.best_epoch,
        "epochs_run": epochs_run,
        "dev": dev,
        "test": test,
        "history": selector.history,
        "train_seconds": train_seconds,
        "resumed_at_epochs": list(resumed_at_epochs or []),
        "seconds_per_epoch": train_seconds / max(1, len(selector.history)),
        "num_parameters": num_parameters,
        "dataset": corpus.metadata.to_dict(),
        "data_fingerprint": checkpoint.run.data_fingerprint,
        "seed": config.training.seed,
        "commit": checkpoint.run.commit,
        "environment": {
            "redifu": redifu.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": torch_device,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
        },
    }
    report = "dev\n" + format_report(dev, classes)
    if test is not None:
        report += "\ntest\n" + format_report(test, classes)
    write_text_atomic(output / "classification_report.txt", report)
    shown, split = (test, "test") if test is not None else (dev, "dev")
    plot_confusion_matrix(np.asarray(shown["confusion_matrix"]), classes, output / "confusion_matrix.png", split=split)
    plot_curves(selector.history, selector.best_epoch, output / "curves.png")
    write_json_atomic(output / "metrics.json", metrics)
    return metrics


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (ddof=1 when several runs) over seeds."""
    summary: dict[str, Any] = {"seeds": [m["seed"] for m in metrics]}
    for split in ("dev", "test"):
        if any(m[split] is None for m in metrics):  # dev-only runs
            summary[split] = None
            continue
        summary[split] = {}
        for key in SUMMARY_KEYS:
            values = np.array([m[split][key] for m in metrics], dtype=np.float64)
            summary[split][key] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "values": values.tolist(),
            }
    return summary
