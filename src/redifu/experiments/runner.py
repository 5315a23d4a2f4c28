"""Running a grid's cells: train (dev-selected, test read once), then evaluate on corrupted tests.

Each cell's directory is an ordinary run directory (``redifu train``'s layout) plus

    cell.json         the cell: dataset, variant, overrides, seed, corruption, commit, data
                      fingerprint, resolved config, metrics, and test metrics per corrupted test set
    predictions.npz   test labels and, per evaluation (``clean`` and each corruption), the predicted
                      class of every test utterance (what the paired bootstrap needs)

A cell with both files is finished and never rerun; a cell interrupted during training resumes
from its last epoch; a finished cell that lacks an evaluation the grid now asks for is only
evaluated. Cells run in ``jobs`` worker processes with ``threads`` each.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from redifu.checkpoint import load_checkpoint
from redifu.config import load_config
from redifu.data.dialogue import DialogueCorpus
from redifu.data.loading import load_corpus
from redifu.experiments.corruption import (
    CORRUPTED_MODALITIES,
    SPLIT_OFFSET,
    corrupt_corpus,
    corrupt_dialogues,
    feature_moments,
)
from redifu.experiments.grid import Cell, Grid
from redifu.files import atomic_file, write_json_atomic
from redifu.training.evaluation import predict_split
from redifu.training.metrics import classification_metrics
from redifu.training.run import train

SUMMARY = ("weighted_f1", "accuracy", "macro_f1")


def cell_finished(cell: Cell, output: Path) -> bool:
    """Trained and evaluated on every corrupted test set the cell asks for."""
    path = output / cell.directory / "cell.json"
    if not path.is_file() or not (output / cell.directory / "predictions.npz").is_file():
        return False
    done = json.loads(path.read_text()).get("evaluations", {})
    return all(c.name in done for c in cell.test_corruptions)


def _clean_corpus(grid: Grid, dataset: str, quick: bool) -> DialogueCorpus:
    overrides = grid.cell_overrides(Cell(dataset, grid.baseline, grid.seeds[0]), quick=quick)
    return _load_data(grid.datasets[dataset].config, tuple(o for o in overrides if o.startswith("data.")))


@functools.lru_cache(maxsize=4)
def _load_data(config_path: str | None, overrides: tuple[str, ...]) -> DialogueCorpus:
    return load_corpus(load_config(config_path, overrides).data)


def run_cell(grid: Grid, cell: Cell, output: Path, *, quick: bool = False, threads: int | None = None) -> dict:
    """Train (or resume, or reuse) one cell and evaluate it; return its ``cell.json`` record."""
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    directory = output / cell.directory
    overrides = grid.cell_overrides(cell, quick=quick)
    config = load_config(grid.datasets[cell.dataset].config, [*overrides, "training.progress_bar=false"])
    if threads is not None:
        config = replace(config, training=replace(config.training, threads=threads))
    clean = _clean_corpus(grid, cell.dataset, quick)
    if config.data.modalities is not None and config.data.modalities != clean.metadata.modalities:
        from redifu.data.loading import select_modalities

        clean = select_modalities(clean, config.data.modalities, source=cell.dataset)
    corpus = clean
    if cell.train_corruption is not None:
        corpus = corrupt_corpus(clean, cell.train_corruption, seed=grid.corruption_seed)
    metrics_path = directory / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        trained = False
    else:
        resume = (directory / "lightning" / "last.ckpt").is_file()
        metrics = train(config, directory, corpus=corpus, resume=resume)
        trained = True
    record = _evaluate(cell, directory, corpus, clean, metrics, grid.corruption_seed)
    record.update(
        dataset=cell.dataset, variant=cell.variant, seed=cell.seed, overrides=overrides,
        train_corruption=None if cell.train_corruption is None else cell.train_corruption.name,
        config=config.to_dict(), commit=metrics.get("commit"), data_fingerprint=metrics.get("data_fingerprint"),
        selected_epoch=metrics["selected_epoch"], epochs_run=metrics.get("epochs_run"),
        train_seconds=metrics.get("train_seconds"), num_parameters=metrics.get("num_parameters"),
        dev={k: metrics["dev"][k] for k in SUMMARY}, test={k: metrics["test"][k] for k in SUMMARY},
        classes=list(corpus.metadata.classes), trained_now=trained,
        wall_seconds=time.perf_counter() - started, threads=torch.get_num_threads(),
    )
    write_json_atomic(directory / "cell.json", record)
    return record


def _evaluate(cell: Cell, directory: Path, corpus: DialogueCorpus, clean: DialogueCorpus, metrics: dict,
              corruption_seed: int) -> dict[str, Any]:
    """Predictions of the selected checkpoint on the cell's test set and each corrupted one."""
    checkpoint = load_checkpoint(directory / "checkpoint")
    batch_size = checkpoint.run.eval_batch_size
    classes = checkpoint.classes
    test = corpus.splits["test"]
    predictions = predict_split(checkpoint.model, test, batch_size=batch_size)
    check = classification_metrics(predictions.labels, predictions.predictions, classes)["weighted_f1"]
    if abs(check - metrics["test"]["weighted_f1"]) > 1e-6:
        raise RuntimeError(f"{directory}: test predictions do not reproduce metrics.json ({check} vs "
                           f"{metrics['test']['weighted_f1']})")
    arrays = {"labels": predictions.labels, "clean": predictions.predictions}
    evaluations = {}
    if cell.test_corruptions:
        modalities = [m for m in CORRUPTED_MODALITIES if m in clean.metadata.modalities]
        moments = feature_moments(clean.splits["train"], modalities)
        for corruption in cell.test_corruptions:
            noisy = corrupt_dialogues(clean.splits["test"], corruption, moments,
                                      seed=corruption_seed + SPLIT_OFFSET["test"])
            result = predict_split(checkpoint.model, noisy, batch_size=batch_size)
            arrays[corruption.name] = result.predictions
            scores = classification_metrics(result.labels, result.predictions, classes)
            evaluations[corruption.name] = {k: scores[k] for k in SUMMARY}
    with atomic_file(directory / "predictions.npz", "wb") as stream:
        np.savez_compressed(stream, **arrays)
    return {"evaluations": evaluations}


