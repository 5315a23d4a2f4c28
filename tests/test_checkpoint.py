"""Portable checkpoints: bit-exact round trip, strict loading, atomic writes, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_tiny_config
from redifu.checkpoint import CheckpointError, RunInfo, load_checkpoint, save_checkpoint
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
    assert loaded.classes == CLASSES and loaded.run == RunInfo(seed=3)
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


def test_run_info_round_trip_and_older_files(tmp_path):
    model = ReDiFu(make_tiny_config())
    info = RunInfo(data={"preset": "meld"}, eval_batch_size=8, data_fingerprint="abc", modalities=("text", "audio"),
                   extractors={"audio": {"name": "IS10_paraling", "dimension": 1582}}, seed=1, redifu_version="0.1",
                   commit=None, selected_epoch=4, dev_weighted_f1=61.5)
    save_checkpoint(tmp_path / "ckpt", model, CLASSES, info)
    written = json.loads((tmp_path / "ckpt" / "run.json").read_text())
    assert written["modalities"] == ["text", "audio"] and written["selected_epoch"] == 4
    assert load_checkpoint(tmp_path / "ckpt").run == info
    # an older run.json: fewer fields, and one this version does not know (kept, written back)
    (tmp_path / "ckpt" / "run.json").write_text(json.dumps({"data": {"path": "d"}, "seed": 2, "note": "x"}))
    old = load_checkpoint(tmp_path / "ckpt").run
    assert (old.data, old.seed, old.eval_batch_size, old.extractors, old.modalities, old.extra) == (
        {"path": "d"}, 2, 32, {}, None, {"note": "x"})
    save_checkpoint(tmp_path / "again", model, CLASSES, old)
    assert json.loads((tmp_path / "again" / "run.json").read_text())["note"] == "x"
    (tmp_path / "ckpt" / "run.json").unlink()
    assert load_checkpoint(tmp_path / "ckpt").run == RunInfo()


@pytest.mark.parametrize("content,message", [
    ('{"eval_batch_size": "8"}', "field 'eval_batch_size': must be a positive integer, got '8'"),
    ('{"eval_batch_size": 0}', "field 'eval_batch_size': must be a positive integer, got 0"),
    ('{"seed": true}', "field 'seed': must be an integer, got True"),
    ('{"extractors": {"audio": "IS10"}}', "field 'extractors': 'audio' must be an object"),
    ('[1, 2]', "expected a JSON object, got list"),
    ('{"seed": 1', "invalid JSON"),
])
def test_bad_run_json_is_a_one_line_error(tmp_path, content, message):
    save_checkpoint(tmp_path / "ckpt", ReDiFu(make_tiny_config()), CLASSES)
    (tmp_path / "ckpt" / "run.json").write_text(content)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "ckpt")
    assert str(error.value).startswith(f"{tmp_path / 'ckpt' / 'run.json'}: ") and message in str(error.value)
    assert "\n" not in str(error.value)
