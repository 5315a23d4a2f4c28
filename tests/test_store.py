"""redifu's open dataset format: round trip, atomic writes, one-line errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from redifu.data.dialogue import DataError, validate_dialogue
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


@pytest.mark.parametrize("bad, expected", [(2, "speaker id 2 at utterance 1 out of range [0, 2)"),
                                           (-1, "speaker id -1 at utterance 1 out of range [0, 2)")])
def test_out_of_range_speaker_ids_are_refused_not_clamped(tiny_corpus, tmp_path, bad, expected):
    """A speaker id the metadata has no slot for is refused in one line, when a corpus is
    validated, saved or loaded (a model would otherwise fold it into a slot silently)."""
    dialogue = tiny_corpus.splits["dev"][0]
    speakers = dialogue.speakers.copy()
    speakers[1] = bad
    broken = replace(dialogue, speakers=speakers)
    with pytest.raises(DataError) as error:
        validate_dialogue(broken, tiny_corpus.metadata, source="mine")
    message = str(error.value)
    assert "\n" not in message and message == f"mine: dialogue {dialogue.dialogue_id}: field 'speakers': {expected}"

    splits = dict(tiny_corpus.splits, dev=[broken, *tiny_corpus.splits["dev"][1:]])
    with pytest.raises(DataError, match=r"field 'speakers': speaker id"):
        save_corpus(replace(tiny_corpus, splits=splits), tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a staging directory

    save_corpus(tiny_corpus, tmp_path / "ds")
    arrays = load_file(str(tmp_path / "ds" / "dev.safetensors"))
    arrays["speakers"][1] = bad
    save_file(arrays, str(tmp_path / "ds" / "dev.safetensors"))
    with pytest.raises(DataError) as error:
        load_stored_corpus(tmp_path / "ds")
    assert str(error.value) == f"{tmp_path / 'ds'}: dialogue {dialogue.dialogue_id}: field 'speakers': {expected}"


def test_speaker_ids_must_be_integers_one_per_utterance(tiny_corpus):
    dialogue = tiny_corpus.splits["dev"][0]
    with pytest.raises(DataError, match="field 'speakers': speaker ids must be integers, got float64"):
        validate_dialogue(replace(dialogue, speakers=dialogue.speakers.astype(np.float64)), tiny_corpus.metadata,
                          source="mine")
    with pytest.raises(DataError, match=r"field 'speakers': expected one speaker id per utterance, got shape"):
        validate_dialogue(replace(dialogue, speakers=dialogue.speakers[:, None]), tiny_corpus.metadata, source="mine")


def test_an_interrupted_replacement_is_recovered_on_read(tiny_corpus, tmp_path):
    """The old dataset survives a kill between the two renames that swap a new one in."""
    save_corpus(tiny_corpus, tmp_path / "ds")
    (tmp_path / "ds").rename(tmp_path / ".ds.old")  # the state such a kill leaves
    corpus = load_stored_corpus(tmp_path / "ds")
    assert corpus.num_utterances("train") == tiny_corpus.num_utterances("train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
