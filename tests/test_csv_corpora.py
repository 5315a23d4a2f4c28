"""Official MELD / EmoryNLP CSV readers: real files (counts, order, labels) and bad input."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from redifu.data import registry
from redifu.data.csv_corpora import (
    MELD_SENTIMENTS,
    TranscriptUtterance,
    read_emorynlp_csvs,
    read_meld_csvs,
    speaker_slots,
)
from redifu.data.dialogue import DataError

MELD, EMORYNLP = registry.get("meld"), registry.get("emorynlp")
MELD_EMOTIONS, MELD_FILES, MELD_SPEAKER_SLOTS = MELD.classes, MELD.split_files, MELD.speaker_slots
EMORYNLP_EMOTIONS, EMORYNLP_FILES = EMORYNLP.classes, EMORYNLP.split_files

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MELD_DIR = DATA / "meld"
EMORYNLP_DIR = DATA / "emorynlp"

needs_meld = pytest.mark.skipif(
    not all((MELD_DIR / f).is_file() for f in MELD_FILES.values()),
    reason=f"official MELD CSVs not found in {MELD_DIR}",
)
needs_emorynlp = pytest.mark.skipif(
    not all((EMORYNLP_DIR / f).is_file() for f in EMORYNLP_FILES.values()),
    reason=f"official EmoryNLP CSVs not found in {EMORYNLP_DIR}",
)

MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
               "Season", "Episode", "StartTime", "EndTime"]
EMORYNLP_HEADER = ["Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode",
                   "Start_Time", "End_Time"]


def meld_row(text="Hi.", speaker="Ross", emotion="neutral", sentiment="neutral", dialogue=0, utterance=0,
             number=1):
    return [str(number), text, speaker, emotion, sentiment, str(dialogue), str(utterance), "1", "1",
            "00:00:01,000", "00:00:02,000"]


def emorynlp_row(text="Hi.", speaker="['Ross Geller']", emotion="Neutral", scene=1, utterance=1, season=1,
                 episode=1):
    return [text, speaker, emotion, str(scene), str(utterance), str(season), str(episode),
            "00:00:01.000", "00:00:02.000"]


def write_csv(path: Path, header, rows, *, encoding="utf-8", newline="\r\n") -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))


def write_meld(directory: Path, train_rows, *, header=MELD_HEADER, encoding="utf-8") -> Path:
    write_csv(directory / MELD_FILES["train"], header, train_rows, encoding=encoding)
    for split in ("dev", "test"):
        write_csv(directory / MELD_FILES[split], MELD_HEADER, [meld_row()])
    return directory


def write_emorynlp(directory: Path, train_rows, *, header=EMORYNLP_HEADER) -> Path:
    write_csv(directory / EMORYNLP_FILES["train"], header, train_rows, newline="\n")
    for split in ("dev", "test"):
        write_csv(directory / EMORYNLP_FILES[split], EMORYNLP_HEADER, [emorynlp_row()], newline="\n")
    return directory


# ---------------------------------------------------------------------------------------------
# Real files


@needs_meld
def test_meld_official_counts_and_order():
    corpus = read_meld_csvs(MELD_DIR)
    assert corpus.classes == MELD_EMOTIONS
    # The MELD paper counts 1,039 train dialogues (ids 0..1038), but id 60 has no rows, so the
    # file holds 1,038; utterance counts match the paper exactly.
    expected = {"train": (1038, 9989), "dev": (114, 1109), "test": (280, 2610)}
    for split, (dialogues, utterances) in expected.items():
        assert corpus.num_dialogues(split) == dialogues, split
        assert corpus.num_utterances(split) == utterances, split
    train_ids = [int(d[0].dialogue_id) for d in corpus.splits["train"]]
    assert train_ids == sorted(train_ids)
    assert 60 not in train_ids and max(train_ids) == 1038
    for dialogues in corpus.splits.values():
        for dialogue in dialogues:
            assert len({u.dialogue_id for u in dialogue}) == 1
            indices = [u.index for u in dialogue]
            assert indices == sorted(indices) and len(set(indices)) == len(indices)
    # Current official files are clean UTF-8: nothing to repair, curly apostrophes kept.
    assert corpus.repaired == 0
    first = corpus.splits["train"][0][0]
    assert first.text.startswith("also I was the point person on my company\u2019s transition")
    assert (first.speaker, first.start, first.end) == ("Chandler", "00:16:16,059", "00:16:21,731")
    assert MELD_EMOTIONS[first.emotion] == "neutral" and MELD_SENTIMENTS[first.sentiment] == "neutral"
    assert corpus.max_speakers == MELD_SPEAKER_SLOTS
    assert set(corpus.source_files) == {"train", "dev", "test"}


@needs_meld
def test_meld_label_distribution_matches_the_paper():
    corpus = read_meld_csvs(MELD_DIR)
    counts = np.zeros(len(MELD_EMOTIONS), dtype=int)
    for dialogue in corpus.splits["train"]:
        for u in dialogue:
            counts[u.emotion] += 1
    # neutral, surprise, fear, sadness, joy, disgust, anger (MELD paper, Table 3, train column)
    assert counts.tolist() == [4710, 1205, 268, 683, 1743, 271, 1109]


@needs_emorynlp
def test_emorynlp_official_counts_and_speakers():
    corpus = read_emorynlp_csvs(EMORYNLP_DIR)
    assert corpus.classes == EMORYNLP_EMOTIONS
    # Counts of the files distributed with MELD (the same as reported by COSMIC and later work).
    expected = {"train": (659, 7551), "dev": (89, 954), "test": (79, 984)}
    for split, (dialogues, utterances) in expected.items():
        assert (corpus.num_dialogues(split), corpus.num_utterances(split)) == (dialogues, utterances)
    assert corpus.repaired == 0
    first = corpus.splits["train"][0][0]
    assert (first.dialogue_id, first.index, first.speaker) == ("s1e2c1", 1, "Monica Geller")
    assert EMORYNLP_EMOTIONS[first.emotion] == "Joyful" and first.sentiment is None
    speakers = {u.speaker for d in corpus.splits["train"] for u in d}
    assert "Monica Geller & Phoebe Buffay" in speakers  # a line said by two people
    keys = [d[0].dialogue_id for d in corpus.splits["train"]]
    assert len(set(keys)) == len(keys)
    assert corpus.max_speakers <= 9


# ---------------------------------------------------------------------------------------------
# Hand-made files


def test_meld_keys_order_and_speaker_slots(tmp_path):
    rows = [
        meld_row("c", "Joey", dialogue=3, utterance=5, number=1),
        meld_row("a", "Ross", dialogue=3, utterance=0, number=1),  # "Sr No." repeats: not a key
        meld_row("b", "Rachel", "joy", "positive", dialogue=3, utterance=2, number=2),
        meld_row("z", "Monica", "anger", "negative", dialogue=1, utterance=0, number=3),
        meld_row("d", "Ross", dialogue=3, utterance=7, number=4),
    ]
    corpus = read_meld_csvs(write_meld(tmp_path, rows))
    train = corpus.splits["train"]
    assert [d[0].dialogue_id for d in train] == ["1", "3"]
    assert [u.text for u in train[1]] == ["a", "b", "c", "d"]
    assert [u.index for u in train[1]] == [0, 2, 5, 7]
    assert speaker_slots(train[1]).tolist() == [0, 1, 2, 0]
    assert train[0][0].emotion == MELD_EMOTIONS.index("anger")
    assert train[0][0].sentiment == MELD_SENTIMENTS.index("negative")


def test_speaker_slots_past_the_cap_share_the_last_slot():
    dialogue = [TranscriptUtterance("d", i, name, "t", 0, None, None, None) for i, name in enumerate("abcdcea")]
    assert speaker_slots(dialogue).tolist() == [0, 1, 2, 3, 2, 4, 0]
    assert speaker_slots(dialogue, max_slots=3).tolist() == [0, 1, 2, 2, 2, 2, 0]
    with pytest.raises(ValueError, match="max_slots"):
        speaker_slots(dialogue, max_slots=0)


@pytest.mark.parametrize("bom", [False, True])
def test_meld_mojibake_is_repaired_and_counted(tmp_path, bom):
    rows = [
        meld_row("It\u00c2\u0092s fine.", dialogue=0, utterance=0),  # 'Â\x92' (twice mis-decoded)
        meld_row("I\u0092m here", dialogue=0, utterance=1),  # bare C1 control U+0092
        meld_row("\u00c2\u0093Quote\u00c2\u0094 and \u00c2\u0085", dialogue=0, utterance=2),
        meld_row("Already fine \u2019 caf\u00e9", dialogue=0, utterance=3),
        meld_row("Plain ASCII", "Ros\u00c3\u00a9", dialogue=0, utterance=4),  # speaker 'RosÃ©'
    ]
    write_meld(tmp_path, rows)
    if bom:
        path = tmp_path / MELD_FILES["train"]
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    corpus = read_meld_csvs(tmp_path)
    texts = [u.text for u in corpus.splits["train"][0]]
    assert texts[0] == "It\u2019s fine."
    assert texts[1] == "I\u2019m here"
    assert texts[2] == "\u201cQuote\u201d and \u2026"
    assert texts[3] == "Already fine \u2019 caf\u00e9"  # curly quotes are kept, not "uncurled"
    assert corpus.splits["train"][0][4].speaker == "Ros\u00e9"
    assert corpus.repaired == 4


def test_meld_windows_1252_file_is_read_and_repaired(tmp_path):
    write_meld(tmp_path, [meld_row("It\u2019s \u2026 caf\u00e9", dialogue=0, utterance=0)], encoding="cp1252")
    corpus = read_meld_csvs(tmp_path)
    assert corpus.splits["train"][0][0].text == "It\u2019s \u2026 caf\u00e9"
    assert corpus.repaired == 1


def test_meld_lf_line_endings_and_quoted_newline(tmp_path):
    path = tmp_path / MELD_FILES["train"]
    write_meld(tmp_path, [])
    write_csv(path, MELD_HEADER, [meld_row("two\nlines", utterance=0), meld_row("next", utterance=1)], newline="\n")
    corpus = read_meld_csvs(tmp_path)
    assert [u.text for u in corpus.splits["train"][0]] == ["two\nlines", "next"]


def test_emorynlp_speaker_lists_and_order(tmp_path):
    rows = [
        emorynlp_row("b", "['Ross Geller', 'Monica Geller']", "Joyful", scene=2, utterance=2),
        emorynlp_row("a", "['Monica Geller']", "Scared", scene=2, utterance=1),
        emorynlp_row("c", "['Monica Geller', 'Ross Geller', 'Ross Geller']", "Mad", scene=2, utterance=3),
        emorynlp_row("x", "['Joey Tribbiani']", "Sad", scene=1, utterance=1, episode=3),
    ]
    corpus = read_emorynlp_csvs(write_emorynlp(tmp_path, rows))
    train = corpus.splits["train"]
    assert [d[0].dialogue_id for d in train] == ["s1e1c2", "s1e3c1"]
    first = train[0]
    assert [u.text for u in first] == ["a", "b", "c"]
    # The same pair in either order is one speaker, named deterministically.
    assert [u.speaker for u in first] == ["Monica Geller", "Monica Geller & Ross Geller"] + [
        "Monica Geller & Ross Geller"
    ]
    assert speaker_slots(first).tolist() == [0, 1, 1]
    assert [EMORYNLP_EMOTIONS[u.emotion] for u in first] == ["Scared", "Joyful", "Mad"]
    assert (first[0].start, first[0].end) == ("00:00:01.000", "00:00:02.000")


# ---------------------------------------------------------------------------------------------
# Bad input: one-line DataError naming file, line, dialogue and field


def _assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def test_meld_missing_column(tmp_path):
    header = [h for h in MELD_HEADER if h != "Emotion"]
    rows = [[v for h, v in zip(MELD_HEADER, meld_row()) if h != "Emotion"]]
    write_meld(tmp_path, rows, header=header)
    with pytest.raises(DataError) as error:
        read_meld_csvs(tmp_path)
    _assert_one_line(error, MELD_FILES["train"], "missing column 'Emotion'")


def test_meld_unknown_emotion(tmp_path):
    write_meld(tmp_path, [meld_row(), meld_row(emotion="happy", dialogue=4, utterance=1)])
    with pytest.raises(DataError) as error:
        read_meld_csvs(tmp_path)
    _assert_one_line(error, MELD_FILES["train"], "line 3", "dialogue 4", "'Emotion'", "'happy'")


def test_meld_unknown_sentiment(tmp_path):
    write_meld(tmp_path, [meld_row(sentiment="meh", dialogue=2)])
    with pytest.raises(DataError) as error:
        read_meld_csvs(tmp_path)
    _assert_one_line(error, MELD_FILES["train"], "line 2", "dialogue 2", "'Sentiment'", "'meh'")


def test_meld_duplicate_key(tmp_path):
    rows = [meld_row("a", dialogue=7, utterance=3), meld_row("b", dialogue=7, utterance=4),
            meld_row("c", dialogue=7, utterance=3)]
    write_meld(tmp_path, rows)
    with pytest.raises(DataError) as error:
        read_meld_csvs(tmp_path)
    _assert_one_line(error, MELD_FILES["train"], "line 4", "dialogue 7", "'Utterance_ID'",
                     "duplicate utterance 3", "line 2")


def test_meld_empty_speaker(tmp_path):
    write_meld(tmp_path, [meld_row(speaker="  ", dialogue=5)])
    with pytest.raises(DataError) as error:
        read_meld_csvs(tmp_path)
    _assert_one_line(error, MELD_FILES["train"], "line 2", "dialogue 5", "'Speaker'", "empty")


def test_meld_non_integer_id(tmp_path):
    write_meld(tmp_path, [meld_row(dialogue="x1")])
    with pytest.raises(DataError) as error:
        read_meld_csvs(tmp_path)
    _assert_one_line(error, MELD_FILES["train"], "line 2", "'Dialogue_ID'", "not an integer")


def test_meld_ragged_row_and_missing_file(tmp_path):
    write_meld(tmp_path, [meld_row()[:-2]])
    with pytest.raises(DataError) as error:
        read_meld_csvs(tmp_path)
    _assert_one_line(error, MELD_FILES["train"], "line 2", "9 fields")
    (tmp_path / MELD_FILES["dev"]).unlink()
    write_meld(tmp_path, [meld_row()])
    (tmp_path / MELD_FILES["test"]).unlink()
    with pytest.raises(DataError) as error:
        read_meld_csvs(tmp_path)
    _assert_one_line(error, MELD_FILES["test"], "no such file")


def test_emorynlp_unknown_emotion(tmp_path):
    write_emorynlp(tmp_path, [emorynlp_row(), emorynlp_row(emotion="Angry", scene=4, utterance=2)])
    with pytest.raises(DataError) as error:
        read_emorynlp_csvs(tmp_path)
    _assert_one_line(error, EMORYNLP_FILES["train"], "line 3", "dialogue s1e1c4", "'Emotion'", "'Angry'")


def test_emorynlp_duplicate_key(tmp_path):
    write_emorynlp(tmp_path, [emorynlp_row("a", scene=2, utterance=1), emorynlp_row("b", scene=2, utterance=1)])
    with pytest.raises(DataError) as error:
        read_emorynlp_csvs(tmp_path)
    _assert_one_line(error, EMORYNLP_FILES["train"], "line 3", "dialogue s1e1c2", "duplicate utterance 1")


def test_emorynlp_missing_column(tmp_path):
    header = [h for h in EMORYNLP_HEADER if h != "Scene_ID"]
    rows = [[v for h, v in zip(EMORYNLP_HEADER, emorynlp_row()) if h != "Scene_ID"]]
    write_emorynlp(tmp_path, rows, header=header)
    with pytest.raises(DataError) as error:
        read_emorynlp_csvs(tmp_path)
    _assert_one_line(error, EMORYNLP_FILES["train"], "missing column 'Scene_ID'")


@pytest.mark.parametrize(
    "speaker",
    [
        "Ross Geller",  # not a list literal
        "['Ross Geller'",  # unbalanced
        "__import__('os').system('true')",  # code is never run
        "[]",
        "[1, 2]",
        "['ok', '']",
        "{'Ross Geller'}",
        "[" * 5000,  # too long / too deep
    ],
)
def test_emorynlp_unparsable_speaker_list(tmp_path, speaker):
    write_emorynlp(tmp_path, [emorynlp_row(), emorynlp_row(speaker=speaker, scene=3, utterance=2)])
    with pytest.raises(DataError) as error:
        read_emorynlp_csvs(tmp_path)
    _assert_one_line(error, EMORYNLP_FILES["train"], "line 3", "dialogue s1e1c3", "'Speaker'",
                     "cannot parse speaker list")


# ---------------------------------------------------------------------------------------------
# To a DialogueCorpus


def test_to_dialogue_corpus_with_a_stand_in_encoder(tmp_path):
    rows = [meld_row("a", "Ross", "joy", "positive", dialogue=0, utterance=0),
            meld_row("bb", "Rachel", "anger", "negative", dialogue=0, utterance=1),
            meld_row("ccc", "Ross", dialogue=0, utterance=2),
            meld_row("dddd", "Joey", "fear", "negative", dialogue=2, utterance=0)]
    transcripts = read_meld_csvs(write_meld(tmp_path, rows))

    def encode(dialogues):
        return np.array([[len(t), 1.0] for d in dialogues for _, t in d], dtype=np.float32)

    corpus = transcripts.to_dialogue_corpus(encode)
    assert corpus.metadata.classes == MELD_EMOTIONS
    assert corpus.metadata.modality_dims == {"text": 2}
    assert corpus.metadata.num_speakers == 2
    first = corpus.splits["train"][0]
    assert first.dialogue_id == "0"
    assert first.speakers.tolist() == [0, 1, 0]
    assert first.labels.tolist() == [MELD_EMOTIONS.index(e) for e in ("joy", "anger", "neutral")]
    assert first.features["text"][:, 0].tolist() == [1, 2, 3]
    assert corpus.splits["train"][1].features["text"][0, 0] == 4
    assert corpus.num_utterances("dev") == 1
    assert first.transcript == [("Ross", "a"), ("Rachel", "bb"), ("Ross", "ccc")]

    with pytest.raises(DataError, match="encoder returned shape"):
        transcripts.to_dialogue_corpus(lambda dialogues: np.zeros((sum(map(len, dialogues)) + 1, 2), dtype=np.float32))
