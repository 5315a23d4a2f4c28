"""redifu's open dataset format: round trip, atomic writes, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from redifu.data.dialogue import DataError
from redifu.data.store import load_stored_corpus, read_manifest, save_corpus


def test_round_trip_is_exact(tiny_corpus, tmp_path):
    save_corpus(tiny_corpus, tmp_path / "ds", provenance={"source": "synthetic"})
    loaded = load_stored_corpus(tmp_path / "ds")
    assert loaded.metadata == tiny_corpus.metadata
    for split, dialogues in tiny_corpus.splits.items():
        assert [d.dialogue_id for d in loaded.splits[split]] == [d.dialogue_id for d in dialogues]
        for a, b in zip(dialogues, loaded.splits[split]):
            assert np.array_equal(a.speakers, b.speakers) and np.array_equal(a.labels, b.labels)
            for m in a.features:
                assert np.array_equal(a.features[m], b.features[m])
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["provenance"] == {"source": "synthetic"}
    assert manifest["utterances"]["train"] == tiny_corpus.num_utterances("train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_overwrite_only_a_dataset(tiny_corpus, tmp_path):
    save_corpus(tiny_corpus, tmp_path / "ds")
    save_corpus(tiny_corpus, tmp_path / "ds")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a redifu dataset; refusing"):
        save_corpus(tiny_corpus, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_corrupt_datasets_give_one_line_errors(tiny_corpus, tmp_path):
    with pytest.raises(DataError, match="manifest.json is missing"):
        load_stored_corpus(tmp_path)
    save_corpus(tiny_corpus, tmp_path / "ds")
    arrays = load_file(str(tmp_path / "ds" / "dev.safetensors"))
    arrays["audio"][0, 0] = np.nan
    save_file(arrays, str(tmp_path / "ds" / "dev.safetensors"))
    with pytest.raises(DataError) as error:
        load_stored_corpus(tmp_path / "ds")
    first = tiny_corpus.splits["dev"][0].dialogue_id
    assert f"dialogue {first}" in str(error.value) and "'audio'" in str(error.value) and "NaN" in str(error.value)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    manifest["version"] = 99
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="field 'version'"):
        load_stored_corpus(tmp_path / "ds")
