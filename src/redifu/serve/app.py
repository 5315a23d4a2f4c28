"""The FastAPI application of ``redifu serve``: the API, its lifespan and the page at ``/``.

Routes:

- ``POST /predict``: one dialogue in (``{"dialogue_id", "utterances": [{"speaker", "text"}, ...],
  "explain"}``), ``{"dialogue_id", "utterances": [prediction, ...]}`` out, in input order; each
  prediction is what ``redifu predict --output X.jsonl`` writes for the utterance;
- ``GET /health``: 200 once the model is loaded, 503 before;
- ``GET /model``: labels, modalities, feature sizes, recorded extractors, the checkpoint's
  ``card.json`` (``null`` without one; :func:`redifu.pretrained.read_card`) and the request limits;
- ``GET /``: the page; ``GET /docs``: the OpenAPI documentation (FastAPI's);
- ``WebSocket /live``: one live conversation per connection (causal checkpoints): each message a
  JSON utterance ``{"speaker", "text"}``, each reply its prediction, or ``{"detail": "one line"}``
  for a bad message (the connection stays open). Beyond ``max_sessions`` connections, or with a
  checkpoint that cannot run live, the connection is closed with code 1013 / 1008 and the
  reason; a session idle for ``session_idle_s`` is closed with code 1001.

Every error answer is ``{"detail": "one line"}``; a fault of the server is a 500 whose detail
names no internals, with the traceback in the server's log.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (`request: Request`)
# at definition time, and Request is imported inside create_app (the serve extra is optional).
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from redifu import __version__
from redifu.errors import CheckpointError, DataError
from redifu.predict import InputUtterance, Predictor, UtterancePrediction
from redifu.predict.live_stream import parse_live_line
from redifu.predict.session import live_problem
from redifu.serve.batching import MicroBatcher
from redifu.serve.body_limit import BodySizeLimit, BodyTooLarge
from redifu.serve.request_body import RequestError, parse_predict_request
from redifu.serve.settings import ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

__all__ = ["create_app", "model_info"]

STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
# The OpenAPI page's script, style and icon, from the swagger-ui-bundle package (the serve extra)
DOCS_ASSETS = "/docs-assets"
DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
              "favicon-32x32.png": "image/png"}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                                           "object-src 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

REQUEST_SCHEMA = {
    "type": "object",
    "required": ["utterances"],
    "additionalProperties": False,
    "properties": {
        "dialogue_id": {"type": "string", "default": "dialogue", "description": "Names the dialogue in the answer."},
        "explain": {"type": "boolean", "default": False,
                    "description": "Add each utterance's explanation (graph neighbours, fusion gates) as 'attention'."},
        "utterances": {
            "type": "array", "minItems": 1,
            "description": "The conversation in order, one row per utterance: the row schema of `redifu predict`.",
            "items": {
                "type": "object", "required": ["speaker"],
                "properties": {
                    "speaker": {"type": "string"},
                    "text": {"description": "The transcript, or a precomputed text vector (list of numbers).",
                             "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "number"}}]},
                    "audio": {"type": "array", "items": {"type": "number"}, "description": "Precomputed features."},
                    "visual": {"type": "array", "items": {"type": "number"}, "description": "Precomputed features."},
                    "utterance": {"type": "integer", "description": "Order in the dialogue (default: position)."},
                },
            },
        },
    },
    "example": {"dialogue_id": "d1", "utterances": [{"speaker": "A", "text": "I got the job!"},
                                                     {"speaker": "B", "text": "No way, congratulations!"}]},
}
ERROR_SCHEMA = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
PREDICTION_SCHEMA = {
    "type": "object",
    "properties": {
        "dialogue_id": {"type": "string"},
        "utterances": {"type": "array", "items": {"type": "object", "properties": {
            "utterance": {"type": "integer"}, "speaker": {"type": "string"}, "label": {"type": "string"},
            "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            "attention": {"type": "object", "description": "With explain: neighbours and gates."}}}},
    },
}


@dataclass
class _State:
    predictor: Predictor | None = None
    batcher: MicroBatcher | None = None
    info: dict[str, Any] | None = None
    load_error: BaseException | None = None
    executor: ThreadPoolExecutor | None = None
    live_sessions: int = 0


def _one_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else type(text).__name__


def model_info(predictor: Predictor, settings: ServeSettings) -> dict[str, Any]:
    """What ``GET /model`` answers."""
    return {
        "labels": list(predictor.classes),
        "modalities": list(predictor.modalities),
        "feature_sizes": predictor.feature_dims,
        "speaker_slots": predictor.model.config.num_speakers,
        "extractors": predictor.extractors,
        "card": predictor.card,  # the checkpoint's card.json (Predictor.from_pretrained reads it)
        "limits": settings.limits(),
        "batching": {"max_batch": settings.max_batch, "batch_wait_ms": settings.batch_wait_ms},
        "live": {"available": live_problem(predictor) is None, "max_sessions": settings.max_sessions,
                 "session_idle_s": settings.session_idle_s},
        "redifu": __version__,
    }


def _load_and_warm(load: Callable[[], Predictor]) -> Predictor:
    """Load the model, then pay the first-call costs (text encoder weights, a forward pass)."""
    predictor = load()
    vectors = {m: np.zeros(d, np.float32) for m, d in predictor.feature_dims.items()}
    if "text" in vectors:
        try:  # loads the encoder and checks that its vectors fit the model
            others = {m: v for m, v in vectors.items() if m != "text"}
            predictor.predict([InputUtterance("warm-up", 0, "A", "Hello.", others)])
            getattr(predictor.text_encoder, "model", None)  # its weights, even when the cache answered
            return predictor
        except (ImportError, CheckpointError, OSError) as failure:
            logger.warning("transcripts cannot be encoded (%s); requests must give 'text' vectors",
                           _one_line(failure))
    predictor.predict([InputUtterance("warm-up", 0, "A", None, vectors)])
    return predictor


def _run_batch(predictor: Predictor, dialogues: list[list[InputUtterance]],
               explain: bool) -> list[list[UtterancePrediction]]:
    return list(predictor.predict_many(dialogues, explain=explain))


def _static_files() -> dict[str, bytes]:
    folder = resources.files("redifu.serve").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC_FILES}


def create_app(load: Callable[[], Predictor], *, settings: ServeSettings | None = None) -> "FastAPI":
    """The application; the model is loaded once, by ``load``, when it starts (its lifespan).

    Args:
        load: Returns the :class:`Predictor` (e.g. ``lambda: Predictor.from_pretrained(DIR)``);
            called in the inference thread at startup.
        settings: Limits and batching (default :class:`ServeSettings`).

    If ``load`` fails, startup fails with its error, unless ``app.state.stop`` is set (a
    callable, as :func:`redifu.serve.server.serve` sets it): then the error is kept in
    ``app.state.load_error``, logged in one line, and ``stop()`` is called.
    """
    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    settings = settings or ServeSettings()
    state = _State()
    static = _static_files()

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": _one_line(detail)}, status_code=status)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redifu-inference")
        try:
            try:
                predictor = await loop.run_in_executor(executor, _load_and_warm, load)
            except Exception as failure:
                state.load_error = app.state.load_error = failure
                stop = getattr(app.state, "stop", None)
                if stop is None:
                    raise
                logger.error("cannot load the model: %s", _one_line(failure))
                stop()
                yield
                return
            batcher = MicroBatcher(lambda dialogues, explain: _run_batch(predictor, dialogues, explain),
                                   executor=executor, max_batch=settings.max_batch, wait_ms=settings.batch_wait_ms)
            batcher.start()
            state.info = model_info(predictor, settings)
            state.predictor, state.batcher, state.executor = predictor, batcher, executor
            logger.info("model loaded: %s labels, modalities %s", len(predictor.classes),
                        ", ".join(predictor.modalities))
            try:
                yield
            finally:
                state.predictor = None
                await batcher.close()
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="redifu", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Emotion of every utterance of a conversation (ReDiFu). `POST /predict` takes the "
                  "rows `redifu predict` reads; errors are `{\"detail\": \"one line\"}`.")
    app.state.settings = settings
    app.state.load_error = None
    app.state.serving = state  # the predictor and the batcher (its counters), for tests and tools
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, failure: BodyTooLarge) -> JSONResponse:
        return error(413, str(failure))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, failure: RequestValidationError) -> JSONResponse:
        first = (failure.errors() or [{}])[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "request"
        return error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def internal(request: Request, failure: Exception) -> JSONResponse:
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=failure)
        return error(500, f"internal error ({type(failure).__name__}); the server's log has the details")

    def loading() -> JSONResponse:
        reason = f"the model could not be loaded: {_one_line(state.load_error)}" if state.load_error else \
            "the model is not loaded yet"
        return error(503, reason)

    @app.get("/health", summary="200 once the model is loaded (503 before)",
             responses={503: {"content": {"application/json": {"schema": ERROR_SCHEMA}}}})
    async def health() -> Any:
        if state.predictor is None:
            return loading()
        return {"status": "ok"}

    @app.get("/model", summary="Labels, modalities, feature sizes, extractors, model card, limits")
    async def model() -> Any:
        if state.info is None:
            return loading()
        return state.info

    @app.post("/predict", summary="The emotion of every utterance of one dialogue",
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": REQUEST_SCHEMA}}}},
              responses={200: {"content": {"application/json": {"schema": PREDICTION_SCHEMA}}},
                         **{code: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
                            for code, text in ((400, "Not JSON"), (413, "Body too large"),
                                               (422, "A fault in the conversation"), (503, "Model not loaded"))}})
    async def predict(request: Request) -> Any:
        predictor, batcher = state.predictor, state.batcher
        if predictor is None or batcher is None:
            return loading()
        try:
            body = await request.body()
        except BodyTooLarge as failure:
            return error(413, str(failure))
        try:
            parsed = await asyncio.to_thread(parse_predict_request, body, predictor,
                                             max_utterances=settings.max_utterances)
        except RequestError as failure:
            return error(failure.status, failure.detail)
        try:
            predictions = await batcher.submit(parsed.utterances, explain=parsed.explain)
        except DataError as failure:
            return error(422, str(failure))
        except CheckpointError as failure:  # the model cannot take this input (e.g. no text encoder)
            logger.error("predict %s: %s", parsed.dialogue_id, _one_line(failure))
            return error(500, str(failure))
        except Exception as failure:  # noqa: BLE001  (a 500 with one line; the traceback goes to the log)
            logger.error("predict %s failed", parsed.dialogue_id, exc_info=failure)
            return error(500, f"internal error ({type(failure).__name__}); the server's log has the details")
        # predictions follow the utterance order; answer in the order of the request
        ordered = [p for _, p in sorted(zip((u.line for u in parsed.utterances), predictions), key=lambda x: x[0])]
        return {"dialogue_id": parsed.dialogue_id, "utterances": [p.to_dict() for p in ordered]}

    @app.websocket("/live")
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        predictor = state.predictor
        if predictor is None:
            await websocket.close(code=1013, reason="the model is not loaded yet")
            return
        problem = live_problem(predictor)
        if problem is not None:
            await websocket.close(code=1008, reason=_one_line(problem)[:120])
            return
        if state.live_sessions >= settings.max_sessions:
            await websocket.close(code=1013, reason=f"{settings.max_sessions} live sessions already; try again later")
            return
        state.live_sessions += 1
        loop = asyncio.get_running_loop()
        try:
            session = predictor.session(dialogue_id="live")
            while True:
                try:
                    message = await asyncio.wait_for(websocket.receive_text(), timeout=settings.session_idle_s)
                except asyncio.TimeoutError:
                    await websocket.close(code=1001, reason=f"idle for {settings.session_idle_s:g} s")
                    return
                try:
                    row = parse_live_line(message) if message.lstrip().startswith("{") else None
                    if row is None:
                        raise DataError("expected a JSON object {\"speaker\": ..., \"text\": ...}")
                    prediction = await loop.run_in_executor(state.executor, lambda: session.add(**row))
                except (DataError, TypeError) as failure:
                    await websocket.send_json({"detail": _one_line(failure)})
                    continue
                except CheckpointError as failure:  # e.g. no text encoder for transcripts
                    await websocket.send_json({"detail": _one_line(failure)})
                    continue
                await websocket.send_json(prediction.to_dict())
        except WebSocketDisconnect:
            return
        finally:
            state.live_sessions -= 1

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:  # the OpenAPI page, its script and style served from here (no CDN)
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url=app.openapi_url, title="redifu API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in DOCS_FILES:
            return error(404, f"no docs asset {name!r}")
        from swagger_ui_bundle import swagger_ui_path

        return Response((Path(swagger_ui_path) / name).read_bytes(), media_type=DOCS_FILES[name])

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(static["index.html"], media_type=STATIC_FILES["index.html"], headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in static or name == "index.html":
            return error(404, f"no static file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    return app
