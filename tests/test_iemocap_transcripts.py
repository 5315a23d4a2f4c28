"""IEMOCAP from COSMIC's ``iemocap.pkl``: the reader, its one-line errors, the restricted unpickler,
and `redifu data prepare iemocap` -> `data info` -> `train --config configs/iemocap-text.yaml`."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL_OVERRIDES
from redifu.cli import main
from redifu.data import registry
from redifu.data.dialogue import DataError
from redifu.data.iemocap_transcripts import read_iemocap_pickle
from redifu.data.safe_pickle import UnsafePickleError
from redifu.data.store import load_stored_corpus
from test_registry import StandInEncoder

REPO = Path(__file__).resolve().parents[1]
IEMOCAP = registry.get("iemocap")
# COSMIC's label order (hap, sad, neu, ang, exc, fru), written out rather than read from redifu.
CLASSES = ("happy", "sad", "neutral", "angry", "excited", "frustrated")

# dialogue id -> (speakers, labels, sentences), as COSMIC's file holds them
DIALOGUES = {
    "Ses01F_impro01": (["M", "F", "M"], [2, 3, 5], ["Excuse me.", "Yeah?", "Do you have a form?"]),
    "Ses01F_script01": (["F", "M"], [0, 4], ["I am so happy!", "Great news."]),
    "Ses02M_impro02": (["M", "F", "F", "M"], [1, 2, 2, 3], ["I miss him.", "I know.", "Okay.", "Stop it!"]),
    "Ses04F_impro03": (["F", "M"], [4, 0], ["We did it!", "Wonderful."]),
    "Ses05M_impro01": (["M", "F", "M"], [5, 1, 2], ["This line again.", "", "Fine."]),  # empty text is kept
    "Ses05F_script02": (["F", "F"], [3, 2], ["Get out.", "Hm."]),
}
TRAIN = {"Ses02M_impro02", "Ses01F_impro01", "Ses01F_script01"}
TEST = {"Ses05M_impro01", "Ses05F_script02"}
VALID = {"Ses04F_impro03"}


def cosmic_items() -> list:
    """The six items of ``iemocap.pkl``: speakers, labels, sentences, train/test/valid ids (sets)."""
    speakers, labels, sentences = ({d: list(v[i]) for d, v in DIALOGUES.items()} for i in range(3))
    return [speakers, labels, sentences, set(TRAIN), set(TEST), set(VALID)]


def write_pickle(directory: Path, items, name: str = "iemocap.pkl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(pickle.dumps(items, protocol=4))
    return path


@pytest.fixture
def pkl(tmp_path) -> Path:
    return write_pickle(tmp_path / "cosmic", cosmic_items())


def test_entry_names_the_cosmic_file_and_feature_file_classes():
    assert IEMOCAP.preparable and IEMOCAP.classes == CLASSES
    assert set(IEMOCAP.split_files.values()) == {"iemocap.pkl"} and list(IEMOCAP.split_files) == ["train", "dev", "test"]
    [(name, remote)] = IEMOCAP.files.items()
    assert remote.url == ("https://raw.githubusercontent.com/declare-lab/conv-emotion/master/COSMIC/"
                          "feature-extraction/iemocap/iemocap.pkl")
    assert remote.sha256 == "85f15be1fbd8678e0dd443a11ac609615f0e990cc0ca1551fdf86f98b9e6067f"
    from redifu.data.feature_files import LAYOUTS

    assert LAYOUTS["cosmic-iemocap"].classes == CLASSES  # prepared and converted data agree


def test_reader_keeps_the_official_split_order_speakers_and_texts(pkl):
    corpus = read_iemocap_pickle(pkl.parent, IEMOCAP)
    assert corpus.name == "IEMOCAP" and corpus.classes == CLASSES and corpus.repaired == 0
    ids = {split: [d[0].dialogue_id for d in dialogues] for split, dialogues in corpus.splits.items()}
    assert ids == {"train": sorted(TRAIN), "dev": sorted(VALID), "test": sorted(TEST)}
    assert [corpus.num_utterances(s) for s in ("train", "dev", "test")] == [9, 2, 5]
    digest = hashlib.sha256(pkl.read_bytes()).hexdigest()
    assert corpus.source_files == {"train": digest, "dev": digest, "test": digest}
    for dialogues in corpus.splits.values():
        for dialogue in dialogues:
            speakers, labels, texts = DIALOGUES[dialogue[0].dialogue_id]
            assert [u.index for u in dialogue] == list(range(len(speakers)))
            assert [(u.speaker, u.emotion, u.text) for u in dialogue] == list(zip(speakers, labels, texts))
            assert all(u.sentiment is None and u.start is None and u.end is None for u in dialogue)
    assert corpus.max_speakers == 2


def test_ids_as_lists_give_the_same_sorted_order(tmp_path, pkl):
    items = cosmic_items()
    items[3:] = [sorted(ids, reverse=True) for ids in items[3:]]
    listed = read_iemocap_pickle(write_pickle(tmp_path / "lists", items).parent, IEMOCAP)
    assert listed.splits == read_iemocap_pickle(pkl.parent, IEMOCAP).splits


def test_dialogues_in_no_split_are_left_out_with_a_warning(tmp_path, caplog):
    items = cosmic_items()
    for field, value in zip(items[:3], DIALOGUES["Ses05F_script02"]):
        field["Ses03M_spare"] = list(value)
    with caplog.at_level(logging.WARNING, logger="redifu.data.iemocap_transcripts"):
        corpus = read_iemocap_pickle(write_pickle(tmp_path / "extra", items).parent, IEMOCAP)
    assert "1 dialogue(s) are in no split" in caplog.text
    assert "Ses03M_spare" not in {d[0].dialogue_id for ds in corpus.splits.values() for d in ds}


def _set(field: int, dialogue: str, value):
    def change(items):
        items[field][dialogue] = value
    return change


def _put(field: int, dialogue: str, position: int, value):
    def change(items):
        items[field][dialogue][position] = value
    return change


def _add_id(field: int, dialogue: str):
    def change(items):
        items[field].add(dialogue)
    return change


def _replace(field: int, value):
    def change(items):
        items[field] = value
    return change


def _drop(field: int, dialogue: str):
    def change(items):
        del items[field][dialogue]
    return change


BAD = {
    "five items": (lambda items: items.pop(), "expected a list of 6 items "
                   "(speakers, labels, sentences, trainIds, testIds, validIds), got a list of 5"),
    "seven items": (lambda items: items.append({}), "got a list of 7"),
    "speakers not a dict": (_replace(0, [["M"]]), "field 'speakers': expected a dict keyed by dialogue id, got a list"),
    "ids not a collection": (_replace(3, "Ses01F_impro01"),
                             "field 'trainIds': expected a list or set of dialogue ids, got a str"),
    "no valid ids": (_replace(5, set()), "field 'validIds': no dialogues listed"),
    "id listed twice": (_replace(5, ["Ses04F_impro03", "Ses04F_impro03"]),
                        "dialogue Ses04F_impro03: field 'validIds': listed twice"),
    "id not a string": (_replace(4, [("Ses05", 1)]), "field 'testIds': dialogue id ('Ses05', 1): expected a string"),
    "speakers longer": (_set(0, "Ses01F_impro01", ["M", "F", "M", "F"]),
                        "dialogue Ses01F_impro01: field 'speakers': 4 utterances, but 'labels' has 3"),
    "sentences shorter": (_set(2, "Ses05F_script02", ["Get out."]),
                          "dialogue Ses05F_script02: field 'sentences': 1 utterances, but 'labels' has 2"),
    "labels shorter": (_set(1, "Ses04F_impro03", [4]),
                       "dialogue Ses04F_impro03: field 'speakers': 2 utterances, but 'labels' has 1"),
    "empty dialogue": (lambda items: [items[f].__setitem__("Ses04F_impro03", []) for f in range(3)],
                       "dialogue Ses04F_impro03: field 'labels': dialogue is empty"),
    "label 6": (_put(1, "Ses02M_impro02", 2, 6), "dialogue Ses02M_impro02: field 'labels': label 6 at utterance 2: "
                "expected an integer in 0..5 (happy, sad, neutral, angry, excited, frustrated)"),
    "label -1": (_put(1, "Ses01F_impro01", 0, -1), "field 'labels': label -1 at utterance 0: expected an integer"),
    "label as text": (_put(1, "Ses01F_impro01", 1, "ang"), "field 'labels': label 'ang' at utterance 1"),
    "label as bool": (_put(1, "Ses01F_impro01", 1, True), "field 'labels': label True at utterance 1"),
    "speaker X": (_put(0, "Ses05M_impro01", 1, "X"),
                  "dialogue Ses05M_impro01: field 'speakers': unknown speaker 'X' at utterance 1 (expected 'M' or 'F')"),
    "speaker name": (_put(0, "Ses05M_impro01", 0, "Male"), "field 'speakers': unknown speaker 'Male' at utterance 0"),
    "text not a string": (_put(2, "Ses01F_script01", 1, None),
                          "dialogue Ses01F_script01: field 'sentences': utterance 1: expected a string, got a NoneType"),
    "split id unknown": (_add_id(3, "Ses09M_none"),
                         "dialogue Ses09M_none: field 'speakers': missing, but the dialogue is listed in 'trainIds'"),
    "sentences missing": (_drop(2, "Ses05F_script02"),
                          "dialogue Ses05F_script02: field 'sentences': missing, but the dialogue is listed in 'testIds'"),
    "id in train and test": (_add_id(4, "Ses01F_script01"), "dialogue Ses01F_script01: field 'testIds': also listed "
                             "in 'trainIds' (splits must be disjoint)"),
    "id in valid and test": (_add_id(4, "Ses04F_impro03"), "dialogue Ses04F_impro03: field 'testIds': also listed "
                             "in 'validIds'"),
}


@pytest.mark.parametrize("case", BAD)
def test_malformed_files_give_one_line_errors(tmp_path, case):
    change, expected = BAD[case]
    items = copy.deepcopy(cosmic_items())
    change(items)
    path = write_pickle(tmp_path, items)
    with pytest.raises(DataError) as error:
        read_iemocap_pickle(tmp_path, IEMOCAP)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and expected in message


def test_not_a_list_and_missing_file(tmp_path):
    write_pickle(tmp_path, {"speakers": {}})
    with pytest.raises(DataError, match=r"iemocap\.pkl: expected a list of 6 items .*, got a dict$"):
        read_iemocap_pickle(tmp_path, IEMOCAP)
    with pytest.raises(DataError, match=r"nowhere/iemocap\.pkl: no such file"):
        read_iemocap_pickle(tmp_path / "nowhere", IEMOCAP)


class Payload:
    """Runs a shell command when a plain ``pickle.load`` reads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


