"""`redifu serve`: the API through FastAPI's TestClient (answers equal Predictor's, one-line 4xx
faults, explain, health, model, batching), the micro-batcher and the body-size limit alone, and
the CLI (options, the missing extra, a real uvicorn server)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'redifu[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install 'redifu[test]'")

from fastapi.testclient import TestClient  # noqa: E402

from redifu.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from redifu.cli import main  # noqa: E402
from redifu.model import ReDiFu, ReDiFuConfig  # noqa: E402
from redifu.predict import Predictor  # noqa: E402
from redifu.serve import ServeSettings  # noqa: E402
from redifu.serve.app import create_app  # noqa: E402
from redifu.serve.batching import MicroBatcher  # noqa: E402
from redifu.serve.body_limit import BodySizeLimit  # noqa: E402

CLASSES = ("neutral", "joy", "anger")
DIMS = {"text": 16, "audio": 4}


class HashTextEncoder:
    """A stand-in text encoder: a fixed pseudo-random vector per text (no model to load)."""

    model_name = "hash-encoder"
    version = "1"

    def __init__(self, dimension: int = DIMS["text"]) -> None:
        self.dimension = dimension

    def encode(self, texts):
        rows = [np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little"))
                .normal(size=self.dimension) for t in texts]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dimension)


def save_tiny(directory: Path, dims=DIMS, speakers: int = 2, **changes) -> Path:
    torch.manual_seed(0)
    config = ReDiFuConfig(modality_dims=dims, num_classes=len(CLASSES), num_speakers=speakers, hidden_size=8,
                          num_heads=2, dropout=0.1, window=2, graph_layers=1, fusion_layers=1, **changes)
    return save_checkpoint(directory, ReDiFu(config), CLASSES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("serve") / "ckpt")


def load_predictor(checkpoint: Path, batch_size: int = 8) -> Predictor:
    return Predictor.from_pretrained(checkpoint, device="cpu", text_encoder=HashTextEncoder(), batch_size=batch_size)


def make_app(checkpoint: Path, **settings):
    return create_app(lambda: load_predictor(checkpoint), settings=ServeSettings(**settings))


@pytest.fixture(scope="module")
def client(checkpoint):
    with TestClient(make_app(checkpoint, max_utterances=12, max_body_bytes=64 * 1024)) as test_client:
        yield test_client


def conversation(length: int = 4, seed: int = 0, speakers=("Ann", "Bob")) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"speaker": speakers[i % len(speakers)], "text": f"utterance {i} of conversation {seed}",
             "audio": rng.normal(size=DIMS["audio"]).round(4).tolist()} for i in range(length)]


def assert_equal_to_predictor(answer: dict, expected) -> None:
    assert len(answer["utterances"]) == len(expected) > 0
    for record, p in zip(answer["utterances"], expected):
        assert (record["utterance"], record["speaker"], record["label"]) == (p.index, p.speaker, p.label)
        assert record["probabilities"] == pytest.approx(p.probabilities, abs=1e-5)


# -- the API ---------------------------------------------------------------------------------


def test_predict_answers_what_the_predictor_answers(client, checkpoint):
    utterances = conversation(5)
    response = client.post("/predict", json={"dialogue_id": "d1", "utterances": utterances})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["dialogue_id"] == "d1"
    expected = load_predictor(checkpoint).predict({"dialogue_id": "d1", "utterances": utterances})
    assert_equal_to_predictor(answer, expected)
    assert all("attention" not in u for u in answer["utterances"])
    assert all(sum(u["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for u in answer["utterances"])
    assert {u["label"] for u in answer["utterances"]} <= set(CLASSES)


def test_answers_follow_the_request_order(client, checkpoint):
    utterances = conversation(4)
    orders = [2, 0, 3, 1]
    shuffled = [{**u, "utterance": o} for u, o in zip(utterances, orders)]
    answer = client.post("/predict", json={"utterances": shuffled}).json()
    assert [u["utterance"] for u in answer["utterances"]] == orders
    assert answer["dialogue_id"] == "dialogue"
    by_order = {p.index: p for p in load_predictor(checkpoint).predict({"utterances": shuffled})}
    assert_equal_to_predictor(answer, [by_order[o] for o in orders])


def test_explain_adds_the_predictor_explanation(client, checkpoint):
    utterances = conversation(6)
    answer = client.post("/predict", json={"utterances": utterances, "explain": True}).json()
    expected = load_predictor(checkpoint).predict({"utterances": utterances}, explain=True)
    assert_equal_to_predictor(answer, expected)
    for record, p in zip(answer["utterances"], expected):
        given, wanted = record["attention"], p.attention
        assert [(n["utterance"], n["relation"]) for n in given["neighbours"]] == \
            [(n["utterance"], n["relation"]) for n in wanted["neighbours"]] != []
        assert [n["weight"] for n in given["neighbours"]] == pytest.approx([n["weight"] for n in wanted["neighbours"]],
                                                                           abs=1e-5)
        assert given["gates"] == pytest.approx(wanted["gates"], abs=1e-5) and set(given["gates"]) == {"audio"}


def one_line(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str)
    assert "\n" not in body["detail"] and "Traceback" not in body["detail"]
    return body["detail"]


FAULTS = {
    "empty conversation": ({"utterances": []}, 422, r"^field 'utterances': empty; a conversation needs"),
    "no utterances field": ({"dialogue_id": "d1"}, 422, r"^field 'utterances': missing"),
    "utterances not a list": ({"utterances": "Ann: hi"}, 422, r"^field 'utterances': must be a list"),
    "missing speaker": ({"utterances": [{"text": "hi", "audio": [0.0] * 4}]}, 422,
                        r"^utterances\[0\]: dialogue 'dialogue': field 'speaker': missing$"),
    "missing modality": ({"utterances": [{"speaker": "A", "text": "hi"}]}, 422,
                         r"^utterances\[0\]: dialogue 'dialogue': field 'audio_npy': missing: the model takes "
                         r"text, audio"),
    "wrong feature size": ({"utterances": [{"speaker": "A", "text": "hi", "audio": [0.0] * 5}]}, 422,
                           r"^utterances\[0\]: .*field 'audio': 5 values, but the model takes 4-d audio features$"),
    "NaN in a vector": ('{"utterances": [{"speaker": "A", "text": "hi", "audio": [NaN, 0, 0, 0]}]}', 422,
                        r"field 'audio': contains NaN or infinity$"),
    "too many utterances": ({"utterances": conversation(13)}, 422,
                            r"^field 'utterances': 13 utterances, but this server takes at most 12 per request"),
    "too many speakers": ({"utterances": conversation(3, speakers=("Ann", "Bob", "Cy"))}, 422,
                          r"^utterances\[2\]: .*field 'speaker': 'Cy' is distinct speaker number 3 .* 2 speaker slot"),
    "a file path": ({"utterances": [{"speaker": "A", "text": "hi", "audio_npy": "/etc/hostname"}]}, 422,
                    r"field 'audio_npy': file paths are not read here"),
    "an audio path": ({"utterances": [{"speaker": "A", "text": "hi", "audio_path": "/etc/hostname"}]}, 422,
                      r"field 'audio_path': file paths are not read here"),
    "duplicate order": ({"utterances": [{**u, "utterance": 0} for u in conversation(2)]}, 422,
                        r"field 'utterance': order 0 appears twice"),
    "another dialogue's row": ({"dialogue_id": "d1", "utterances": [{**conversation(1)[0], "dialogue_id": "d2"}]},
                               422, r"^utterances\[0\]: field 'dialogue_id': 'd2' is not the request's 'd1'"),
    "unknown field": ({"utterances": conversation(1), "explian": True}, 422, r"^field 'explian': unknown"),
    "explain not a boolean": ({"utterances": conversation(1), "explain": "yes"}, 422,
                              r"^field 'explain': must be true or false"),
    "not an object": ("[1, 2]", 422, r"^body: expected a JSON object with 'utterances', got a list$"),
    "malformed JSON": ('{"utterances": [', 400, r"^body: invalid JSON \(Expecting value at line 1 column 17\)$"),
    "empty body": ("", 400, r"^body: empty"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_is_one_4xx_with_a_one_line_reason(client, fault):
    body, status, pattern = FAULTS[fault]
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post("/predict", content=content, headers={"content-type": "application/json"})
    detail = one_line(response, status)
    assert __import__("re").search(pattern, detail), detail


def test_body_too_large_is_413_with_or_without_content_length(client):
    big = json.dumps({"utterances": conversation(12) + [{"speaker": "A", "text": "x" * 70_000}]})
    declared = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert "larger than this server's limit of 65536 bytes" in one_line(declared, 413)

    def chunks():  # no Content-Length: chunked transfer
        for start in range(0, len(big), 4096):
            yield big[start:start + 4096].encode()

    chunked = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert "larger than this server's limit" in one_line(chunked, 413)
    # the server still serves
    assert client.post("/predict", json={"utterances": conversation(2)}).status_code == 200


def test_body_limit_stops_reading_at_the_limit():
    """The middleware refuses a chunked body at the first chunk past the limit, unread beyond it."""
    sent: list[dict] = []
    read = 0

    async def receive():
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"x" * 100, "more_body": read < 1000}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        from redifu.serve.body_limit import BodyTooLarge

        try:
            while (await receive()).get("more_body"):
                pass
        except BodyTooLarge as error:
            await send({"type": "http.response.start", "status": 413, "headers": []})
            await send({"type": "http.response.body", "body": str(error).encode()})

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodySizeLimit(app, max_bytes=1000)(scope, receive, send))
    assert read == 11 and sent[0]["status"] == 413
    # a declared length over the limit is refused before any of the body is read
    read, sent[:] = 0, []
    scope["headers"] = [(b"content-length", b"5000")]
    asyncio.run(BodySizeLimit(app, max_bytes=1000)(scope, receive, send))
    assert read == 0 and sent[0]["status"] == 413 and json.loads(sent[1]["body"])["detail"].startswith("body: larger")


def test_internal_error_is_a_one_line_500_and_logged(checkpoint, caplog, monkeypatch):
    app = make_app(checkpoint)
    with TestClient(app) as test_client:
        predictor = app.state.serving.predictor

        def broken(*args, **kwargs):
            raise RuntimeError("secret internals\nsecond line")

        monkeypatch.setattr(predictor, "predict_many", broken)
        with caplog.at_level("ERROR", logger="redifu.serve"):
            response = test_client.post("/predict", json={"utterances": conversation(2)})
    detail = one_line(response, 500)
    assert "RuntimeError" in detail and "secret" not in detail
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


def test_health_is_503_until_the_model_is_loaded(checkpoint):
    app = make_app(checkpoint)
    before = TestClient(app)  # outside `with`: the lifespan has not run, no model
    assert "not loaded yet" in one_line(before.get("/health"), 503)
    assert one_line(before.post("/predict", json={"utterances": conversation(1)}), 503)
    with TestClient(app) as started:
        assert started.get("/health").status_code == 200 and started.get("/health").json() == {"status": "ok"}


def test_a_model_that_cannot_load(tmp_path):
    def load():
        raise CheckpointError(f"{tmp_path}: config.json missing")

    with pytest.raises(CheckpointError, match="config.json missing"), TestClient(create_app(load)):
        pass
    app = create_app(load)
    stopped = []
    app.state.stop = lambda: stopped.append(True)  # as the CLI's server sets it
    with TestClient(app) as test_client:
        assert "could not be loaded: " in one_line(test_client.get("/health"), 503)
    assert stopped == [True] and isinstance(app.state.load_error, CheckpointError)


def test_model_describes_labels_sizes_and_card(checkpoint, tmp_path, client):
    info = client.get("/model").json()
    assert info["labels"] == list(CLASSES) and info["modalities"] == ["text", "audio"]
    assert info["feature_sizes"] == DIMS and info["speaker_slots"] == 2
    assert info["extractors"] == {} and info["card"] is None
    assert info["limits"] == {"max_body_bytes": 64 * 1024, "max_utterances": 12}
    carded = save_tiny(tmp_path / "carded")
    card = {"name": "tiny", "trained_on": "nothing", "metrics": {"test": {"weighted_f1": 1.0}}}
    (carded / "card.json").write_text(json.dumps(card))
    with TestClient(make_app(carded)) as test_client:
        assert test_client.get("/model").json()["card"] == card


def test_page_docs_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element_id in ('id="conversation"', 'id="predict"', 'id="results"', 'id="error"', 'for="conversation"'):
        assert element_id in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"] and "/predict" in script.text
    assert client.get("/static/style.css").status_code == 200
    assert one_line(client.get("/static/..%2Fapp.py"), 404)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()  # the OpenAPI page works offline: its assets are served here
    bundle = client.get("/docs-assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000 and "javascript" in bundle.headers["content-type"]
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert one_line(client.get("/docs-assets/index.html"), 404)
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["utterances"] and "413" in schema["paths"]["/predict"]["post"]["responses"]


# -- batching -------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_answer_as_one_by_one(checkpoint):
    import httpx

    app = make_app(checkpoint, max_batch=4, batch_wait_ms=200)
    conversations = [conversation(length, seed=seed) for seed, length in enumerate([1, 5, 3, 7, 2, 9, 4, 6])]

    async def run() -> list[dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
                responses = await asyncio.gather(*(
                    http.post("/predict", json={"dialogue_id": f"d{i}", "utterances": u,
                                                "explain": i % 3 == 0}) for i, u in enumerate(conversations)))
                batcher = app.state.serving.batcher
                return [r.json() for r in responses], batcher.batches, batcher.items

    answers, batches, items = asyncio.run(run())
    assert items == len(conversations) and batches < len(conversations)  # some requests shared a pass
    alone = load_predictor(checkpoint, batch_size=1)
    for i, (answer, utterances) in enumerate(zip(answers, conversations)):
        assert answer["dialogue_id"] == f"d{i}"
        assert_equal_to_predictor(answer, alone.predict({"utterances": utterances}))
        assert ("attention" in answer["utterances"][0]) is (i % 3 == 0)


def test_a_failing_dialogue_fails_only_its_own_request():
    from concurrent.futures import ThreadPoolExecutor

    calls: list[list[int]] = []

    def run(items, explain):
        calls.append(list(items))
        if any(item < 0 for item in items):
            raise ValueError(f"negative item in {items}")
        return [item * 10 for item in items]

    async def main_() -> list:
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(run, executor=executor, max_batch=8, wait_ms=100)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, -3, 4)), return_exceptions=True)
            await batcher.close()
            return results

    results = asyncio.run(main_())
    assert results[:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], ValueError) and str(results[2]) == "negative item in [-3]"
    assert calls[0] == [1, 2, -3, 4]  # one batch first, then one by one


def test_max_batch_one_runs_every_request_alone():
    from concurrent.futures import ThreadPoolExecutor

    sizes: list[int] = []

    async def main_() -> list:
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(lambda items, explain: sizes.append(len(items)) or list(items),
                                   executor=executor, max_batch=1, wait_ms=50)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
            await batcher.close()
            return results

    assert asyncio.run(main_()) == list(range(5)) and sizes == [1] * 5


@pytest.mark.parametrize("options, message", [
    ({"max_batch": 0}, "max_batch must be an integer >= 1"),
    ({"max_utterances": -1}, "max_utterances must be an integer >= 1"),
    ({"batch_wait_ms": -1.0}, "batch_wait_ms must be between 0 and 1000"),
])
def test_settings_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings(**options)


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("arguments, message", [
    (["--max-batch", "0"], "--max-batch must be >= 1, got 0"),
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["--max-body", "0"], "--max-body must be > 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_bad_options_are_one_line_errors(arguments, message, capsys, checkpoint):
    assert main(["serve", "--checkpoint", str(checkpoint), *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"redifu: error: {error.split('error: ', 1)[1]}" and message in error and "\n" not in error


def test_an_address_in_use_is_refused_before_the_model_loads(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", str(tmp_path / "never-read"), "--port", str(port)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"redifu: error: --host 127.0.0.1 --port {port}: cannot listen there (")
    assert "\n" not in error


def test_missing_extra_is_named(monkeypatch, capsys, checkpoint):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises ImportError
    assert main(["serve", "--checkpoint", str(checkpoint)]) == 2
    error = capsys.readouterr().err.strip()
    assert "redifu[serve]" in error and "uvicorn" in error and "\n" not in error


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(arguments: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-m", "redifu", "serve", *arguments], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_healthy(server: subprocess.Popen, url: str, timeout: float) -> None:
    """Poll ``url``/health until 200; fails the test with the server's stderr if it exits or times out."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"redifu serve did not start: {server.communicate()[1][-2000:]}")
        time.sleep(0.3)