def _worker(grid: Grid, cell: Cell, output: Path, quick: bool, threads: int) -> dict:
    import logging
    import warnings

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    return run_cell(grid, cell, output, quick=quick, threads=threads)


def run_grid(
    grid: Grid,
    output: str | Path,
    *,
    jobs: int = 1,
    quick: bool = False,
    report: Callable[[str], None] = print,
) -> list[dict]:
    """Run every unfinished cell of ``grid``; return the records of all cells, finished or not run."""
    output = Path(output)
    cells = grid.plan()
    todo = [c for c in cells if not cell_finished(c, output)]
    report(f"{len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run "
           f"({jobs} job(s))")
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    started = time.perf_counter()
    done = 0

    def finished(record: dict) -> None:
        nonlocal done
        done += 1
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (len(todo) - done)
        corruption = f" trained on {record['train_corruption']}" if record["train_corruption"] else ""
        report(f"[{done}/{len(todo)}] {record['dataset']} / {record['variant']}{corruption} / seed {record['seed']}: "
               f"test wF1 {record['test']['weighted_f1']:.2f} (dev {record['dev']['weighted_f1']:.2f}, "
               f"{record['wall_seconds']:.0f} s; about {eta / 60:.0f} min left)")

    failures = []
    if jobs <= 1:
        for cell in todo:
            finished(_worker(grid, cell, output, quick, threads))
    elif todo:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(_worker, grid, cell, output, quick, threads): cell for cell in todo}
            for future in as_completed(futures):
                try:
                    finished(future.result())
                except Exception as error:  # keep the other cells going; report at the end
                    failures.append(f"{futures[future].directory}: {type(error).__name__}: {error}")
                    report(f"FAILED {failures[-1]}")
    if failures:
        raise RuntimeError(f"{len(failures)} cell(s) failed; first: {failures[0]}")
    return [json.loads((output / c.directory / "cell.json").read_text()) for c in cells
            if (output / c.directory / "cell.json").is_file()]


def load_records(grid: Grid, output: str | Path) -> tuple[list[Cell], dict[tuple, dict]]:
    """The grid's cells and the records of those finished (keyed by :attr:`Cell.key`)."""
    output = Path(output)
    cells = grid.plan()
    records = {}
    for cell in cells:
        path = output / cell.directory / "cell.json"
        if path.is_file():
            record = json.loads(path.read_text())
            with np.load(output / cell.directory / "predictions.npz") as arrays:
                record["predictions"] = {k: arrays[k] for k in arrays.files}
            records[cell.key] = record
    return cells, records