class Speakers(dict):
    """A dict subclass: code outside builtins, however harmless."""


@pytest.mark.parametrize("kind", ["os.system", "a class"])
def test_a_pickle_naming_code_is_refused_before_it_runs(tmp_path, capsys, kind):
    marker = tmp_path / "owned"
    items = cosmic_items()
    items[0] = Payload(marker) if kind == "os.system" else Speakers(items[0])
    source = write_pickle(tmp_path / "evil", items)
    with pytest.raises(UnsafePickleError, match="refused to load"):
        read_iemocap_pickle(source.parent, IEMOCAP)
    assert main(["data", "prepare", "iemocap", "--source", str(source), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# `redifu data prepare iemocap` through the CLI, with a stand-in text encoder


@pytest.fixture
def stand_in_encoder(monkeypatch):
    import redifu.features.finetuned_text

    # prepare builds its encoder through load_text_encoder: a plain model name gives a TextEncoder
    monkeypatch.setattr(redifu.features.finetuned_text, "TextEncoder", StandInEncoder)


def _prepare(source: Path, output: Path) -> int:
    return main(["data", "prepare", "iemocap", "--source", str(source), "--output", str(output), "--no-progress"])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A dataset prepared from the fixture pickle (``--source FILE``), shared by the CLI tests."""
    monkeypatch = pytest.MonkeyPatch()
    import redifu.features.finetuned_text

    monkeypatch.setattr(redifu.features.finetuned_text, "TextEncoder", StandInEncoder)
    base = tmp_path_factory.mktemp("iemocap")
    try:
        assert _prepare(write_pickle(base / "cosmic", cosmic_items()), base / "dataset") == 0
    finally:
        monkeypatch.undo()
    return base / "dataset"


def test_prepare_writes_the_official_split_with_transcripts(prepared):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["metadata"]["classes"] == list(CLASSES)
    assert manifest["metadata"]["num_speakers"] == 2 and manifest["metadata"]["modality_dims"] == {"text": 3}
    assert manifest["provenance"]["reader"] == "redifu.data.iemocap_transcripts.read_iemocap_pickle"
    assert "iemocap transcripts (iemocap.pkl)" in manifest["metadata"]["description"]
    corpus = load_stored_corpus(prepared)
    assert [corpus.num_utterances(s) for s in ("train", "dev", "test")] == [9, 2, 5]
    first = corpus.splits["train"][0]
    assert first.dialogue_id == "Ses01F_impro01" and first.speaker_names == ("M", "F", "M")
    assert first.speakers.tolist() == [0, 1, 0] and first.labels.tolist() == [2, 3, 5]
    assert first.texts == tuple(DIALOGUES["Ses01F_impro01"][2])
    np.testing.assert_array_equal(first.features["text"][0], [10, 3, 1])  # "Excuse me."
    [_, spoken] = corpus.splits["test"]  # sorted ids: Ses05F_script02, Ses05M_impro01
    assert spoken.dialogue_id == "Ses05M_impro01"
    assert spoken.texts[1] == "" and spoken.speaker_names == ("M", "F", "M")


def test_data_info_prints_integer_counts(prepared, capsys):
    assert main(["data", "info", str(prepared)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dataset: IEMOCAP"
    header = next(line for line in lines if line.split()[:3] == ["train", "dev", "test"]).split()
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith(("dialogues", "utterances"))}
    assert header == ["train", "dev", "test", "total"]
    assert rows == {"dialogues": ["3", "1", "2", "6"], "utterances": ["9", "2", "5", "16"]}
    frustrated = next(line for line in lines if line.startswith("frustrated")).split()
    assert frustrated[1:] == ["1", "0", "1", "2"]


@pytest.mark.parametrize("as_folder", [False, True])
def test_source_is_the_file_or_its_folder_and_its_checksum_is_checked(pkl, tmp_path, stand_in_encoder,
                                                                      caplog, as_folder):
    source = pkl.parent if as_folder else pkl
    with caplog.at_level(logging.WARNING, logger="redifu.data.download"):
        assert _prepare(source, tmp_path / "out") == 0
    assert f"{pkl}: checksum differs from the official file" in caplog.text  # a fixture, not COSMIC's file
    assert "85f15be1fbd8678e0dd443a11ac609615f0e990cc0ca1551fdf86f98b9e6067f" in caplog.text
    assert load_stored_corpus(tmp_path / "out").num_utterances("test") == 5


def test_a_copy_with_the_pinned_checksum_passes_silently(pkl, tmp_path, stand_in_encoder, caplog):
    # the pinned checksum is the real file's; pin the fixture's instead, as the registry tests do
    pinned = registry.RemoteFile(IEMOCAP.files["iemocap.pkl"].url, hashlib.sha256(pkl.read_bytes()).hexdigest())
    registry.register(dataclasses.replace(IEMOCAP, files={"iemocap.pkl": pinned}), replace=True)
    try:
        with caplog.at_level(logging.WARNING, logger="redifu.data.download"):
            assert _prepare(pkl, tmp_path / "out") == 0
    finally:
        registry.register(IEMOCAP, replace=True)
    assert "checksum" not in caplog.text
    assert registry.get("iemocap") is IEMOCAP


def test_a_download_is_checked_against_the_pinned_checksum(pkl, tmp_path):
    from redifu.data.download import fetch_dataset
    from test_download import serve

    target = tmp_path / "downloads"
    with serve(pkl.parent) as url, pytest.raises(DataError) as error:
        fetch_dataset("iemocap", target, base_url=url, timeout=10)
    message = str(error.value)
    assert "\n" not in message and message.startswith("iemocap.pkl: checksum mismatch for ")
    assert IEMOCAP.files["iemocap.pkl"].sha256 in message and not target.exists()


def test_a_source_file_with_another_name_is_refused(tmp_path, capsys):
    source = write_pickle(tmp_path, cosmic_items(), name="IEMOCAP_features.pkl")
    assert _prepare(source, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"is named iemocap\.pkl; pass that file or the folder", err)
    assert not (tmp_path / "out").exists()


def test_train_the_text_recipe_on_prepared_iemocap(prepared, tmp_path):
    config = REPO / "configs" / "iemocap-text.yaml"
    code = main(["train", "--config", str(config), f"data.path={prepared}", "--output", str(tmp_path / "run"),
                 "training.max_epochs=1", "training.progress_bar=false", "training.threads=1", *TINY_MODEL_OVERRIDES])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"]["classes"] == list(CLASSES) and metrics["dataset"]["modality_dims"] == {"text": 3}
    assert metrics["dataset"]["num_speakers"] == 2
