"""Slow behavioural checks on the full synthetic preset (run with `pytest -m slow`)."""

from __future__ import annotations

import pytest

from redifu.config import load_config
from redifu.data.loading import load_corpus
from redifu.training.run import train

pytestmark = pytest.mark.slow

COMMON = ["training.max_epochs=15", "training.patience=5", "training.progress_bar=false", "training.logger=none"]
CONTEXT_FREE_TEXT = ["data.modalities=[text]", "model.denoiser=off", "model.graph=off", "model.fusion=concat",
                     "model.position_encoding=none"]


def test_full_model_beats_context_free_text_only_on_iemocap_preset(tmp_path):
    """The property the synthetic data is built for, measured honestly (dev-selected, test once)."""
    full_config = load_config(None, COMMON)
    corpus = load_corpus(full_config.data)
    full = train(full_config, tmp_path / "full", corpus=corpus)
    baseline = train(load_config(None, COMMON + CONTEXT_FREE_TEXT), tmp_path / "baseline")
    assert full["test"]["weighted_f1"] > baseline["test"]["weighted_f1"] + 5.0
