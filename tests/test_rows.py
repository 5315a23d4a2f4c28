"""The one utterance row schema: its reader, its writer, and `features extract` reading and
writing through them (with a stand-in audio extractor: no openSMILE needed)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from redifu.cli import main
from redifu.errors import DataError
from redifu.extract import extract_features
from redifu.predict.rows import AudioClip, RowWriter, read_conversations, read_rows, utterance_row


@dataclass
class FakeInfo:
    name: str = "IS10_paraling"
    version: str = "fake"
    dimension: int = 3
    settings: dict = field(default_factory=lambda: {"feature_set": "IS10_paraling"})


class FakeAudioExtractor:
    """Describes a file by (its size, start, end): distinct, checkable vectors."""

    info = FakeInfo()

    def __init__(self) -> None:
        self.calls: list[tuple[Path, object, object]] = []

    def extract_file(self, path, start=None, end=None) -> np.ndarray:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: audio file not found")
        self.calls.append((path, start, end))
        return np.array([path.stat().st_size, float(start or 0), float(end or -1)], dtype=np.float32)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def audio_rows(tmp_path) -> Path:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes(b"x" * 10)
    (tmp_path / "clips" / "b.wav").write_bytes(b"x" * 20)
    rows = [
        {"dialogue_id": "d/1", "utterance": 1, "speaker": "B", "text": "bye", "audio_path": "clips/b.wav",
         "start": 0.5, "end": 1.5, "emotion": "sad"},
        {"dialogue_id": "d/1", "utterance": 0, "speaker": "A", "text": "hi", "audio_path": "clips/a.wav",
         "visual": [1.0, 2.0], "emotion": "joy"},
    ]
    return write_jsonl(tmp_path / "in.jsonl", rows)


def test_reader_keeps_the_whole_row(audio_rows):
    (dialogue,) = list(read_conversations(audio_rows))
    first, second = dialogue
    assert (first.index, first.line, second.index, second.line) == (0, 2, 1, 1)
    assert first.audio == AudioClip(audio_rows.parent / "clips" / "a.wav")
    assert second.audio == AudioClip(audio_rows.parent / "clips" / "b.wav", 0.5, 1.5)
    assert first.features["visual"].tolist() == [1.0, 2.0] and "audio" not in first.features  # no model: a path
    assert (first.columns, second.columns) == ({"emotion": "joy"}, {"emotion": "sad"})


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_writer_round_trip(tmp_path, audio_rows, suffix):
    (dialogue,) = list(read_conversations(audio_rows))
    out = tmp_path / "elsewhere" / f"rows{suffix}"
    npy = {}
    for u in dialogue:  # CSV takes vectors as .npy paths only
        npy[u.index] = {"visual": tmp_path / f"v{u.index}.npy"} if "visual" in u.features else {}
        for path in npy[u.index].values():
            np.save(path, u.features["visual"])
    rows = [utterance_row(u, out.parent, npy_paths=npy[u.index]) for u in dialogue]
    assert rows[0]["audio_path"] == "../clips/a.wav" and rows[0]["visual_npy"] == "../v0.npy"
    with RowWriter(out, list(dict.fromkeys(c for r in rows for c in r))) as writer:
        for row in rows:
            writer.write(row)
    (again,) = list(read_conversations(out))
    for before, after in zip(dialogue, again, strict=True):
        assert (after.dialogue_id, after.index, after.speaker, after.text, after.audio) == (
            before.dialogue_id, before.index, before.speaker, before.text, before.audio)
        assert {m: v.tolist() for m, v in after.features.items()} == {m: v.tolist() for m, v in before.features.items()}
        assert after.columns == before.columns


def test_writer_leaves_no_file_when_the_block_fails(tmp_path):
    out = tmp_path / "rows.csv"
    out.write_text("old\n")
    with pytest.raises(ValueError):
        with RowWriter(out, ["dialogue_id"]) as writer:
            writer.write({"dialogue_id": "d"})
            writer.write({"other": 1})  # a column the CSV header does not have
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["rows.csv"]
    with pytest.raises(ValueError, match="unknown output format '.txt'"):
        RowWriter(tmp_path / "rows.txt")


@pytest.mark.parametrize("content,suffix", [("", ".jsonl"), ("\n \n", ".jsonl"), ("", ".csv"),
                                            ("dialogue_id,utterance,speaker\n,,\n", ".csv")])
def test_a_file_without_rows_is_an_error(tmp_path, content, suffix):
    path = tmp_path / f"in{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"^{path}: no rows \(the file is empty"):
        list(read_conversations(path))


def test_audio_is_a_vector_and_audio_path_a_file(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"dialogue_id": "d", "utterance": 0, "speaker": "A", "text": "x",
                                                  "audio": "a.wav"}])
    with pytest.raises(DataError, match=r"in\.jsonl:1: dialogue 'd': field 'audio': must be a list of numbers .*"
                                        r"give an audio file as 'audio_path'$"):
        list(read_conversations(source))
    table = tmp_path / "in.csv"
    table.write_text("dialogue_id,utterance,speaker,text,audio\nd,0,A,x,a.wav\n")
    with pytest.raises(DataError, match=r"header: column 'audio': .*'audio_npy' \(a \.npy path\) or 'audio_path'"):
        list(read_conversations(table))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_features_extract_writes_rows_predict_reads(tmp_path, audio_rows, suffix):
    extractor = FakeAudioExtractor()
    out = tmp_path / "out" / f"feats{suffix}"
    stats = extract_features(audio_rows, out, audio_extractor=extractor)
    assert stats["rows"] == 2 and stats["dimensions"] == {"audio": 3}
    assert [c[1:] for c in extractor.calls] == [(None, None), (0.5, 1.5)]  # utterance order
    (dialogue,) = list(read_conversations(out))
    assert [u.index for u in dialogue] == [0, 1]
    assert [u.extractors for u in dialogue] == [{"audio": "IS10_paraling"}] * 2
    assert dialogue[0].features["audio"].tolist() == [10.0, 0.0, -1.0]
    assert dialogue[1].features["audio"].tolist() == [20.0, 0.5, 1.5]
    assert dialogue[0].features["visual"].tolist() == [1.0, 2.0]  # the input's inline vector, kept
    assert dialogue[1].audio == AudioClip(audio_rows.parent / "clips" / "b.wav", 0.5, 1.5)  # relative to OUT now
    assert [u.columns for u in dialogue] == [{"emotion": "joy"}, {"emotion": "sad"}]
    assert dialogue[0].sources["audio"] == out.parent / "feats_features" / "d_1_0_audio.npy"


def test_features_extract_refuses_bad_input_and_writes_nothing(tmp_path, audio_rows, capsys):
    out = tmp_path / "out.jsonl"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["features", "extract", str(empty), "--output", str(out)]) == 2
    assert capsys.readouterr().err == f"redifu: error: {empty}: no rows (the file is empty or holds only blank " \
                                      f"lines); nothing to read\n"
    rows = [json.loads(line) for line in audio_rows.read_text().splitlines()]
    rows[0]["audio_path"] = "clips/nowhere.wav"
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl:1: dialogue 'd/1': field 'audio_path': .*nowhere\.wav: audio "
                                        r"file not found$"):
        extract_features(bad, out, audio_extractor=FakeAudioExtractor())
    del rows[0]["audio_path"]
    with pytest.raises(DataError, match=r"bad\.jsonl:1: dialogue 'd/1': field 'audio_path': missing"):
        extract_features(write_jsonl(bad, rows), out, audio_extractor=FakeAudioExtractor())
    assert not out.exists() and not (tmp_path / "out_features").exists()


# -- rows in memory (the body of a `redifu serve` request) -------------------------------------

def test_rows_in_memory_read_like_a_file(tmp_path):
    rows = [{"dialogue_id": "d1", "utterance": 1, "speaker": "B", "text": "bye", "audio": [1.0, 2.0]},
            {"dialogue_id": "d1", "utterance": 0, "speaker": "A", "text": "hi", "audio": [3.0, 4.0]}]
    from_file = list(read_conversations(write_jsonl(tmp_path / "in.jsonl", rows)))
    in_memory = list(read_rows(rows))
    assert [[(u.dialogue_id, u.index, u.speaker, u.text) for u in d] for d in in_memory] == \
        [[(u.dialogue_id, u.index, u.speaker, u.text) for u in d] for d in from_file] == \
        [[("d1", 0, "A", "hi"), ("d1", 1, "B", "bye")]]
    np.testing.assert_array_equal(in_memory[0][0].features["audio"], [3.0, 4.0])


@pytest.mark.parametrize("row, message", [
    ({"utterance": 0, "speaker": "A", "text": "hi"}, r"^utterances\[1\]: dialogue unknown: field 'dialogue_id': missing$"),
    ({"dialogue_id": "d1", "utterance": 1, "text": "hi"}, r"^utterances\[1\]: dialogue 'd1': field 'speaker': missing$"),
    ({"dialogue_id": "d1", "utterance": 1, "speaker": "A", "audio": [1.0, "x"]},
     r"^utterances\[1\]: dialogue 'd1': field 'audio': must be a list of numbers"),
    ({"dialogue_id": "d1", "utterance": 1, "speaker": "A", "text": "hi", "audio_npy": "/etc/passwd"},
     r"^utterances\[1\]: dialogue 'd1': field 'audio_npy': file paths are not read here"),
    ({"dialogue_id": "d1", "utterance": 1, "speaker": "A", "text": "hi", "audio_path": "/etc/passwd"},
     r"^utterances\[1\]: dialogue 'd1': field 'audio_path': file paths are not read here"),
    (["not", "an", "object"], r"^utterances\[1\]: dialogue unknown: row: expected an object, got list$"),
])
def test_rows_in_memory_name_the_row_and_open_no_files(row, message):
    good = {"dialogue_id": "d1", "utterance": 0, "speaker": "A", "text": "hi"}
    with pytest.raises(DataError, match=message):
        list(read_rows([good, row], source="utterances"))


def test_no_rows_in_memory_is_refused():
    with pytest.raises(DataError, match=r"^utterances: no rows; nothing to read$"):
        list(read_rows([], source="utterances"))
