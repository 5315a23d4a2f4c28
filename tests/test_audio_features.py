"""openSMILE audio features on speech rendered with espeak-ng, their cache and `features extract`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opensmile", reason="needs the audio extra: pip install 'redifu[audio]'")

from redifu.cli import main  # noqa: E402
from redifu.data.dialogue import DataError  # noqa: E402
from redifu.features.audio import AudioFeatureExtractor, parse_timestamp  # noqa: E402

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng not installed (apt-get install -y espeak-ng)")


def _speak(path: Path, text: str) -> Path:
    subprocess.run([ESPEAK, "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    if ESPEAK is None:
        pytest.skip("espeak-ng not installed (apt-get install -y espeak-ng)")
    return _speak(tmp_path_factory.mktemp("speech") / "hello.wav", "Hello there, how are you doing today?")


@pytest.fixture
def extractor(tmp_path) -> AudioFeatureExtractor:
    return AudioFeatureExtractor("IS10_paraling", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(("value", "seconds"), [("00:14:38,127", 878.127), ("01:00:00.5", 3600.5), ("2:03", 123.0),
                                                ("12.5", 12.5), (3, 3.0)])
def test_parse_timestamp(value, seconds):
    assert parse_timestamp(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "-1", True, None, "1:xx"])
def test_parse_timestamp_rejects(value):
    with pytest.raises(ValueError):
        parse_timestamp(value)


def test_unknown_feature_set():
    with pytest.raises(ValueError, match="feature_set"):
        AudioFeatureExtractor("IS11")


@needs_espeak
def test_is10_shape_determinism_and_cache(speech, extractor, tmp_path):
    first = extractor.extract_file(speech)
    assert first.shape == (1582,) and first.dtype == np.float32
    assert np.isfinite(first).all() and np.abs(first).sum() > 0
    assert extractor.extractions == 1
    again = extractor.extract_file(speech)
    assert extractor.extractions == 1  # served from the cache
    np.testing.assert_array_equal(first, again)
    fresh = AudioFeatureExtractor("IS10_paraling", cache_dir=tmp_path / "other-cache")
    np.testing.assert_array_equal(fresh.extract_file(speech), first)  # deterministic
    entries = list((tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == 1
    with np.load(entries[0], allow_pickle=False) as stored:
        np.testing.assert_array_equal(stored["features"], first)
    # A copy with the same content hits the same entry; another segment does not.
    copy = tmp_path / "copy.wav"
    shutil.copyfile(speech, copy)
    extractor.extract_file(copy)
    assert extractor.extractions == 1
    extractor.extract_file(speech, 0.2, 1.2)
    assert extractor.extractions == 2
    assert extractor.info.dimension == 1582 and extractor.info.settings["sampling_rate"] == 16000


@needs_espeak
def test_egemaps(speech, tmp_path):
    extractor = AudioFeatureExtractor("eGeMAPSv02", cache_dir=tmp_path)
    features = extractor.extract_file(speech)
    assert features.shape == (88,) and np.isfinite(features).all()
    assert extractor.info.name == "eGeMAPSv02" and extractor.info.version.startswith("opensmile==")


@needs_espeak
def test_segment_matches_cut_file(speech, extractor, tmp_path):
    import soundfile

    signal, rate = soundfile.read(speech, dtype="float32")
    start, end = 0.3, 1.5
    cut = tmp_path / "cut.wav"
    soundfile.write(cut, signal[round(start * rate):round(end * rate)], rate, subtype="FLOAT")
    segment = extractor.extract_file(speech, "00:00:00,300", "00:00:01,500")
    assert segment.shape == (1582,)
    np.testing.assert_allclose(segment, extractor.extract_file(cut), rtol=1e-4, atol=1e-4)
    assert not np.allclose(segment, extractor.extract_file(speech))


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_sampling_rates_same_dimension(rate, tmp_path):
    import soundfile

    time = np.arange(int(1.5 * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * time) * (1 + 0.5 * np.sin(2 * np.pi * 3 * time))  # voiced-like hum
    stereo = np.stack([tone, 0.5 * tone], axis=1).astype(np.float32)  # (S, 2): mixed down
    path = tmp_path / f"tone-{rate}.wav"
    soundfile.write(path, stereo, rate)
    for name, size in (("IS10_paraling", 1582), ("eGeMAPSv02", 88)):
        features = AudioFeatureExtractor(name, cache_dir=tmp_path / "cache").extract_file(path)
        assert features.shape == (size,) and np.isfinite(features).all()


def _one_line_error(call, *names: str) -> str:
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    return message


@needs_espeak
def test_errors_are_one_line_naming_the_file(speech, extractor, tmp_path):
    missing = tmp_path / "absent.wav"
    assert "not found" in _one_line_error(lambda: extractor.extract_file(missing), str(missing))
    assert "after its start" in _one_line_error(lambda: extractor.extract_file(speech, 1.0, 1.0), str(speech))
    assert "after its start" in _one_line_error(lambda: extractor.extract_file(speech, 1.0, 0.5), str(speech))
    assert "empty segment" in _one_line_error(lambda: extractor.extract_file(speech, 30, 31), str(speech))
    assert "too short" in _one_line_error(lambda: extractor.extract_file(speech, 0.0, 0.01), str(speech))
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all")
    assert "cannot read" in _one_line_error(lambda: extractor.extract_file(garbage), str(garbage))
    assert extractor.extractions == 1  # only the too-short segment reached openSMILE


@needs_espeak
def test_cli_features_extract(tmp_path, capsys):
    from redifu.predict import ConversationReader

    _speak(tmp_path / "a.wav", "I am so happy to see you.")
    _speak(tmp_path / "b.wav", "Leave me alone, please.")
    rows = [
        {"dialogue_id": "d1", "utterance": 0, "speaker": "A", "text": "I am so happy to see you.", "audio_path": "a.wav"},
        {"dialogue_id": "d1", "utterance": 1, "speaker": "B", "text": "Leave me alone, please.", "audio_path": "b.wav",
         "start": "00:00:00,100", "end": 1.2},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out" / "feats.jsonl"
    out.parent.mkdir()
    code = main(["features", "extract", str(source), "--output", str(out), "--cache-dir", str(tmp_path / "cache")])
    summary = capsys.readouterr().err
    assert code == 0, summary
    assert "2 utterances (audio 1582-d)" in summary
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["utterance"] for r in written] == [0, 1]
    for row in written:
        assert "audio" not in row and row["audio_path"].endswith(".wav")
        vector = np.load(out.parent / row["audio_npy"], allow_pickle=False)
        assert vector.shape == (1582,) and vector.dtype == np.float32
    assert written[0]["audio_npy"] == "feats_features/d1_0_audio.npy"
    # `redifu predict`'s reader takes OUT as it is.
    (dialogue,) = list(ConversationReader(out))
    assert [u.features["audio"].shape for u in dialogue] == [(1582,), (1582,)]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "audio_path": "nowhere.wav"}) + "\n")
    code = main(["features", "extract", str(bad), "--output", str(tmp_path / "bad-out.jsonl")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert f"{bad}:1" in error and "nowhere.wav" in error and "not found" in error
    assert not (tmp_path / "bad-out.jsonl").exists() and not (tmp_path / "bad-out_features").exists()


@needs_espeak
def test_predict_extracts_audio_with_the_recorded_extractor(speech, tmp_path, capsys):
    """`redifu predict` takes an audio file per row and computes the model's own audio features."""
    import torch

    from redifu.checkpoint import save_checkpoint
    from redifu.model import ReDiFu, ReDiFuConfig
    from redifu.predict import Predictor

    torch.manual_seed(0)
    model = ReDiFu(ReDiFuConfig(modality_dims={"text": 4, "audio": 88}, num_classes=2, num_speakers=2,
                                hidden_size=8, num_heads=2))
    extractor = {"name": "eGeMAPSv02", "version": "test", "dimension": 88, "settings": {"feature_set": "eGeMAPSv02"}}
    recorded = save_checkpoint(tmp_path / "ckpt", model, ("calm", "upset"),
                               {"modalities": ["text", "audio"], "extractors": {"audio": extractor}})
    bare = save_checkpoint(tmp_path / "bare", model, ("calm", "upset"), {"modalities": ["text", "audio"]})
    rows = [{"dialogue_id": "d", "utterance": i, "speaker": "A", "text": [0.1 * i, 0.2, 0.3, 0.4],
             "audio_path": str(speech)} for i in range(2)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    predictor = Predictor.from_pretrained(recorded, device="cpu")
    [dialogue] = list(predictor.read(source))
    expected = AudioFeatureExtractor("eGeMAPSv02", cache_dir=tmp_path / "cache").extract_file(speech)
    np.testing.assert_allclose(dialogue[0].features["audio"], expected, rtol=1e-5, atol=1e-6)
    assert main(["predict", "--checkpoint", str(recorded), str(source), "--output", str(tmp_path / "out.jsonl"),
                 "--no-progress"]) == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(bare), str(source), "--output", str(tmp_path / "bare.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "audio_path" in err and "does not record" in err and err.count("\n") == 1
    assert not (tmp_path / "bare.jsonl").exists()


# -- containers (MELD's .mp4 clips) through PyAV ------------------------------------------------


@pytest.fixture(scope="module")
def clip(speech, tmp_path_factory) -> Path:
    """``speech`` as AAC stereo in an .mp4 with a video track, like MELD's clips."""
    from audio_fixtures import encode_mp4

    return encode_mp4(speech, tmp_path_factory.mktemp("clip") / "dia0_utt0.mp4")


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@needs_espeak
def test_mp4_decodes_to_the_same_speech(speech, clip, extractor, tmp_path):
    from redifu.features.audio import _read_audio

    signal, rate = _read_audio(clip, 0.0, None)
    assert signal.shape[0] == 2 and rate == 22050  # (C, S): the AAC track's channels and rate
    wav, _ = _read_audio(speech, 0.0, None)
    n = wav.shape[1]
    assert n <= signal.shape[1] <= n + 2048  # AAC pads at most a frame or two
    assert _correlation(signal[0, :n], wav[0]) > 0.99  # aligned: the left channel is the speech
    assert _correlation(signal[1], signal[0]) > 0.99  # and the right channel half of it
    assert np.sqrt((signal[1] ** 2).mean() / (signal[0] ** 2).mean()) == pytest.approx(0.5, abs=0.02)
    # A segment is cut at the same samples as in the WAV.
    part, _ = _read_audio(clip, 0.5, 1.25)
    wav_part, _ = _read_audio(speech, 0.5, 1.25)
    assert part.shape[1] == wav_part.shape[1] and abs(part.shape[1] - 0.75 * rate) <= 1
    assert _correlation(part[0], wav_part[0]) > 0.99
    # Features: the right size, and close to those of the lossless original (AAC is lossy).
    from_mp4 = extractor.extract_file(clip)
    assert from_mp4.shape == (1582,) and np.isfinite(from_mp4).all()
    assert _correlation(from_mp4, extractor.extract_file(speech)) > 0.97
    other = AudioFeatureExtractor("IS10_paraling", cache_dir=tmp_path / "again")
    np.testing.assert_array_equal(other.extract_file(clip), from_mp4)  # deterministic decode


@needs_espeak
def test_mp4_errors_are_one_line(speech, extractor, tmp_path):
    from audio_fixtures import encode_mp4

    silent = encode_mp4(speech, tmp_path / "video-only.mp4", audio=False)
    assert "no audio stream" in _one_line_error(lambda: extractor.extract_file(silent), str(silent), "video")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 10)
    assert "cannot read" in _one_line_error(lambda: extractor.extract_file(broken), str(broken))
    clip = encode_mp4(speech, tmp_path / "ok.m4a", video=False, stereo=False)
    assert "empty segment" in _one_line_error(lambda: extractor.extract_file(clip, 30, 31), str(clip))
    assert extractor.extractions == 0


@needs_espeak
def test_features_extract_declares_the_extractor_and_predict_checks_it(speech, clip, tmp_path, capsys):
    """`features extract` names its extractor per row; `predict` refuses features of another kind."""
    import torch

    from redifu.checkpoint import save_checkpoint
    from redifu.model import ReDiFu, ReDiFuConfig

    rows = [{"dialogue_id": "d", "utterance": i, "speaker": "AB"[i], "text": "hi", "audio_path": str(path)}
            for i, path in enumerate((clip, speech))]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "feats.csv"
    assert main(["features", "extract", str(source), "--output", str(out), "--audio-set", "eGeMAPSv02",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    import csv

    with out.open(newline="") as stream:
        written = list(csv.DictReader(stream))
    assert [r["audio_extractor"] for r in written] == ["eGeMAPSv02", "eGeMAPSv02"]

    torch.manual_seed(0)
    model = ReDiFu(ReDiFuConfig(modality_dims={"text": 384, "audio": 88}, num_classes=2, num_speakers=2,
                                hidden_size=8, num_heads=2))
    same = {"name": "eGeMAPSv02", "version": "v", "dimension": 88, "settings": {}}
    other = {"name": "my-88-d-audio-net", "version": "v", "dimension": 88, "settings": {}}
    for name, recorded, code in (("same", same, 0), ("other", other, 2)):
        checkpoint = save_checkpoint(tmp_path / name, model, ("a", "b"),
                                     {"modalities": ["text", "audio"], "extractors": {"audio": recorded}})
        # Precomputed text vectors: the test needs no text encoder.
        text_rows = tmp_path / f"{name}.jsonl"
        text_rows.write_text("".join(json.dumps({**{k: v for k, v in r.items() if k != "text"},
                                                 "text": [0.0] * 384, "audio_npy": str(out.parent / r["audio_npy"])})
                                     + "\n" for r in written))
        assert main(["predict", "--checkpoint", str(checkpoint), str(text_rows), "--output",
                     str(tmp_path / f"{name}-out.jsonl"), "--no-progress"]) == code
        err = capsys.readouterr().err
        if code:
            assert err.count("\n") == 1 and f"{name}.jsonl:1: dialogue 'd': field 'audio_extractor'" in err
            assert "features from 'eGeMAPSv02', but the model was trained on audio features from " \
                   "'my-88-d-audio-net'" in err
            assert not (tmp_path / f"{name}-out.jsonl").exists()
