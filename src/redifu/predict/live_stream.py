"""``redifu predict --live``: utterances from a stream, one line each, each emotion as it arrives."""

from __future__ import annotations

import json
from typing import IO, Iterable

from redifu.errors import DataError
from redifu.predict.session import ConversationSession

__all__ = ["parse_live_line", "run_live"]


def parse_live_line(line: str) -> dict | None:
    """One input line as ``ConversationSession.add`` keywords: a JSON object (``{"speaker",
    "text", "audio", "visual"}``) or ``Speaker: text``; ``None`` for a blank line."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"not JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict):
            raise DataError("expected a JSON object")
        if "speaker" not in row:
            raise DataError("field 'speaker': missing")
        return row
    speaker, colon, text = line.partition(":")
    if not colon or not speaker.strip():
        raise DataError("expected 'Speaker: text' or a JSON object")
    return {"speaker": speaker.strip(), "text": text.strip()}


def run_live(session: ConversationSession, lines: Iterable[str], out: IO[str], errors: IO[str]) -> int:
    """Predict each line's utterance as it is read; one JSON record per utterance on ``out``
    (flushed), a bad line's one-line reason on ``errors`` (the session goes on). Returns the
    number of bad lines."""
    bad = 0
    for number, line in enumerate(lines, start=1):
        try:
            row = parse_live_line(line)
            if row is None:
                continue
            prediction = session.add(**row)
        except (DataError, TypeError) as error:
            bad += 1
            print(f"redifu predict --live: line {number}: {str(error).splitlines()[0]}", file=errors, flush=True)
            continue
        print(json.dumps(prediction.to_dict()), file=out, flush=True)
    return bad
