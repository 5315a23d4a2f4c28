"""`redifu serve`'s /live WebSocket: one live conversation per connection (FastAPI's TestClient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'redifu[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install 'redifu[test]'")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from conftest import make_tiny_config  # noqa: E402
from redifu.model import ReDiFu  # noqa: E402
from redifu.predict import Predictor  # noqa: E402
from redifu.serve import ServeSettings  # noqa: E402
from redifu.serve.app import create_app  # noqa: E402

CLASSES = ("neutral", "happy", "angry")


class WordEncoder:
    model_name, version = "words", "1"

    def encode(self, texts):
        return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=8).astype(np.float32) for t in texts])


def _predictor(causal=True):
    torch.manual_seed(0)
    model = ReDiFu(make_tiny_config(modality_dims={"text": 8}, num_classes=3, num_speakers=3, causal=causal,
                                    attention_window=4 if causal else None))
    return Predictor(model, CLASSES, device="cpu", text_encoder=WordEncoder())


def _client(predictor, **settings):
    return TestClient(create_app(lambda: predictor, settings=ServeSettings(**settings)))


def test_each_message_gets_its_utterances_emotion_as_a_session_gives_it():
    predictor = _predictor()
    lines = [("Ann", "I got the job!"), ("Bob", "No way."), ("Ann", "Yes way."), ("Cy", "Congrats!")] * 3
    expected_session = predictor.session()
    with _client(predictor) as client, client.websocket_connect("/live") as socket:
        for t, (speaker, text) in enumerate(lines):
            socket.send_json({"speaker": speaker, "text": text})
            answer = socket.receive_json()
            expected = expected_session.add(speaker, text)
            assert (answer["utterance"], answer["speaker"], answer["label"]) == (t, speaker, expected.label)
            assert answer["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
        for bad, detail in [("Ann: hello", "expected a JSON object"), ('{"text": "hi"}', "field 'speaker': missing"),
                            ('{"speaker": "Dee", "text": "hi"}', "distinct speaker number 4")]:
            socket.send_text(bad)
            answer = socket.receive_json()
            assert set(answer) == {"detail"} and detail in answer["detail"] and "\n" not in answer["detail"]
        socket.send_json({"speaker": "Bob", "text": "still here"})
        assert socket.receive_json()["utterance"] == len(lines)  # the connection and its session went on
        assert client.get("/model").json()["live"] == {"available": True, "max_sessions": 32, "session_idle_s": 300.0}


def test_sessions_beyond_the_limit_are_refused_with_a_code_and_reason():
    with _client(_predictor(), max_sessions=1) as client, client.websocket_connect("/live") as first:
        with client.websocket_connect("/live") as second, pytest.raises(WebSocketDisconnect) as refused:
            second.receive_json()
        assert refused.value.code == 1013 and "1 live sessions already" in refused.value.reason
        first.send_json({"speaker": "Ann", "text": "hi"})
        assert first.receive_json()["utterance"] == 0
    with _client(_predictor(), max_sessions=1) as client:  # a closed session frees its place
        for _ in range(2):
            with client.websocket_connect("/live") as socket:
                socket.send_json({"speaker": "Ann", "text": "hi"})
                assert socket.receive_json()["utterance"] == 0


def test_an_idle_session_is_closed():
    with _client(_predictor(), session_idle_s=0.2) as client, client.websocket_connect("/live") as socket:
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json()
        assert closed.value.code == 1001 and "idle" in closed.value.reason


def test_a_full_checkpoint_refuses_live_sessions():
    with _client(_predictor(causal=False)) as client, client.websocket_connect("/live") as socket:
        with pytest.raises(WebSocketDisconnect) as refused:
            socket.receive_json()
        assert refused.value.code == 1008 and "causal checkpoint" in refused.value.reason
        assert client.get("/model").json()["live"]["available"] is False
