"""Serve a checkpoint over HTTP: POST /predict (JSON in, emotions out), GET /health, GET /model, a
web page at / to try conversations, and the OpenAPI documentation at /docs. The model is loaded
once at startup; requests that arrive together are predicted in one batch (--max-batch,
--batch-wait-ms). Needs the serve extra (pip install "redifu[serve]")."""

from __future__ import annotations

import argparse
import logging
import socket

from redifu.serve.settings import MIB, ServeSettings

EPILOG = """\
request (the row schema of `redifu predict`, one dialogue per request):
  curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"dialogue_id": "d1",
    "utterances": [{"speaker": "A", "text": "I got the job!"}, {"speaker": "B", "text": "No way!"}]}'
  -> {"dialogue_id": "d1", "utterances": [{"utterance": 0, "speaker": "A", "label": "joy",
      "probabilities": {...}}, ...]}; "explain": true adds each utterance's "attention".
errors are {"detail": "one line"}: 400 not JSON, 413 body too large, 422 a fault in the conversation
(empty, a missing field, a vector of the wrong size, too many utterances or speakers), 503 model not loaded.
Listen on loopback (the default) unless a proxy in front of it handles who may reach it.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServeSettings()
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="checkpoint directory (RUN/checkpoint; default: the model shipped with redifu)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--max-body", type=float, default=defaults.max_body_bytes / MIB, metavar="MIB",
                        help=f"largest request body in MiB (default: {defaults.max_body_bytes / MIB:g}; 413 beyond)")
    parser.add_argument("--max-utterances", type=int, default=defaults.max_utterances, metavar="N",
                        help=f"most utterances per request (default: {defaults.max_utterances})")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch, metavar="N",
                        help="most requests (dialogues) per forward pass; 1: no batching "
                        f"(default: {defaults.max_batch})")
    parser.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms, metavar="MS",
                        help="how long a request waits for others to share its forward pass "
                        f"(default: {defaults.batch_wait_ms:g})")
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions, metavar="N",
                        help="most live sessions (/live WebSocket connections) at once; more are closed with code 1013 "
                        f"(default: {defaults.max_sessions})")
    parser.add_argument("--session-idle", type=float, default=defaults.session_idle_s, metavar="S",
                        help=f"close a live session idle this many seconds (default: {defaults.session_idle_s:g})")
    parser.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads for inference (default: torch's, one per core; on a small machine "
                        "shared with other work, 1 is often faster)")
    parser.add_argument("--allow-unverified-extractor", action="store_true",
                        help="as for `redifu predict`")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="uvicorn's log level (default: info)")


def run(args: argparse.Namespace) -> int:
    from redifu.errors import UsageError
    from redifu.predict import Predictor
    from redifu.serve.server import serve

    bounds_of = (("--port", args.port, 0, 65535), ("--max-utterances", args.max_utterances, 1, None),
                 ("--max-batch", args.max_batch, 1, None), ("--batch-wait-ms", args.batch_wait_ms, 0, 1000),
                 ("--max-sessions", args.max_sessions, 1, None), ("--session-idle", args.session_idle, 0.001, 86400))
    for flag, value, low, high in bounds_of:
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise UsageError(f"{flag} must be {bounds}, got {value:g}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if not args.max_body > 0:
        raise UsageError(f"--max-body must be > 0 (MiB), got {args.max_body:g}")
    settings = ServeSettings(max_body_bytes=max(1, int(args.max_body * MIB)), max_utterances=args.max_utterances,
                             max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                             max_sessions=args.max_sessions, session_idle_s=args.session_idle)
    try:  # before the model loads: an address in use is known at once
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as error:
        raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there "
                         f"({error.strerror or error})") from None
    if args.log_level != "debug":  # the encoders log every request's batch
        logging.getLogger("redifu.features.text").setLevel(logging.WARNING)
        logging.getLogger("redifu.features.audio").setLevel(logging.WARNING)

    def load() -> Predictor:  # runs in the inference thread
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        return Predictor.from_pretrained(args.checkpoint, device=args.device, batch_size=settings.max_batch,
                                         allow_unverified=args.allow_unverified_extractor)

    try:
        serve(load, host=args.host, port=args.port, settings=settings, log_level=args.log_level)
    except ImportError as error:  # the serve extra (or the text encoder's)
        raise UsageError(str(error)) from None
    return 0
