"""Live conversations: the incremental causal model and :meth:`Predictor.session`."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_DIMS, make_tiny_config
from redifu.incremental import IncrementalReDiFu
from redifu.model import ReDiFu

LENGTH = 60


def _conversation(modalities, *, length=LENGTH, speakers=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(1, length, TINY_DIMS[m], generator=g) for m in modalities}
    return features, torch.randint(0, speakers, (1, length), generator=g)


def _assert_incremental_equals_prefix(model, modalities):
    features, speakers = _conversation(modalities)
    mask = torch.ones(1, LENGTH, dtype=torch.bool)
    incremental = IncrementalReDiFu(model)
    with torch.no_grad():
        whole = model(features, speakers, mask).logits[0]  # causal: row t is the prefix's last
    for t in range(LENGTH):
        logits = incremental.step({m: features[m][0, t] for m in modalities}, int(speakers[0, t]))
        if t in (0, 1, 7, 33, LENGTH - 1):  # and the prefix itself, run on its own
            with torch.no_grad():
                prefix = model({m: f[:, :t + 1] for m, f in features.items()}, speakers[:, :t + 1],
                               mask[:, :t + 1]).logits[0, -1]
            torch.testing.assert_close(logits, prefix, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits, whole[t], atol=1e-5, rtol=0)
    return incremental


TEXT_ONLY = [dict(graph="modality", fusion="text_guided"), dict(graph="modality", fusion="symmetric"),
             dict(graph="off", fusion="concat"), dict(denoiser="temporal", denoise_modalities=("text",))]
THREE = [dict(denoiser="dual", graph="modality+cross", fusion="text_guided", cross_window=2),
         dict(denoiser="temporal", graph="modality", fusion="symmetric"),
         dict(denoiser="dual", graph="off", fusion="concat", logit_weights={"text": 1.0, "audio": 0.5}),
         dict(denoiser="temporal", graph="modality+cross", fusion="text_guided", fusion_aligned=False,
              speaker_aware=False)]


@pytest.mark.parametrize("position_encoding,attention_window", [("sinusoidal", 5), ("rotary", None),
                                                                ("rotary", 8), ("none", 0)])
@pytest.mark.parametrize("options", TEXT_ONLY + THREE)
def test_every_step_equals_the_causal_model_on_the_whole_prefix(options, position_encoding, attention_window):
    modalities = ("text",) if options in TEXT_ONLY else tuple(TINY_DIMS)
    torch.manual_seed(0)
    config = make_tiny_config(modality_dims={m: TINY_DIMS[m] for m in modalities}, num_speakers=4, window=3,
                              graph_layers=2, fusion_layers=2, denoiser_layers=2, causal=True,
                              position_encoding=position_encoding, attention_window=attention_window,
                              **options)
    model = ReDiFu(config).eval()
    _assert_incremental_equals_prefix(model, modalities)


def test_what_a_session_keeps_is_bounded_by_the_windows():
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(num_speakers=4, causal=True, attention_window=4, cross_window=1,
                                    graph_layers=2, fusion_layers=2)).eval()
    features, speakers = _conversation(tuple(TINY_DIMS), length=40)
    incremental = IncrementalReDiFu(model)
    sizes = []
    for t in range(40):
        incremental.step({m: f[0, t] for m, f in features.items()}, int(speakers[0, t]))
        sizes.append(incremental.state_bytes())
    assert sizes[10] == sizes[-1] > sizes[0]  # grows until the windows are full, then stays


def test_incremental_evaluation_refuses_a_full_model(tiny_config):
    with pytest.raises(ValueError, match="needs a causal model"):
        IncrementalReDiFu(ReDiFu(tiny_config))


# Predictor.session ----------------------------------------------------------------------------

import numpy as np  # noqa: E402

from redifu.errors import CheckpointError, DataError  # noqa: E402
from redifu.predict import Predictor  # noqa: E402

CLASSES = ("neutral", "happy", "angry")
WORDS = ["yes", "no", "great", "awful", "maybe", "sure", "wait", "what"]


class PastContextEncoder:
    """A stand-in context-aware text encoder: utterance t's vector mixes its text with the two
    utterances before it (as a fine-tuned encoder with ``past=2, future=0`` would). It records the
    dialogues it was asked to encode."""

    model_name, version = "stand-in", "1"

    def __init__(self, dim=16, past=2):
        self.dim, self.past, self.calls = dim, past, []

    def _vector(self, text):
        seed = sum(ord(c) * (i + 1) for i, c in enumerate(text))
        return np.random.default_rng(seed).normal(size=self.dim).astype(np.float32)

    def encode_dialogues(self, dialogues):
        self.calls.extend(len(d) for d in dialogues)
        rows = []
        for dialogue in dialogues:
            for t in range(len(dialogue)):
                context = dialogue[max(0, t - self.past):t + 1]
                rows.append(sum((0.5 ** (len(context) - 1 - i)) * self._vector(f"{s}: {x}")
                                for i, (s, x) in enumerate(context)))
        return np.stack(rows)


def _predictor(dims, *, causal=True, future=0, **changes):
    torch.manual_seed(0)
    options = dict(modality_dims=dims, num_classes=3, num_speakers=3, hidden_size=16, num_heads=2, dropout=0.1,
                   window=3, graph_layers=2, fusion_layers=2, causal=causal)
    if causal:
        options["attention_window"] = 4
    options.update(changes)
    model = ReDiFu(make_tiny_config(**options))
    extractor = {"name": "runs/encoders/stand-in", "version": "1",
                 "settings": {"context": {"past": 2, "future": future}}}
    return Predictor(model, CLASSES, extractors={"text": extractor}, device="cpu",
                     text_encoder=PastContextEncoder(dims["text"]))


def _lines(count=30, seed=0):
    rng = np.random.default_rng(seed)
    return [(["Ann", "Bob", "Cy"][int(rng.integers(3))], " ".join(rng.choice(WORDS, 3))) for _ in range(count)]


def test_a_session_predicts_each_utterance_as_the_whole_prefix_does():
    predictor = _predictor({"text": 16})
    session = predictor.session(dialogue_id="call")
    lines = _lines()
    for t, (speaker, text) in enumerate(lines):
        live = session.add(speaker=speaker, text=text)
        prefix = predictor.predict([{"speaker": s, "text": x} for s, x in lines[:t + 1]])[-1]
        assert (live.dialogue_id, live.index, live.speaker, live.label) == ("call", t, speaker, prefix.label)
        for c in CLASSES:
            assert live.probabilities[c] == pytest.approx(prefix.probabilities[c], abs=1e-5)
    encoder = predictor.text_encoder
    session_calls = encoder.calls[::2]  # session and prefix calls alternate
    assert max(session_calls) == 3  # the new utterance and the two before it: the encoder's past, never more


def test_a_three_modality_session_takes_feature_vectors():
    dims = {"text": 16, "audio": 6, "visual": 5}
    predictor = _predictor(dims, denoiser="temporal", graph="modality+cross", cross_window=1)
    rng = np.random.default_rng(1)
    rows = [{"speaker": ["Ann", "Bob"][t % 2], **{m: rng.normal(size=d).tolist() for m, d in dims.items()}}
            for t in range(25)]
    session = predictor.session()
    for t, row in enumerate(rows):
        live = session.add(**row)
        prefix = predictor.predict(rows[:t + 1])[-1]
        assert live.label == prefix.label
        assert [live.probabilities[c] for c in CLASSES] == pytest.approx([prefix.probabilities[c] for c in CLASSES],
                                                                         abs=1e-5)


def test_a_bad_utterance_is_a_one_line_error_and_the_session_goes_on():
    predictor = _predictor({"text": 16, "audio": 4})
    session = predictor.session()
    first = session.add("Ann", [0.1] * 16, audio=[0.0] * 4)
    for bad, match in [(dict(speaker="Bob", text=[0.1] * 16), "field 'audio': missing"),
                       (dict(speaker="Bob", text=[0.1] * 3, audio=[0.0] * 4), "field 'text'"),
                       (dict(speaker="Bob", audio=[0.0] * 4), "field 'text': missing"),
                       (dict(speaker="", text="hi", audio=[0.0] * 4), "field 'speaker'"),
                       (dict(speaker="Bob", text="hi", audio=[0.0] * 4, mood="x"), "field 'mood': unknown")]:
        with pytest.raises(DataError, match=match) as caught:
            session.add(**bad)
        assert "\n" not in str(caught.value)
    assert session.utterances == 1
    for name in ("Bob", "Cy"):
        session.add(name, [0.2] * 16, audio=[0.0] * 4)
    with pytest.raises(DataError, match="distinct speaker number 4"):
        session.add("Dee", [0.2] * 16, audio=[0.0] * 4)
    assert session.add("Ann", [0.1] * 16, audio=[0.0] * 4).index == 3 and first.index == 0


@pytest.mark.parametrize("causal,future,match", [(False, 0, "live sessions need a causal checkpoint"),
                                                 (True, 2, "context reads 2 later utterance")])
def test_a_session_needs_a_causal_checkpoint_with_past_only_text(causal, future, match):
    predictor = _predictor({"text": 16}, causal=causal, future=future)
    with pytest.raises(CheckpointError, match=match) as caught:
        predictor.session()
    assert "\n" not in str(caught.value)


# redifu predict --live ------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from redifu.checkpoint import save_checkpoint  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def _live_checkpoint(directory, *, causal=True):
    torch.manual_seed(0)
    config = make_tiny_config(modality_dims={"text": 8}, num_classes=3, num_speakers=3, causal=causal,
                              attention_window=4 if causal else None)
    return save_checkpoint(directory, ReDiFu(config), CLASSES)


def _live_process(checkpoint):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "redifu", "predict", "--live", "--checkpoint", str(checkpoint),
                             "--device", "cpu"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_predict_live_answers_each_line_as_it_arrives(tmp_path):
    checkpoint = _live_checkpoint(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    rows = [{"speaker": ["Ann", "Bob"][t % 2], "text": rng.normal(size=8).round(4).tolist()} for t in range(6)]
    process = _live_process(checkpoint)
    answers = []
    try:
        for row in rows:  # the next line is written only once the previous answer has been read
            process.stdin.write(json.dumps(row) + "\n")
            process.stdin.flush()
            answers.append(json.loads(process.stdout.readline()))
        process.stdin.write("not a row\n\n")
        process.stdin.close()
        process.wait(timeout=60)
        rest, errors = process.stdout.read(), process.stderr.read()
    finally:
        process.kill()
    assert process.returncode == 0 and rest == ""
    assert errors.strip() == "redifu predict --live: line 7: expected 'Speaker: text' or a JSON object"
    session = Predictor.from_pretrained(checkpoint, device="cpu").session()
    for t, (row, answer) in enumerate(zip(rows, answers)):
        expected = session.add(**row)
        assert (answer["utterance"], answer["speaker"], answer["label"]) == (t, row["speaker"], expected.label)
        assert answer["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)


def test_predict_live_refuses_a_full_checkpoint_in_one_line(tmp_path):
    process = _live_process(_live_checkpoint(tmp_path / "ckpt", causal=False))
    _, errors = process.communicate("", timeout=60)
    assert process.returncode != 0
    assert errors.strip().count("\n") == 0 and "live sessions need a causal checkpoint" in errors


def test_a_live_line_is_a_speaker_and_text_or_a_json_row():
    from redifu.predict.live_stream import parse_live_line

    assert parse_live_line("  Ann: I got the job: really!  ") == {"speaker": "Ann", "text": "I got the job: really!"}
    assert parse_live_line('{"speaker": "Bob", "text": "no"}') == {"speaker": "Bob", "text": "no"}
    assert parse_live_line("   ") is None
    for bad, match in [('{"text": "x"}', "field 'speaker': missing"), ("{oops", "not JSON"), ("[1]", "expected"),
                       (": hi", "expected 'Speaker: text'")]:
        with pytest.raises(DataError, match=match):
            parse_live_line(bad)
