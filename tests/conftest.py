"""Shared fixtures: a tiny synthetic corpus and a tiny model config (HF-style small fixtures)."""

from __future__ import annotations

import pytest
import torch

from redifu.data.batching import DialogueDataset, collate_dialogues
from redifu.data.synthetic import make_synthetic_corpus
from redifu.model import ReDiFuConfig

TINY_DIMS = {"text": 32, "audio": 24, "visual": 16}
TINY_SYNTHETIC = {
    "train_dialogues": 12,
    "dev_dialogues": 4,
    "test_dialogues": 4,
    "length_range": [3, 14],
    "mean_length": 8.0,
    "modality_dims": TINY_DIMS,
}
# The same corpus as CLI overrides.
TINY_DATA_OVERRIDES = [f"data.synthetic.{k}={v}" for k, v in TINY_SYNTHETIC.items()]
TINY_MODEL_OVERRIDES = ["model.hidden_size=16", "model.num_heads=2", "model.window=3", "model.fusion_layers=1",
                        "model.graph_layers=1"]


@pytest.fixture(autouse=True)
def _few_threads():
    """One intra-op thread: tiny tensors gain nothing from threads, and idle OpenMP workers
    contending with other processes on a small machine make each op tens of times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_corpus():
    return make_synthetic_corpus("iemocap", seed=0, **TINY_SYNTHETIC)


def make_tiny_config(**changes) -> ReDiFuConfig:
    options = dict(
        modality_dims=TINY_DIMS, num_classes=6, num_speakers=2, hidden_size=16, num_heads=2, dropout=0.1,
        window=3, graph_layers=1, fusion_layers=1, denoiser_layers=1,
    )
    options.update(changes)
    return ReDiFuConfig(**options)


@pytest.fixture
def tiny_config() -> ReDiFuConfig:
    return make_tiny_config()


@pytest.fixture
def tiny_batch(tiny_corpus):
    dataset = DialogueDataset(tiny_corpus.splits["train"][:4], tuple(TINY_DIMS))
    return collate_dialogues([dataset[i] for i in range(len(dataset))])