@pytest.mark.integration
def test_redifu_serve_runs_uvicorn_and_stops_cleanly(tmp_path):
    import httpx

    checkpoint = save_tiny(tmp_path / "ckpt", {"text": 16})
    port = free_port()
    server = start_server(["--checkpoint", str(checkpoint), "--port", str(port), "--max-body", "0.01"], tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(server, url, 120)
        vectors = [{"speaker": "A", "text": [0.1] * 16}, {"speaker": "B", "text": [0.2] * 16}]
        answer = httpx.post(f"{url}/predict", json={"utterances": vectors}).json()
        expected = Predictor.from_pretrained(checkpoint, device="cpu").predict({"utterances": vectors})
        assert_equal_to_predictor(answer, expected)

        def chunks():
            for _ in range(100):
                yield b"x" * 1024

        too_large = httpx.post(f"{url}/predict", content=chunks())
        assert too_large.status_code == 413 and too_large.json()["detail"].startswith("body: larger")
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    # uvicorn shuts down gracefully, then ends by the signal it caught (-15: SIGTERM)
    assert server.returncode in (0, -15), err[-2000:]
    assert "Application shutdown complete" in err and "Traceback" not in err
    assert "transcripts cannot be encoded" in err  # a 16-d text model cannot take the 384-d default encoder

    missing = start_server(["--checkpoint", str(tmp_path / "nowhere"), "--port", str(free_port())], tmp_path)
    _, err = missing.communicate(timeout=120)
    assert missing.returncode == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("redifu: error:") and "nowhere" in err.strip().splitlines()[-1]
