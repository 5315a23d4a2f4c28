"""End-to-end training on a tiny synthetic corpus: run directory, selection, determinism, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lightning.pytorch.callbacks import Callback

from conftest import TINY_SYNTHETIC
from redifu.checkpoint import load_checkpoint
from redifu.config import load_config
from redifu.data.loading import load_corpus
from redifu.training.evaluation import evaluate_split
from redifu.training.run import summarize, train

TINY = [f"data.synthetic.{k}={json.dumps(v)}" for k, v in TINY_SYNTHETIC.items()] + [
    "model.hidden_size=16", "model.num_heads=2", "model.window=3", "model.fusion_layers=1", "model.graph_layers=1",
    "training.max_epochs=3", "training.batch_size=4", "training.progress_bar=false", "training.threads=1",
    "training.lr=3e-3",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = load_config(None, TINY)
    output = tmp_path_factory.mktemp("run")
    metrics = train(config, output)
    return config, output, metrics


@pytest.mark.integration
def test_run_directory_layout(tiny_run):
    _, output, metrics = tiny_run
    for name in ("config.yaml", "metrics.json", "classification_report.txt", "confusion_matrix.png", "curves.png",
                 "checkpoint/config.json", "checkpoint/model.safetensors", "checkpoint/labels.json",
                 "lightning/last.ckpt"):
        assert (output / name).is_file(), name
    on_disk = json.loads((output / "metrics.json").read_text())
    assert on_disk["selected_epoch"] == metrics["selected_epoch"]
    for split in ("dev", "test"):
        assert on_disk[split]["weighted_f1"] == metrics[split]["weighted_f1"]
        confusion = np.asarray(on_disk[split]["confusion_matrix"])
        assert confusion.shape == (6, 6)
        assert on_disk[split]["accuracy"] == pytest.approx(100.0 * np.trace(confusion) / confusion.sum())
    assert (output / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(on_disk["history"]) == 3
    assert on_disk["data_fingerprint"] and on_disk["num_parameters"] > 0


@pytest.mark.integration
def test_selected_epoch_is_the_best_dev_epoch(tiny_run):
    _, _, metrics = tiny_run
    dev_scores = [row["dev/weighted_f1"] for row in metrics["history"]]
    best = max(range(len(dev_scores)), key=lambda i: (dev_scores[i], -i))
    assert metrics["selected_epoch"] == metrics["history"][best]["epoch"]
    # the exported checkpoint is that epoch's model: its dev score matches the logged one
    assert metrics["dev"]["weighted_f1"] == pytest.approx(dev_scores[best], abs=1e-3)


@pytest.mark.integration
def test_saved_checkpoint_reproduces_test_metrics_exactly(tiny_run):
    config, output, metrics = tiny_run
    checkpoint = load_checkpoint(output / "checkpoint")
    corpus = load_corpus(config.data)
    again = evaluate_split(checkpoint.model, corpus.splits["test"], checkpoint.classes,
                           batch_size=config.training.eval_batch_size)
    assert again["weighted_f1"] == metrics["test"]["weighted_f1"]
    assert again["confusion_matrix"] == metrics["test"]["confusion_matrix"]


@pytest.mark.integration
def test_same_seed_same_metrics(tiny_run, tmp_path):
    config, _, metrics = tiny_run
    second = train(config, tmp_path / "again")
    assert second["history"] == metrics["history"]
    assert second["test"] == metrics["test"]


@pytest.mark.integration
def test_resume_continues_from_last_epoch(tiny_run, tmp_path):
    config, output, metrics = tiny_run

    class Interrupt(Callback):  # the run dies after its second epoch
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                trainer.should_stop = True

    train(config, tmp_path / "resumed", callbacks=[Interrupt()])
    resumed = train(config, tmp_path / "resumed", resume=True)
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2]
    # resuming gives exactly the result of training straight through
    assert resumed["history"] == metrics["history"]
    assert resumed["test"] == metrics["test"]
    assert resumed["resumed_at_epochs"] == [2]
    # the resumed run's log continues the first part's: it reads like the uninterrupted run's
    assert (tmp_path / "resumed" / "logs" / "metrics.csv").read_bytes() == (output / "logs" / "metrics.csv").read_bytes()


def test_resume_without_state_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(load_config(None, TINY), tmp_path / "fresh", resume=True)


def test_summary_over_seeds():
    runs = [{"seed": s, "dev": {"weighted_f1": f, "accuracy": f, "macro_f1": f},
             "test": {"weighted_f1": f + 1, "accuracy": f, "macro_f1": f}} for s, f in ((1, 50.0), (2, 60.0))]
    summary = summarize(runs)
    assert summary["test"]["weighted_f1"]["mean"] == pytest.approx(56.0)
    assert summary["test"]["weighted_f1"]["std"] == pytest.approx(7.0710678)
    assert summary["seeds"] == [1, 2]


@pytest.mark.integration
def test_tensorboard_logger_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    config = load_config(None, [*TINY, "training.max_epochs=1", "training.logger=tensorboard"])
    train(config, tmp_path / "tb")
    assert list((tmp_path / "tb" / "logs").rglob("events.out.tfevents*"))


@pytest.mark.integration
def test_csv_logger_writes_dev_metric(tiny_run):
    _, output, _ = tiny_run
    text = (output / "logs" / "metrics.csv").read_text()
    assert "dev/weighted_f1" in text.splitlines()[0]
