"""Portable checkpoints: bit-exact round trip, strict loading, atomic writes, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_tiny_config
from redifu.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from redifu.model import ReDiFu

CLASSES = ("happy", "sad", "neutral", "angry", "excited", "frustrated")


@pytest.mark.parametrize("changes", [{}, {"denoiser": "temporal", "fusion": "symmetric", "position_encoding": "rotary"},
                                     {"graph": "off", "logit_weights": {"text": 3.0, "audio": 1.0}}])
def test_round_trip_is_bit_exact(tmp_path, tiny_batch, changes):
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(**changes)).eval()
    model.set_feature_statistics({"text": (torch.full((32,), 0.5), torch.full((32,), 2.0))})
    save_checkpoint(tmp_path / "ckpt", model, CLASSES, {"seed": 3})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.classes == CLASSES and loaded.run == {"seed": 3}
    assert loaded.model.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        a = model(tiny_batch.features, tiny_batch.speakers, tiny_batch.mask).logits
        b = loaded.model(tiny_batch.features, tiny_batch.speakers, tiny_batch.mask).logits
    assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "labels.json", "model.safetensors", "run.json"]


def test_overwrite_replaces_whole_directory(tmp_path):
    model = ReDiFu(make_tiny_config())
    save_checkpoint(tmp_path / "ckpt", model, CLASSES)
    (tmp_path / "ckpt" / "stale.txt").write_text("old")
    save_checkpoint(tmp_path / "ckpt", model, CLASSES)
    assert not (tmp_path / "ckpt" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging leftovers


def test_strict_loading_refuses_mismatched_weights(tmp_path):
    model = ReDiFu(make_tiny_config())
    save_checkpoint(tmp_path / "ckpt", model, CLASSES)
    weights = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    weights.pop(next(iter(weights)))
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="do not match config.json"):
        load_checkpoint(tmp_path / "ckpt")


def test_config_and_labels_checked(tmp_path):
    model = ReDiFu(make_tiny_config())
    save_checkpoint(tmp_path / "ckpt", model, CLASSES)
    (tmp_path / "ckpt" / "labels.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(CheckpointError, match="2 labels but the model has 6"):
        load_checkpoint(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["fusion"] = "magic"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_directory_or_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)
