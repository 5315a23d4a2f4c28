"""A ``POST /predict`` body to the checked utterances of one dialogue.

The body is ``{"dialogue_id": "d1", "utterances": [{"speaker": "A", "text": "..."}, ...],
"explain": false}``; each utterance is a row of the schema ``redifu predict`` reads
(:mod:`redifu.predict.rows`: ``speaker``, ``text``, optional inline vectors per modality,
optional ``utterance`` order) without its ``dialogue_id``, which the request gives once. The rows
are checked by :meth:`Predictor.read_rows <redifu.predict.Predictor.read_rows>`, so the API refuses
what ``redifu predict`` refuses, with the same one-line messages (naming ``utterances[i]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redifu.errors import DataError
from redifu.predict import InputUtterance, Predictor

__all__ = ["PredictRequest", "RequestError", "parse_predict_request"]

FIELDS = ("dialogue_id", "utterances", "explain")
DEFAULT_DIALOGUE_ID = "dialogue"


class RequestError(Exception):
    """A request the API refuses: the HTTP status and a one-line reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class PredictRequest:
    """A checked request: its dialogue (utterances sorted by order, each with ``line`` = its
    position in the request) and whether explanations are wanted."""

    dialogue_id: str
    utterances: list[InputUtterance]
    explain: bool


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def parse_predict_request(body: bytes, predictor: Predictor, *, max_utterances: int) -> PredictRequest:
    """Decode and check a request body against ``predictor``'s model.

    Raises:
        RequestError: 400 for a body that is not JSON, 422 for any other fault (empty
            conversation, missing or unknown field, wrong feature size, more utterances than
            ``max_utterances``, more speakers than the model's speaker slots, ...).
    """
    if not body.strip():
        raise RequestError(400, "body: empty; send a JSON object with 'utterances'")
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "body: not valid UTF-8") from None
    except json.JSONDecodeError as error:
        raise RequestError(400, f"body: invalid JSON ({error.msg} at line {error.lineno} column {error.colno})") \
            from None
    if not isinstance(payload, dict):
        raise RequestError(422, f"body: expected a JSON object with 'utterances', got {_kind(payload)}")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise RequestError(422, f"field {unknown[0]!r}: unknown (a request has {', '.join(FIELDS)})")
    raw_id = payload.get("dialogue_id", DEFAULT_DIALOGUE_ID)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == "":
        raise RequestError(422, f"field 'dialogue_id': must be a non-empty string, got {_kind(raw_id)}")
    dialogue_id = str(raw_id)
    explain = payload.get("explain", False)
    if not isinstance(explain, bool):
        raise RequestError(422, f"field 'explain': must be true or false, got {_kind(explain)}")
    if "utterances" not in payload:
        raise RequestError(422, "field 'utterances': missing (a list of {\"speaker\", \"text\"} objects)")
    items = payload["utterances"]
    if not isinstance(items, list):
        raise RequestError(422, f"field 'utterances': must be a list of utterances, got {_kind(items)}")
    if not items:
        raise RequestError(422, "field 'utterances': empty; a conversation needs at least one utterance")
    if len(items) > max_utterances:
        raise RequestError(422, f"field 'utterances': {len(items)} utterances, but this server takes at most "
                                f"{max_utterances} per request (redifu serve --max-utterances)")
    rows = []
    for position, item in enumerate(items):
        if isinstance(item, dict):
            own = item.get("dialogue_id", raw_id)
            if str(own) != dialogue_id:
                raise RequestError(422, f"utterances[{position}]: field 'dialogue_id': {own!r} is not the "
                                        f"request's {dialogue_id!r} (a request holds one dialogue)")
            item = {"utterance": position, **item, "dialogue_id": dialogue_id}
        rows.append(item)
    try:
        (utterances,) = list(predictor.read_rows(rows, source="utterances"))
    except DataError as error:
        raise RequestError(422, str(error)) from None
    return PredictRequest(dialogue_id=dialogue_id, utterances=utterances, explain=explain)
