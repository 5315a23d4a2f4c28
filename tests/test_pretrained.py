"""The model shipped inside the package: small, loaded offline with no argument, and its card's
test figures reproduced on MELD from ../shared/data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from redifu.cli import main
from redifu.errors import CheckpointError
from redifu.predict import Predictor
from redifu.pretrained import DEFAULT_MODEL, resolve_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "conversation.jsonl"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def shipped():
    return Predictor.from_pretrained(device="cpu")


def test_the_shipped_files_are_small_and_complete():
    directory = resolve_model(None)
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    names = {p.relative_to(directory).as_posix() for p in files}
    for name in ("config.json", "model.safetensors", "labels.json", "run.json", "card.json", "MODEL_CARD.md",
                 "text-encoder/redifu-text-encoder.json", "text-encoder/adapter.safetensors"):
        assert name in names
    assert "text-encoder/model.safetensors" not in names  # LoRA factors over the pip-installed base


def test_no_argument_and_the_name_load_the_same_model(shipped):
    assert shipped.source == resolve_model(DEFAULT_MODEL) == resolve_model("meld-text")
    assert shipped.classes == tuple(shipped.card["labels"]) and shipped.modalities == ("text",)
    with pytest.raises(CheckpointError, match="not a redifu checkpoint"):
        Predictor.from_pretrained("no-such-model")


def test_the_shipped_model_predicts_the_example(shipped):
    rows = [json.loads(line) for line in EXAMPLE.read_text().splitlines() if line.strip()]
    first = [r for r in rows if r["dialogue_id"] == rows[0]["dialogue_id"]]
    predictions = shipped.predict(first)
    assert len(predictions) == len(first)
    for p in predictions:
        assert p.label in shipped.classes
        assert abs(sum(p.probabilities.values()) - 1) < 1e-4


def test_predict_without_checkpoint_works_offline(tmp_path):
    """A fresh process with the hub switched off: the CLI's default model, no network needed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "predictions.jsonl"
    result = subprocess.run([sys.executable, "-m", "redifu", "predict", str(EXAMPLE), "--output", str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == sum(1 for line in EXAMPLE.read_text().splitlines() if line.strip())
    assert all(row["label"] in json.loads((resolve_model(None) / "labels.json").read_text()) for row in written)


@pytest.mark.integration
def test_the_shipped_weights_reproduce_the_card_on_meld_test(shipped):
    """The card's test figures from the MELD test CSV: transcripts in, the shipped encoder and model."""
    if not (SHARED / "meld").is_dir():
        pytest.skip(f"{SHARED / 'meld'} is absent")
    from redifu.data.csv_corpora import read_meld_csvs
    from redifu.training.metrics import classification_metrics

    corpus = read_meld_csvs(SHARED / "meld")
    dialogues = corpus.splits["test"]
    labels, predicted = [], []
    for predictions, dialogue in zip(shipped.predict_many(
            [[{"speaker": u.speaker, "text": u.text, "utterance": i} for i, u in enumerate(d)] for d in dialogues]),
            dialogues):
        for p, u in zip(predictions, dialogue):
            labels.append(u.emotion)
            predicted.append(shipped.classes.index(p.label))
    metrics = classification_metrics(np.array(labels), np.array(predicted), shipped.classes)
    test = shipped.card["metrics"]["test"]
    assert metrics["num_utterances"] == test["utterances"]
    assert abs(metrics["weighted_f1"] - test["weighted_f1"]) < 0.05
    for name in shipped.classes:
        assert abs(metrics["per_class"][name]["f1"] - test["per_class"][name]["f1"]) < 0.2
