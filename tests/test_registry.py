"""The dataset registry: the built-in entries, what reads them, and adding a dataset as an entry."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from redifu.cli import build_parser, main
from redifu.data import registry
from redifu.data.csv_corpora import TranscriptCorpus, TranscriptUtterance
from redifu.data.dialogue import DataError
from redifu.data.feature_files import LAYOUTS
from redifu.data.store import load_stored_corpus
from redifu.data.synthetic import PRESETS
from redifu.features.info import ExtractorInfo

# The published label orders and pinned checksums, written out (not read from redifu).
PUBLISHED = {
    "meld": ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
    "emorynlp": ("Joyful", "Mad", "Peaceful", "Neutral", "Sad", "Powerful", "Scared"),
    "iemocap": ("happy", "sad", "neutral", "angry", "excited", "frustrated"),
}
CHECKSUMS = {
    "train_sent_emo.csv": "d2fa2d6529cf03cac2989efec05c9b27d8fd2f4c8fc5974c7ae88aa537fa02db",
    "dev_sent_emo.csv": "2e89c6f8aa182d6f62f8c6331aece905ac7273ca4999660bfb5213e1d0370c1c",
    "test_sent_emo.csv": "8d37103938f7067600839fe29d5a114a6cd1bcdafb75bec101e06464c5006888",
    "emorynlp_train_final.csv": "462c66c333783adb801836d12d1424f48489bef4fb8ddfec7fbb2f08ce8211d5",
    "emorynlp_dev_final.csv": "20edc9d5917fe705b17b849f7f288e495d4132a60353a6247c3800445bdf8734",
    "emorynlp_test_final.csv": "dbc4b5638acd12c92a5f48def829e04f1c765cddffb4eedbe34216312e0d2d78",
    "iemocap.pkl": "85f15be1fbd8678e0dd443a11ac609615f0e990cc0ca1551fdf86f98b9e6067f",
}


def test_built_in_entries_keep_the_published_classes_and_checksums():
    assert registry.names() == ("meld", "emorynlp", "iemocap")
    assert registry.names(preparable=True) == ("meld", "emorynlp", "iemocap")
    for name, classes in PUBLISHED.items():
        assert registry.get(name).classes == classes
    pinned = {f: r.sha256 for n in registry.names() for f, r in registry.get(n).files.items()}
    assert pinned == CHECKSUMS
    assert registry.get("meld").speaker_slots == 9 and registry.get("emorynlp").speaker_slots is None
    assert registry.get("iemocap").speaker_slots == 2  # an M and an F actor per session
    assert registry.get("iemocap").audio_locator is None and registry.get("iemocap").preparable


def test_feature_layouts_and_synthetic_presets_take_their_entry_classes():
    claimed = [layout for n in registry.names() for layout in registry.get(n).feature_layouts]
    assert sorted(claimed) == sorted(LAYOUTS) and len(claimed) == len(set(claimed)) == 8
    for layout, spec in LAYOUTS.items():
        entry = registry.entry_for_layout(layout)
        assert (spec.dataset, spec.classes) == (entry.name, PUBLISHED[entry.name])
    assert sorted(p for n in registry.names() for p in registry.get(n).synthetic_presets) == sorted(PRESETS)
    for preset, spec in PRESETS.items():
        assert spec.class_names == PUBLISHED[registry.entry_for_preset(preset).name]
    assert PRESETS["meld"].num_speakers == registry.get("meld").speaker_slots


def test_cli_choices_are_the_preparable_entries():
    parser = build_parser()
    data = next(a for a in parser._subparsers._group_actions[0].choices["data"]._actions
                if a.dest == "data_command")
    prepare = data.choices["prepare"]
    [dataset] = [a for a in prepare._actions if a.dest == "dataset"]
    assert tuple(dataset.choices) == registry.names(preparable=True)


def test_unknown_and_conflicting_entries_are_refused():
    with pytest.raises(DataError) as error:
        registry.get("nope")
    assert "\n" not in str(error.value) and "nope" in str(error.value) and "meld, emorynlp" in str(error.value)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("meld"))
    with pytest.raises(ValueError, match="'sdt-meld' already belongs to dataset 'meld'"):
        registry.register(registry.DatasetEntry(name="other", title="Other", classes=("a", "b"),
                                                feature_layouts=("sdt-meld",)))
    assert "other" not in registry.names()
    with pytest.raises(ValueError, match="classes"):
        registry.DatasetEntry(name="one", title="One", classes=("a",))
    with pytest.raises(ValueError, match="name"):
        registry.DatasetEntry(name="Bad Name", title="x", classes=("a", "b"))
    with pytest.raises(ValueError, match="split_files"):
        registry.DatasetEntry(name="x", title="x", classes=("a", "b"), split_files={"valid": "v.csv"})


# ---------------------------------------------------------------------------------------------
# Adding a dataset is adding an entry: a tiny corpus with its own CSV format and reader, prepared
# through the ordinary `redifu data prepare` path, no pipeline code touched.

TINY_SPLITS = {
    "train": [("d1", "ann", "I am so calm", "calm"), ("d1", "bob", "You are not!", "angry"),
              ("d1", "cid", "Stop it", "angry"), ("d2", "bob", "Fine.", "calm")],
    "dev": [("d3", "ann", "Hello", "calm"), ("d3", "ann", "Again", "calm")],
    "test": [("d4", "bob", "Grr", "angry"), ("d4", "ann", "Easy", "calm")],
}


def read_tiny(directory: Path, entry: registry.DatasetEntry) -> TranscriptCorpus:
    """The tiny format: one CSV per split, columns conversation, who, said, feeling."""
    splits, hashes = {}, {}
    for split, filename in entry.split_files.items():
        path = directory / filename
        with open(path, newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
        dialogues: dict[str, list[TranscriptUtterance]] = {}
        for row in rows:
            turns = dialogues.setdefault(row["conversation"], [])
            turns.append(TranscriptUtterance(
                dialogue_id=row["conversation"], index=len(turns), speaker=row["who"], text=row["said"],
                emotion=entry.classes.index(row["feeling"]), sentiment=None, start=None, end=None))
        splits[split] = list(dialogues.values())
        hashes[split] = hashlib.sha256(path.read_bytes()).hexdigest()
    return TranscriptCorpus(entry.title, entry.classes, splits, 0, hashes)


class StandInEncoder:
    """Text features without a model: (length, vowels, 1) per text."""

    instances: list["StandInEncoder"] = []

    def __init__(self, model_name="stand-in", **options):
        self.model_name = model_name
        self.info = ExtractorInfo(name=model_name, version="test", dimension=3)
        self.texts: list[str] = []
        StandInEncoder.instances.append(self)

    def encode(self, texts):
        self.texts += list(texts)
        return np.array([[len(t), sum(c in "aeiou" for c in t), 1.0] for t in texts], dtype=np.float32)


@pytest.fixture
def tiny(tmp_path):
    source = tmp_path / "tiny-csv"
    source.mkdir()
    files = {}
    for split, rows in TINY_SPLITS.items():
        path = source / f"tiny_{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream).writerows([("conversation", "who", "said", "feeling"), *rows])
        files[path.name] = registry.RemoteFile(f"https://example.invalid/{path.name}",
                                               hashlib.sha256(path.read_bytes()).hexdigest())
    entry = registry.DatasetEntry(
        name="tiny", title="Tiny", classes=("calm", "angry"),
        split_files={split: f"tiny_{split}.csv" for split in TINY_SPLITS}, files=files, reader=read_tiny,
        reference="made up for this test")
    with registry.registered(entry):
        yield entry, source
    assert "tiny" not in registry.names()


def test_a_new_entry_is_prepared_through_the_cli(tiny, tmp_path, monkeypatch, capsys):
    import redifu.features.finetuned_text

    entry, source = tiny
    # prepare builds its encoder through load_text_encoder: a plain model name gives a TextEncoder
    monkeypatch.setattr(redifu.features.finetuned_text, "TextEncoder", StandInEncoder)
    output = tmp_path / "dataset"
    assert main(["data", "prepare", "tiny", "--source", str(source), "--output", str(output), "--no-progress"]) == 0
    assert "dataset: Tiny" in capsys.readouterr().out

    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["metadata"]["classes"] == ["calm", "angry"]
    assert manifest["metadata"]["num_speakers"] == 3  # no fixed slots: the busiest dialogue's speakers
    assert manifest["provenance"]["reader"] == f"{__name__}.read_tiny"
    assert manifest["provenance"]["extractors"]["text"]["name"] == "all-MiniLM-L6-v2"
    corpus = load_stored_corpus(output)
    [d1, d2] = corpus.splits["train"]
    assert (d1.dialogue_id, d1.speakers.tolist(), d1.labels.tolist()) == ("d1", [0, 1, 2], [0, 1, 1])
    np.testing.assert_array_equal(d1.features["text"][0], [12, 3, 1])  # "I am so calm"
    assert [corpus.num_utterances(s) for s in ("train", "dev", "test")] == [4, 2, 2]
    assert StandInEncoder.instances[-1].texts[:3] == ["I am so calm", "You are not!", "Stop it"]


def test_a_new_entry_is_checked_against_its_checksums_and_refuses_audio(tiny, tmp_path, caplog):
    from redifu.prepare import prepare_transcripts

    entry, source = tiny
    with open(source / "tiny_dev.csv", "a", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerow(("d3", "bob", "Bye", "calm"))
    corpus, stats = prepare_transcripts("tiny", tmp_path / "out", source=source, text_encoder=StandInEncoder(),
                                        progress=False)
    assert "checksum differs" in caplog.text and corpus.num_utterances("dev") == 3
    with pytest.raises(DataError, match="no audio layout"):
        prepare_transcripts("tiny", tmp_path / "audio", source=source, audio=tmp_path, text_encoder=StandInEncoder())
    assert not (tmp_path / "audio").exists()
    known_by_features = registry.DatasetEntry(name="features-only", title="Features only", classes=("a", "b"))
    with registry.registered(known_by_features), \
            pytest.raises(DataError, match="has no transcript reader; preparable: meld, emorynlp, iemocap, tiny"):
        prepare_transcripts("features-only", tmp_path / "none", source=source)
