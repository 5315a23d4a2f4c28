"""Emotion predictions for new conversations with a saved checkpoint.

Input: one utterance per row, as JSON Lines (``.jsonl``, ``.ndjson``) or CSV (``.csv``), with

- ``dialogue_id``: rows of one dialogue are contiguous (the file is read as a stream: a dialogue
  ends where the id changes, and an id that reappears later is an error);
- ``utterance``: integer order of the utterance in its dialogue (rows are sorted by it);
- ``speaker``: any name; speakers take the model's speaker slots in order of first appearance
  in the dialogue, and fold into the last slot when the dialogue has more speakers than slots;
- ``text``: the transcript, encoded with the text extractor recorded in the checkpoint;
- optionally precomputed features per modality: ``<modality>`` = list of floats (JSON Lines
  only; for ``text`` a list instead of a string) or ``<modality>_npy`` = path of a ``.npy``
  file holding one vector (relative paths are resolved against the input file's directory);
- optionally ``<modality>_extractor``: the name of the extractor that made a precomputed vector
  (``redifu features extract`` writes it: ``IS10_paraling``, ``eGeMAPSv02``, a text model
  name). A name other than the extractor the checkpoint records for that modality is refused;
  undeclared vectors are checked by size only;
- or, for audio, ``audio_path`` (any audio file: wav/flac, or mp4/m4a/mkv/... through PyAV; with
  optional ``start``/``end`` for one file per dialogue): openSMILE features computed with the
  audio extractor the checkpoint records. Refused when it records none, and when it records
  one only as *reported* by a feature file's authors (``verified: false``, from ``redifu data
  convert``) unless ``allow_unverified`` (``--allow-unverified-extractor``) is given: that
  redifu's openSMILE output matches theirs is not verified.

Files are read and predicted dialogue by dialogue and batch by batch, so memory stays flat.
Malformed rows raise a one-line :class:`~redifu.data.dialogue.DataError` naming the file, the
line, the dialogue and the field; with ``on_error="skip"`` the whole dialogue holding a bad row
is skipped instead, with a warning naming the line, and counted in the reader's statistics.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import numbers
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from redifu.checkpoint import CheckpointError, load_checkpoint
from redifu.data.batching import DialogueTensors, collate_dialogues
from redifu.data.dialogue import IGNORE_LABEL, MODALITIES, DataError
from redifu.features.text import DEFAULT_TEXT_ENCODER, TextEncoder
from redifu.model import ReDiFu

logger = logging.getLogger(__name__)

__all__ = [
    "ConversationReader",
    "InputUtterance",
    "PredictionWriter",
    "Predictor",
    "UtterancePrediction",
    "extractor_problem",
    "read_conversations",
]

INPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}
ON_ERROR = ("fail", "skip")
EXPLAIN_TOP_K = 3
_REQUIRED_FIELDS = ("dialogue_id", "utterance", "speaker")
_DIALOGUE_ID_GUESS = re.compile(r'"dialogue_id"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+))')


@dataclass
class InputUtterance:
    """One utterance to predict.

    Attributes:
        dialogue_id: The dialogue it belongs to.
        index: Its order in the dialogue (utterances are sorted by it).
        speaker: Speaker name.
        text: Transcript, or ``None`` when a precomputed ``text`` vector is given.
        features: Precomputed per-modality vectors, ``(D_m,)`` float32 each.
        extractors: Per modality, the declared name of the extractor that made its vector
            (checked against the checkpoint's recorded extractor; optional).
    """

    dialogue_id: str
    index: int
    speaker: str
    text: str | None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    extractors: dict[str, str] = field(default_factory=dict)


@dataclass
class UtterancePrediction:
    """The prediction for one utterance.

    Attributes:
        dialogue_id, index, speaker: As in the input.
        label: Predicted class name (the most probable one).
        probabilities: Probability per class name.
        attention: With ``explain=True``: ``{"neighbours": [{"utterance", "relation", "weight"}, ...]}``
            (top graph neighbours, weights averaged over heads, layers and the utterance's
            modality nodes) and ``"gates"`` (mean fusion gate per auxiliary modality) when the
            model has them. Plain JSON types only.
    """

    dialogue_id: str
    index: int
    speaker: str
    label: str
    probabilities: dict[str, float]
    attention: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        record = {"dialogue_id": self.dialogue_id, "utterance": self.index, "speaker": self.speaker,
                  "label": self.label, "probabilities": dict(self.probabilities)}
        if self.attention is not None:
            record["attention"] = self.attention
        return record


# -- reading ----------------------------------------------------------------------------------


class _RowError(Exception):
    """A bad row: the one-line message and the dialogue it belongs to (``None``: unknown)."""

    def __init__(self, message: str, dialogue_id: str | None) -> None:
        super().__init__(message)
        self.dialogue_id = dialogue_id


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size_problem(modality: str, given: int, dims: Mapping[str, int], extractors: Mapping[str, Mapping]) -> str:
    extractor = extractors.get(modality) or {}
    source = f" (from extractor {extractor['name']!r})" if extractor.get("name") else ""
    return f"{given} values, but the model takes {dims[modality]}-d {modality} features{source}"


def _describe_extractor(extractor: Mapping) -> str:
    text = repr(extractor.get("name"))
    if extractor.get("verified") is False:
        text += f" (as reported by {extractor.get('reported_by') or 'the feature file'}, not verified)"
    return text


def extractor_problem(modality: str, declared: str, recorded: Mapping | None, *,
                      allow_unverified: bool = False) -> str | None:
    """Why features from the extractor named ``declared`` cannot feed a model whose training
    ``modality`` features came from ``recorded`` (``None``: they can).

    ``declared`` matches the recorded ``name``. For an extractor only reported by a feature file's
    authors (``verified: false``), redifu's own extractor of the same kind (``settings.feature_set``,
    e.g. ``IS10_paraling``) matches only with ``allow_unverified``.
    """
    if not recorded:
        return None  # nothing recorded to compare with: sizes are still checked
    if declared == recorded.get("name"):
        return None  # for a reported extractor: the very features its authors describe, from them
    alias = (recorded.get("settings") or {}).get("feature_set")
    if alias is not None and declared == alias and recorded.get("verified") is False:
        if allow_unverified:
            return None
        return (f"features from {declared!r}, but the model's training {modality} features are only reported by "
                f"{recorded.get('reported_by') or 'the feature file'} to come from {recorded.get('name')!r}: that "
                f"redifu's {declared} output matches theirs is not verified; give vectors made the way the training "
                f"features were, or pass --allow-unverified-extractor (allow_unverified=True) to use them anyway")
    return f"features from {declared!r}, but the model was trained on {modality} features from " \
           f"{_describe_extractor(recorded)}"


def _as_vector(value: Any) -> np.ndarray:
    """A finite 1-D float32 vector from a list or array; ``ValueError`` says what is wrong."""
    if isinstance(value, np.ndarray):
        array = value
        if array.dtype.kind not in "fiu":
            raise ValueError(f"must hold numbers, got dtype {array.dtype}")
    else:
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, numbers.Real)
                                                       for v in value):
            raise ValueError(f"must be a list of numbers, got {_short(value)}")
        array = np.asarray(value, dtype=np.float64)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"must be one non-empty vector, got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError("contains NaN or infinity")
    return np.ascontiguousarray(array, dtype=np.float32)


def _load_npy(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"file {str(path)!r} not found") from None
    except (OSError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"cannot read {str(path)!r} as .npy ({reason})") from None
    if not isinstance(loaded, np.ndarray):  # an .npz archive
        loaded.close()
        raise ValueError(f"{str(path)!r} is not a .npy array")
    return loaded


class ConversationReader(Iterator[list[InputUtterance]]):
    """Streams a JSON Lines or CSV file dialogue by dialogue (see :func:`read_conversations`).

    Attributes (filled while reading):
        dialogues, rows: Dialogues and rows yielded.
        skipped_dialogues, skipped_rows: Dialogues and rows skipped (``on_error="skip"``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        on_error: str = "fail",
        feature_dims: Mapping[str, int] | None = None,
        extractors: Mapping[str, Mapping] | None = None,
        allow_unverified: bool = False,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.path = Path(path)
        self.format = INPUT_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise DataError(f"{self.path}: unknown input format {self.path.suffix!r}; "
                            f"use one of {', '.join(INPUT_FORMATS)}")
        if not self.path.is_file():
            raise FileNotFoundError(2, "file not found", str(self.path))
        self.on_error = on_error
        self.feature_dims = dict(feature_dims) if feature_dims is not None else None
        self.extractors = dict(extractors or {})
        self.allow_unverified = bool(allow_unverified)
        self._audio_extractor = None
        self._seen_dims: dict[str, int] = {}
        self.dialogues = self.rows = self.skipped_dialogues = self.skipped_rows = 0
        self._iterator = self._read()

    def __iter__(self) -> "ConversationReader":
        return self

    def __next__(self) -> list[InputUtterance]:
        return next(self._iterator)

    # rows -----------------------------------------------------------------------------------

    def _raw_rows(self) -> Iterator[tuple[int, dict | _RowError]]:
        """``(line, row)`` pairs; ``row`` is a ``_RowError`` when the line cannot be parsed."""
        if self.format == "jsonl":
            with self.path.open("rb") as stream:
                for line, raw in enumerate(stream, start=1):
                    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                        raw = raw[3:]
                    if not raw.strip():
                        continue
                    guess = _DIALOGUE_ID_GUESS.search(raw.decode("utf-8", "replace"))
                    guessed = (guess.group(1) if guess.group(1) is not None else guess.group(2)) if guess else None
                    where = f"{self.path}:{line}: dialogue {_short(guessed) if guessed is not None else 'unknown'}"
                    try:
                        row = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        yield line, _RowError(f"{where}: row: not valid UTF-8", guessed)
                        continue
                    except json.JSONDecodeError as error:
                        yield line, _RowError(f"{where}: row: invalid JSON ({error.msg} at column {error.colno})",
                                              guessed)
                        continue
                    if not isinstance(row, dict):
                        yield line, _RowError(f"{where}: row: expected a JSON object, got {type(row).__name__}",
                                              guessed)
                        continue
                    yield line, row
            return
        with self.path.open(encoding="utf-8-sig", newline="") as stream:
            reader = csv.DictReader(stream)
            try:
                header = reader.fieldnames or []
            except (csv.Error, UnicodeDecodeError) as error:
                raise DataError(f"{self.path}:1: header: cannot read the CSV header ({error})") from None
            for name in _REQUIRED_FIELDS:
                if name not in header:
                    raise DataError(f"{self.path}:1: header: column {name!r} is missing "
                                    f"(need {', '.join(_REQUIRED_FIELDS)}, text)")
            for modality in MODALITIES:
                if modality != "text" and modality in header:
                    raise DataError(f"{self.path}:1: header: column {modality!r}: inline feature vectors are "
                                    f"only read from JSON Lines; in CSV give {modality + '_npy'!r} (a .npy path)")
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except (csv.Error, UnicodeDecodeError) as error:
                    raise DataError(f"{self.path}:{reader.line_num}: row: cannot read the CSV row ({error})") from None
                if None in row:  # more cells than columns
                    yield reader.line_num, _RowError(
                        f"{self.path}:{reader.line_num}: dialogue {_short(row.get('dialogue_id'))}: row: "
                        f"more cells than header columns", row.get("dialogue_id") or None)
                    continue
                yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}

    def _parse(self, line: int, row: dict) -> InputUtterance:
        raw_id = row.get("dialogue_id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == "":
            problem = "missing" if raw_id in (None, "") else f"must be a string, got {_short(raw_id)}"
            raise _RowError(f"{self.path}:{line}: dialogue unknown: field 'dialogue_id': {problem}", None)
        dialogue_id = str(raw_id)

        def fail(name: str, problem: str) -> _RowError:
            return _RowError(f"{self.path}:{line}: dialogue {dialogue_id!r}: field {name!r}: {problem}", dialogue_id)

        order = row.get("utterance")
        if order is None:
            raise fail("utterance", "missing (the utterance's integer order in its dialogue)")
        if isinstance(order, str) and re.fullmatch(r"\s*[+-]?\d+\s*", order):
            order = int(order)
        if isinstance(order, bool) or not isinstance(order, int):
            raise fail("utterance", f"must be an integer, got {_short(order)}")
        speaker = row.get("speaker")
        if speaker is None or speaker == "":
            raise fail("speaker", "missing")
        if isinstance(speaker, bool) or not isinstance(speaker, (str, int)):
            raise fail("speaker", f"must be a string, got {_short(speaker)}")

        text = row.get("text")
        features: dict[str, np.ndarray] = {}
        if isinstance(text, list):  # JSON Lines: a precomputed text vector
            features["text"], text = self._vector(fail, "text", text), None
        elif text is not None and not isinstance(text, str):
            raise fail("text", f"must be a string (or a list of floats), got {_short(text)}")
        for modality in MODALITIES:
            inline, npy_name = row.get(modality) if modality != "text" else None, f"{modality}_npy"
            npy = row.get(npy_name)
            if npy is not None and (inline is not None or modality in features):
                raise fail(npy_name, f"give either {modality!r} or {npy_name!r}, not both")
            if inline is not None:
                features[modality] = self._vector(fail, modality, inline)
            elif npy is not None:
                if not isinstance(npy, str) or not npy:
                    raise fail(npy_name, f"must be a path, got {_short(npy)}")
                path = Path(npy).expanduser()
                path = path if path.is_absolute() else self.path.parent / path
                try:
                    array = _load_npy(path)
                except ValueError as error:
                    raise fail(npy_name, str(error)) from None
                features[modality] = self._vector(fail, npy_name, array, modality=modality)
        declared: dict[str, str] = {}
        for modality in MODALITIES:
            name = row.get(f"{modality}_extractor")
            if name is None:
                continue
            if not isinstance(name, str) or not name:
                raise fail(f"{modality}_extractor", f"must be an extractor name, got {_short(name)}")
            if modality not in features:
                raise fail(f"{modality}_extractor", f"names the extractor of a {modality!r} vector the row does not give")
            problem = extractor_problem(modality, name, self.extractors.get(modality),
                                        allow_unverified=self.allow_unverified)
            if problem is not None:
                raise fail(f"{modality}_extractor", problem)
            declared[modality] = name
        if "audio" not in features and row.get("audio_path") not in (None, ""):
            features["audio"] = self._extract_audio(fail, row)
            declared["audio"] = self._audio_extractor.info.name
        if text is None and "text" not in features:
            raise fail("text", "missing (give the transcript, or a precomputed 'text' vector or 'text_npy')")
        if self.feature_dims is not None:
            for modality in self.feature_dims:
                if modality not in features and modality != "text":
                    raise fail(f"{modality}_npy", f"missing: the model takes {', '.join(self.feature_dims)} and "
                               f"needs all of them for every utterance")
        return InputUtterance(dialogue_id=dialogue_id, index=order, speaker=str(speaker), text=text,
                              features=features, extractors=declared)

    def _extract_audio(self, fail, row: Mapping[str, Any]) -> np.ndarray:
        """openSMILE features of the row's ``audio_path`` (and ``start``/``end``), made with the
        extractor the model was trained on; refused when the checkpoint does not record one."""
        recorded = self.extractors.get("audio")
        if not recorded:
            raise fail("audio_path", "this model's checkpoint does not record how its audio features were made; "
                       "give 'audio_npy' vectors made the way its training features were")
        if self._audio_extractor is None:
            from redifu.features.audio import AUDIO_FEATURE_SETS, AudioFeatureExtractor

            feature_set = (recorded.get("settings") or {}).get("feature_set") or recorded.get("name")
            if feature_set not in AUDIO_FEATURE_SETS:
                raise fail("audio_path", f"the model was trained on audio features from "
                           f"{_describe_extractor(recorded)}, which redifu cannot compute (it computes "
                           f"{', '.join(AUDIO_FEATURE_SETS)}); give 'audio_npy'")
            problem = extractor_problem("audio", feature_set, recorded, allow_unverified=self.allow_unverified)
            if problem is not None:
                raise fail("audio_path", f"redifu's openSMILE {problem}")
            extractor = AudioFeatureExtractor(feature_set)
            try:
                info = extractor.info
            except ImportError as error:
                raise fail("audio_path", str(error)) from None
            if recorded.get("verified") is not False:
                ours = dict(info.settings)
                differ = {k: v for k, v in (recorded.get("settings") or {}).items()
                          if k != "feature_set" and ours.get(k) != v}  # settings a record leaves out are not checked
                if differ:
                    raise fail("audio_path", f"the model's audio features were made with {differ}, but redifu "
                               f"{feature_set} uses {({k: ours.get(k) for k in differ})}; give 'audio_npy'")
                if recorded.get("version") and recorded["version"] != info.version:
                    logger.warning("audio extractor %s is version %s, but the model was trained on features from %s",
                                   feature_set, info.version, recorded["version"])
            self._audio_extractor = extractor
        path = Path(str(row["audio_path"])).expanduser()
        path = path if path.is_absolute() else self.path.parent / path
        try:
            vector = self._audio_extractor.extract_file(path, row.get("start") or None, row.get("end") or None)
        except (DataError, ValueError) as error:
            raise fail("audio_path", str(error)) from None
        return self._vector(fail, "audio_path", vector, modality="audio")

    def _vector(self, fail, name: str, value: Any, *, modality: str | None = None) -> np.ndarray:
        modality = modality or name
        try:
            vector = _as_vector(value)
        except ValueError as error:
            raise fail(name, str(error)) from None
        if self.feature_dims is not None:
            if modality in self.feature_dims and vector.shape[0] != self.feature_dims[modality]:
                raise fail(name, _size_problem(modality, vector.shape[0], self.feature_dims, self.extractors))
        else:
            expected = self._seen_dims.setdefault(modality, vector.shape[0])
            if vector.shape[0] != expected:
                raise fail(name, f"{vector.shape[0]} values, but earlier rows have {expected}")
        return vector

    # dialogues ------------------------------------------------------------------------------

    def _read(self) -> Iterator[list[InputUtterance]]:
        seen: dict[str, int] = {}  # dialogue id -> first line
        current: str | None = None
        started = False
        utterances: dict[int, tuple[int, InputUtterance]] = {}  # order -> (line, utterance)
        rows = 0
        first_line = 0
        problem: str | None = None

        def finish() -> Iterator[list[InputUtterance]]:
            if not started:
                return
            if problem is not None:
                if current is not None:
                    self.skipped_dialogues += 1
                self.skipped_rows += rows
                name = f"dialogue {current!r}" if current is not None else "unreadable rows"
                logger.warning("skipped %s (%d row(s) from line %d): %s", name, rows, first_line, problem)
                return
            self.dialogues += 1
            self.rows += rows
            yield [utterance for _, (_, utterance) in sorted(utterances.items())]

        for line, row in self._raw_rows():
            try:
                if isinstance(row, _RowError):
                    raise row
                utterance = self._parse(line, row)
                dialogue_id: str | None = utterance.dialogue_id
                error = None
            except _RowError as bad:
                if self.on_error == "fail":
                    raise DataError(str(bad)) from None
                dialogue_id = bad.dialogue_id if bad.dialogue_id is not None else current
                utterance, error = None, str(bad)
            if not started or dialogue_id != current:
                yield from finish()
                current, started, utterances, rows, first_line, problem = dialogue_id, True, {}, 0, line, None
                if dialogue_id is not None and dialogue_id in seen:
                    message = (f"{self.path}:{line}: dialogue {dialogue_id!r}: field 'dialogue_id': the dialogue "
                               f"reappears after other dialogues (first seen at line {seen[dialogue_id]}); the "
                               f"rows of one dialogue must be contiguous")
                    if self.on_error == "fail":
                        raise DataError(message)
                    problem = message
                elif dialogue_id is not None:
                    seen[dialogue_id] = line
            rows += 1
            if error is not None:
                problem = problem or error
                continue
            if utterance.index in utterances and problem is None:
                message = (f"{self.path}:{line}: dialogue {current!r}: field 'utterance': order {utterance.index} "
                           f"appears twice (also at line {utterances[utterance.index][0]})")
                if self.on_error == "fail":
                    raise DataError(message)
                problem = message
            utterances[utterance.index] = (line, utterance)
        yield from finish()
        if self.skipped_rows:
            logger.warning("%s: skipped %d dialogue(s), %d row(s) with errors", self.path, self.skipped_dialogues,
                           self.skipped_rows)


def read_conversations(
    path: str | Path,
    *,
    on_error: str = "fail",
    feature_dims: Mapping[str, int] | None = None,
    extractors: Mapping[str, Mapping] | None = None,
    allow_unverified: bool = False,
) -> ConversationReader:
    """Stream the dialogues of a JSON Lines or CSV file (format by extension), one list each.

    Args:
        path: Input file (see the module docstring for the columns).
        on_error: ``"fail"`` raises :class:`DataError` at the first bad row; ``"skip"`` skips the
            dialogue holding it, logs a warning naming the line and counts it in the reader's
            ``skipped_dialogues`` / ``skipped_rows``.
        feature_dims: The modalities a model takes and their sizes: rows must give each
            non-text one, and vectors of another size are refused. ``None``: every vector of a
            modality must have the size of its first one.
        extractors: Recorded extractors per modality (named in size errors, compared with the
            ``<modality>_extractor`` a row declares, used for ``audio_path``).
        allow_unverified: Accept redifu's own extraction (``audio_path``, or a declared
            ``IS10_paraling``) for a model whose audio extractor is only reported by a feature
            file's authors.

    Returns:
        A :class:`ConversationReader`: an iterator of dialogues (utterances sorted by order).
    """
    return ConversationReader(path, on_error=on_error, feature_dims=feature_dims, extractors=extractors,
                              allow_unverified=allow_unverified)


# -- prediction -------------------------------------------------------------------------------


class Predictor:
    """Predicts emotions of whole dialogues with a :class:`ReDiFu` model in eval mode.

    Args:
        model: The model (moved to ``device``, put in eval mode).
        classes: Class names in label order.
        extractors: Recorded extractor per modality (``run.json``'s ``extractors``).
        device: Torch device. Default: ``cuda`` when present, else ``cpu``.
        text_encoder: Encoder for transcripts; default: one built from the recorded text
            extractor (or :data:`DEFAULT_TEXT_ENCODER`), created on first use.
        batch_size: Dialogues per forward pass in :meth:`predict_many`.
        allow_unverified: Compute (or accept declared) features with redifu's own extractor of
            the kind a feature file's authors report for the training features (see
            :func:`extractor_problem`); off by default.
    """

    def __init__(
        self,
        model: ReDiFu,
        classes: Sequence[str],
        *,
        extractors: Mapping[str, Mapping] | None = None,
        device: str | torch.device | None = None,
        text_encoder: TextEncoder | None = None,
        batch_size: int = 16,
        allow_unverified: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(classes) != model.config.num_classes:
            raise ValueError(f"classes: {len(classes)} names for {model.config.num_classes} classes")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.classes = tuple(classes)
        self.extractors = {m: dict(e) for m, e in (extractors or {}).items() if m in model.config.modalities}
        self.batch_size = int(batch_size)
        self.allow_unverified = bool(allow_unverified)
        self._text_encoder = text_encoder
        self._checked_encoder = False

    @classmethod
    def from_pretrained(
        cls,
        checkpoint_dir: str | Path,
        *,
        device: str | None = None,
        text_encoder: TextEncoder | None = None,
        batch_size: int = 16,
        allow_unverified: bool = False,
    ) -> "Predictor":
        """Load a checkpoint directory; refuses one whose recorded extractors do not fit its model."""
        checkpoint = load_checkpoint(checkpoint_dir)
        config = checkpoint.model.config
        recorded = checkpoint.run.get("modalities")
        if recorded is not None and tuple(recorded) != config.modalities:
            raise CheckpointError(f"{checkpoint_dir}: run.json records modalities {list(recorded)} but the model "
                                  f"takes {list(config.modalities)}")
        extractors = checkpoint.run.get("extractors") or {}
        for modality, extractor in extractors.items():
            dimension = extractor.get("dimension")
            if modality in config.modality_dims and dimension is not None and int(dimension) != config.modality_dims[modality]:
                raise CheckpointError(
                    f"{checkpoint_dir}: {modality}: the model takes {config.modality_dims[modality]}-d {modality} "
                    f"features but the recorded extractor {extractor.get('name')!r} gives {dimension}-d")
        return cls(checkpoint.model, checkpoint.classes, extractors=extractors, device=device,
                   text_encoder=text_encoder, batch_size=batch_size, allow_unverified=allow_unverified)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.config.modalities

    @property
    def feature_dims(self) -> dict[str, int]:
        return dict(self.model.config.modality_dims)

    @property
    def text_encoder(self) -> TextEncoder:
        """The transcript encoder (built from the recorded text extractor on first use)."""
        if self._text_encoder is None:
            extractor = self.extractors.get("text") or {}
            settings = extractor.get("settings") or {}
            self._text_encoder = TextEncoder(
                extractor.get("name") or DEFAULT_TEXT_ENCODER, device=str(self.device), progress=False,
                max_seq_length=settings.get("max_seq_length"), normalize=bool(settings.get("normalize", False)),
            )
        return self._text_encoder

    def read(self, path: str | Path, *, on_error: str = "fail") -> ConversationReader:
        """:func:`read_conversations` checking rows against this model's modalities and sizes."""
        return read_conversations(path, on_error=on_error, feature_dims=self.feature_dims,
                                  extractors=self.extractors, allow_unverified=self.allow_unverified)

    def predict(self, dialogue: Sequence[InputUtterance] | Mapping, *, explain: bool = False) -> list[UtterancePrediction]:
        """Predict every utterance of one dialogue.

        Args:
            dialogue: :class:`InputUtterance` objects (or mappings with ``speaker``, ``text``,
                optional ``utterance`` and per-modality vectors), or a mapping with
                ``dialogue_id`` and ``utterances``.
            explain: Add attention summaries (see :class:`UtterancePrediction`).

        Returns:
            One prediction per utterance, in utterance order.
        """
        return self._predict_batch([dialogue], explain=explain)[0]

    def predict_many(self, dialogues: Iterable[Sequence[InputUtterance] | Mapping], *,
                     explain: bool = False) -> Iterator[list[UtterancePrediction]]:
        """Predict dialogues ``batch_size`` at a time, reading ``dialogues`` lazily; yields in input order."""
        batch: list = []
        for dialogue in dialogues:
            batch.append(dialogue)
            if len(batch) == self.batch_size:
                yield from self._predict_batch(batch, explain=explain)
                batch = []
        if batch:
            yield from self._predict_batch(batch, explain=explain)

    # internals ------------------------------------------------------------------------------

    def _coerce(self, dialogue: Sequence[InputUtterance] | Mapping) -> tuple[str, list[InputUtterance]]:
        if isinstance(dialogue, Mapping):
            dialogue_id = str(dialogue.get("dialogue_id", "dialogue"))
            if "utterances" not in dialogue:
                raise DataError(f"dialogue {dialogue_id!r}: field 'utterances': missing")
            items = dialogue["utterances"]
        else:
            items = dialogue
            first = next(iter(items), None)
            dialogue_id = first.dialogue_id if isinstance(first, InputUtterance) else "dialogue"
        utterances = []
        for position, item in enumerate(items):
            if isinstance(item, InputUtterance):
                utterances.append(item)
                continue
            if not isinstance(item, Mapping):
                raise DataError(f"dialogue {dialogue_id!r}: utterance {position}: expected an InputUtterance or "
                                f"a mapping, got {type(item).__name__}")
            if "speaker" not in item:
                raise DataError(f"dialogue {dialogue_id!r}: utterance {position}: field 'speaker': missing")
            text = item.get("text")
            features = {m: item[m] for m in MODALITIES if m in item and not (m == "text" and isinstance(text, (str, type(None))))}
            declared = {m: item[f"{m}_extractor"] for m in MODALITIES if item.get(f"{m}_extractor") is not None}
            utterances.append(InputUtterance(
                dialogue_id=dialogue_id, index=int(item.get("utterance", position)), speaker=str(item["speaker"]),
                text=text if isinstance(text, str) else None, features=features, extractors=declared,
            ))
        if not utterances:
            raise DataError(f"dialogue {dialogue_id!r}: no utterances")
        return dialogue_id, utterances

    def _check(self, dialogue_id: str, utterances: list[InputUtterance]) -> list[InputUtterance]:
        dims = self.feature_dims
        ordered = sorted(utterances, key=lambda u: u.index)
        for previous, utterance in zip(ordered, ordered[1:]):
            if previous.index == utterance.index:
                raise DataError(f"dialogue {dialogue_id!r}: field 'utterance': order {utterance.index} appears twice")
        prepared = []
        for utterance in ordered:
            checked: dict[str, np.ndarray] = {}
            where = f"dialogue {dialogue_id!r}: utterance {utterance.index}"
            for modality in self.modalities:
                vector = utterance.features.get(modality)
                if vector is None:
                    if modality == "text" and isinstance(utterance.text, str):
                        continue
                    need = "a transcript or a 'text' vector" if modality == "text" else f"a {modality!r} vector"
                    raise DataError(f"{where}: field {modality!r}: missing; the model takes "
                                    f"{', '.join(self.modalities)} and needs all of them ({need})")
                try:
                    vector = _as_vector(vector)
                except ValueError as error:
                    raise DataError(f"{where}: field {modality!r}: {error}") from None
                if vector.shape[0] != dims[modality]:
                    raise DataError(f"{where}: field {modality!r}: "
                                    f"{_size_problem(modality, vector.shape[0], dims, self.extractors)}")
                declared = utterance.extractors.get(modality)
                if declared is not None:
                    problem = extractor_problem(modality, str(declared), self.extractors.get(modality),
                                                allow_unverified=self.allow_unverified)
                    if problem is not None:
                        raise DataError(f"{where}: field {modality + '_extractor'!r}: {problem}")
                checked[modality] = vector
            prepared.append(InputUtterance(dialogue_id, utterance.index, utterance.speaker, utterance.text, checked,
                                           dict(utterance.extractors)))
        return prepared

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        encoder = self.text_encoder
        if not self._checked_encoder:
            self._checked_encoder = True
            recorded = (self.extractors.get("text") or {}).get("version")
            if recorded and encoder.version != recorded:
                logger.warning("text encoder %s is version %s, but the model was trained on features from %s",
                               encoder.model_name, encoder.version, recorded)
        vectors = encoder.encode(texts)  # (T, D_text)
        expected = self.feature_dims["text"]
        if vectors.shape[1] != expected:
            raise CheckpointError(
                f"text: the model takes {expected}-d text features but the text encoder {encoder.model_name!r} "
                f"gives {vectors.shape[1]}-d; give precomputed 'text' vectors or the matching encoder")
        return vectors

    def _speaker_slots(self, dialogue_id: str, utterances: list[InputUtterance]) -> list[int]:
        slots: dict[str, int] = {}
        for utterance in utterances:
            slots.setdefault(utterance.speaker, len(slots))
        limit = self.model.config.num_speakers
        if len(slots) > limit:
            logger.warning("dialogue %r: %d speakers but the model has %d speaker slot(s); speakers after the "
                           "first %d share the last slot", dialogue_id, len(slots), limit, limit - 1)
        return [min(slots[u.speaker], limit - 1) for u in utterances]

    @torch.inference_mode()
    def _predict_batch(self, dialogues: list, *, explain: bool) -> list[list[UtterancePrediction]]:
        prepared = []
        for dialogue in dialogues:
            dialogue_id, utterances = self._coerce(dialogue)
            prepared.append((dialogue_id, self._check(dialogue_id, utterances)))
        pending = [u for _, utterances in prepared for u in utterances if "text" not in u.features]
        if pending:
            vectors = self._encode_texts([u.text for u in pending])
        text_vectors = {id(u): v for u, v in zip(pending, vectors)} if pending else {}
        items = []
        for dialogue_id, utterances in prepared:
            features = {}
            for modality in self.modalities:
                rows = [text_vectors[id(u)] if modality == "text" and id(u) in text_vectors else u.features[modality]
                        for u in utterances]
                features[modality] = torch.from_numpy(np.stack(rows))  # (N, D_m)
            items.append(DialogueTensors(
                dialogue_id=dialogue_id, features=features,
                speakers=torch.tensor(self._speaker_slots(dialogue_id, utterances), dtype=torch.long),
                labels=torch.full((len(utterances),), IGNORE_LABEL, dtype=torch.long),
            ))
        batch = collate_dialogues(items).to(self.device)
        output = self.model(batch.features, batch.speakers, batch.mask, return_attention=explain)
        probabilities = output.logits.float().softmax(-1).cpu().double().numpy()  # (B, N, C)
        explanations = self._explain(output, batch.mask, prepared) if explain else None
        results = []
        for row, (dialogue_id, utterances) in enumerate(prepared):
            predictions = []
            for position, utterance in enumerate(utterances):
                probs = probabilities[row, position]
                predictions.append(UtterancePrediction(
                    dialogue_id=dialogue_id, index=utterance.index, speaker=utterance.speaker,
                    label=self.classes[int(probs.argmax())],
                    probabilities={name: float(p) for name, p in zip(self.classes, probs)},
                    attention=explanations[row][position] if explanations is not None else None,
                ))
            results.append(predictions)
        return results

    def _explain(self, output, mask: torch.Tensor, prepared: list) -> list[list[dict]]:
        """Per utterance: top graph neighbours and mean fusion gate per auxiliary modality."""
        B, N = mask.shape
        summaries: list[list[dict]] = [[{} for _ in utterances] for _, utterances in prepared]
        graph = output.graph_attention
        if graph is not None and graph.attention:
            names = self.model.config.graph_modality_names
            relation_names = [re.sub(r"m(\d+)", lambda m: names[int(m.group(1))], r) for r in graph.relation_names]
            weights = torch.stack([a.float().mean(-1) for a in graph.attention]).mean(0).cpu().numpy()  # (E,)
            source, target = graph.edge_index.cpu().numpy()
            node_batch = graph.node_batch.cpu().numpy()
            node_utterance = graph.node_utterance.cpu().numpy()
            edge_type = graph.edge_type.cpu().numpy()
            totals: dict[tuple[int, int], dict[tuple[int, int], float]] = {}
            for s, t, r, w in zip(source, target, edge_type, weights):
                key = (int(node_batch[t]), int(node_utterance[t]))
                neighbour = (int(node_utterance[s]), int(r))
                bucket = totals.setdefault(key, {})
                bucket[neighbour] = bucket.get(neighbour, 0.0) + float(w) / len(names)
            for (row, position), bucket in totals.items():
                utterances = prepared[row][1]
                top = sorted(bucket.items(), key=lambda item: -item[1])[:EXPLAIN_TOP_K]
                summaries[row][position]["neighbours"] = [
                    {"utterance": utterances[p].index, "relation": relation_names[r], "weight": round(w, 6)}
                    for (p, r), w in top
                ]
        gates: dict[str, list[torch.Tensor]] = {}
        for name, value in output.attention.items():
            found = re.fullmatch(r"fusion\.layer\d+\.gate_(\w+)", name)
            if found:
                gates.setdefault(found.group(1), []).append(value.float().mean(-1))  # (B, N)
        if gates:
            means = {m: torch.stack(v).mean(0).cpu().numpy() for m, v in gates.items()}  # (B, N) each
            for row, (_, utterances) in enumerate(prepared):
                for position in range(len(utterances)):
                    summaries[row][position]["gates"] = {m: round(float(g[row, position]), 6) for m, g in means.items()}
        return summaries


# -- writing ----------------------------------------------------------------------------------


class PredictionWriter:
    """Writes predictions to ``.jsonl`` or ``.csv`` (by extension) through a temporary file in the
    same directory, renamed over ``path`` on success and removed on any error, so a failed run
    leaves no output file.

    CSV columns: ``dialogue_id, utterance, speaker, label, prob_<class>...`` (plus ``attention``
    as JSON text with ``explain``). JSON Lines: :meth:`UtterancePrediction.to_dict` per line.
    """

    def __init__(self, path: str | Path, classes: Sequence[str], *, explain: bool = False) -> None:
        self.path = Path(path)
        self.format = OUTPUT_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise ValueError(f"{self.path}: unknown output format {self.path.suffix!r}; use .jsonl or .csv")
        self.classes = tuple(classes)
        self.explain = explain
        self.dialogues = self.utterances = 0
        self._stream: io.TextIOBase | None = None
        self._temporary: Path | None = None

    def __enter__(self) -> "PredictionWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self._temporary = Path(name)
        self._stream = os.fdopen(handle, "w", encoding="utf-8", newline="")
        if self.format == "csv":
            self._csv = csv.writer(self._stream)
            header = ["dialogue_id", "utterance", "speaker", "label", *(f"prob_{c}" for c in self.classes)]
            self._csv.writerow(header + (["attention"] if self.explain else []))
        return self

    def write(self, predictions: Sequence[UtterancePrediction]) -> None:
        for p in predictions:
            if self.format == "csv":
                row = [p.dialogue_id, p.index, p.speaker, p.label, *(repr(p.probabilities[c]) for c in self.classes)]
                self._csv.writerow(row + ([json.dumps(p.attention)] if self.explain else []))
            else:
                self._stream.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        self.dialogues += 1
        self.utterances += len(predictions)

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self._stream.close()
            if kind is None:
                os.chmod(self._temporary, 0o644)
                os.replace(self._temporary, self.path)
        finally:
            if self._temporary is not None:
                self._temporary.unlink(missing_ok=True)
