"""The utterance row schema that ``redifu predict`` reads and ``redifu features extract`` reads
and writes: one utterance per row, as JSON Lines (``.jsonl``, ``.ndjson``) or CSV (``.csv``).

Columns:

- ``dialogue_id``: rows of one dialogue are contiguous (the file is read as a stream: a dialogue
  ends where the id changes, and an id that reappears later is an error);
- ``utterance``: integer order of the utterance in its dialogue (rows are sorted by it);
- ``speaker``: any name; speakers take the model's speaker slots in order of first appearance in
  the dialogue, and a dialogue with more distinct speakers than the model has slots is refused;
- ``text``: the transcript (for JSON Lines, a list of floats instead: a precomputed text vector);
- per modality ``m`` (``text``, ``audio``, ``visual``), optionally a precomputed vector, either
  ``m`` = a list of floats (JSON Lines only) or ``m_npy`` = path of a ``.npy`` file holding one
  vector, and ``m_extractor`` = the name of the extractor that made it (``IS10_paraling``,
  ``eGeMAPSv02``, a text model name), compared with the extractor a checkpoint records
  (:mod:`redifu.predict.compatibility`);
- ``audio_path``: an audio file (wav/flac, or mp4/m4a/mkv/... through PyAV), with optional
  ``start``/``end`` (seconds or ``HH:MM:SS,mmm``) for one file per dialogue;
- ``video_path``: a video file (mp4/mkv/avi/... through PyAV), with the same ``start``/``end``
  (they select the utterance in both files when a row gives both);
- ``<m>_missing`` (``visual_missing``): the utterance has no ``m`` features (``redifu features
  extract`` writes it, with the reason, for an utterance where no face was found); a model
  reading it gets its training mean of ``m`` in their place (what its standardisation maps to
  zero: the modality says nothing), as for an utterance of ``video_path`` without a face.

Relative paths are resolved against the file's own folder. Other columns are kept (in
:attr:`InputUtterance.columns`) and written back by :class:`RowWriter`. A file without rows
(empty, blank lines only, a CSV header only) is an error. Malformed rows raise a one-line
:class:`~redifu.errors.DataError` naming the file, the line, the dialogue and the field; with
``on_error="skip"`` the whole dialogue holding a bad row is skipped instead, with a warning, and
counted in the reader's statistics.

Rows already in memory (decoded JSON objects, e.g. the body of a ``redifu serve`` request) are
checked the same way by :func:`read_rows`; messages then name a row by its position
(``utterances[2]: ...``), and file paths (``<modality>_npy``, ``audio_path``) are refused.
"""

from __future__ import annotations

import csv
import json
import logging
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from redifu.errors import MODALITIES, DataError
from redifu.files import atomic_file
from redifu.predict.compatibility import audio_extractor_for, extractor_problem, size_problem, visual_extractor_for

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_PATH_COLUMN",
    "VIDEO_PATH_COLUMN",
    "INPUT_FORMATS",
    "ON_ERROR",
    "REQUIRED_COLUMNS",
    "ROW_FORMATS",
    "AudioClip",
    "ConversationReader",
    "InputUtterance",
    "MediaClip",
    "RowWriter",
    "extractor_column",
    "missing_column",
    "npy_column",
    "read_conversations",
    "read_rows",
    "utterance_row",
]

INPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
ROW_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}
"""Formats :class:`RowWriter` writes, by suffix."""
ON_ERROR = ("fail", "skip")
REQUIRED_COLUMNS = ("dialogue_id", "utterance", "speaker")
AUDIO_PATH_COLUMN = "audio_path"
VIDEO_PATH_COLUMN = "video_path"
SEGMENT_COLUMNS = ("start", "end")
_DIALOGUE_ID_GUESS = re.compile(r'"dialogue_id"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+))')


def npy_column(modality: str) -> str:
    """The column holding the path of a modality's ``.npy`` vector."""
    return f"{modality}_npy"


def extractor_column(modality: str) -> str:
    """The column naming the extractor of a modality's vector."""
    return f"{modality}_extractor"


def missing_column(modality: str) -> str:
    """The column flagging a modality as missing for the utterance (its value: the reason)."""
    return f"{modality}_missing"


SCHEMA_COLUMNS = frozenset((*REQUIRED_COLUMNS, AUDIO_PATH_COLUMN, VIDEO_PATH_COLUMN, *SEGMENT_COLUMNS, *MODALITIES,
                            *map(npy_column, MODALITIES), *map(extractor_column, MODALITIES),
                            *map(missing_column, MODALITIES)))


@dataclass(frozen=True)
class MediaClip:
    """An utterance's audio or video: a file, or the ``start``..``end`` segment of one (``None``:
    the file's start or end)."""

    path: Path
    start: float | str | None = None
    end: float | str | None = None


AudioClip = MediaClip


@dataclass
class InputUtterance:
    """One utterance row.

    Attributes:
        dialogue_id: The dialogue it belongs to.
        index: Its order in the dialogue (utterances are sorted by it).
        speaker: Speaker name.
        text: Transcript, or ``None`` when a precomputed ``text`` vector is given.
        features: Precomputed per-modality vectors, ``(D_m,)`` float32 each.
        extractors: Per modality, the declared name of the extractor that made its vector
            (checked against the checkpoint's recorded extractor; optional).
        audio: The row's ``audio_path`` (and ``start``/``end``), when it gives one.
        video: The row's ``video_path`` (and ``start``/``end``), when it gives one.
        missing: Per modality without features for this utterance, the reason (its vector in
            ``features``, if any, is the model's training mean put in its place).
        sources: Per modality, the ``.npy`` file its vector was read from.
        columns: The row's other columns, as read.
        line: The line of the file it was read from (``None``: not read from a file).
    """

    dialogue_id: str
    index: int
    speaker: str
    text: str | None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    extractors: dict[str, str] = field(default_factory=dict)
    audio: MediaClip | None = None
    sources: dict[str, Path] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)
    line: int | None = None
    video: MediaClip | None = None
    missing: dict[str, str] = field(default_factory=dict)


class _RowError(Exception):
    """A bad row: the one-line message and the dialogue it belongs to (``None``: unknown)."""

    def __init__(self, message: str, dialogue_id: str | None) -> None:
        super().__init__(message)
        self.dialogue_id = dialogue_id


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_vector(value: Any) -> np.ndarray:
    """A finite 1-D float32 vector from a list or array; ``ValueError`` says what is wrong."""
    if isinstance(value, np.ndarray):
        array = value
        if array.dtype.kind not in "fiu":
            raise ValueError(f"must hold numbers, got dtype {array.dtype}")
    else:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of numbers, got {_short(value)}")
        # set(map(type)) checks plain floats and ints at C speed (JSON gives only those); bool is
        # its own type, so True is not taken for 1. Other element types take the general check.
        if not set(map(type, value)) <= {float, int} and any(
                isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value):
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


def _resolve(value: str, folder: Path) -> Path:
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else folder / path))


def _segment_time(value: Any) -> float | str | None:
    """A ``start``/``end`` cell: seconds as a number (CSV gives text), a ``HH:MM:SS,mmm`` string
    as given (the audio extractor parses it), ``None`` when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"must be seconds or HH:MM:SS,mmm, got {_short(value)}")
    return float(value)


class ConversationReader(Iterator[list[InputUtterance]]):
    """Streams a JSON Lines or CSV file dialogue by dialogue (see :func:`read_conversations`), or
    rows already in memory (``rows=``, see :func:`read_rows`).

    Attributes (filled while reading):
        dialogues, rows: Dialogues and rows yielded.
        skipped_dialogues, skipped_rows: Dialogues and rows skipped (``on_error="skip"``).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        rows: Iterable[Any] | None = None,
        source: str = "rows",
        on_error: str = "fail",
        feature_dims: Mapping[str, int] | None = None,
        extractors: Mapping[str, Mapping] | None = None,
        allow_unverified: bool = False,
        num_speakers: int | None = None,
        missing_fill: Mapping[str, np.ndarray] | None = None,
        trust_torchscript: bool = False,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if num_speakers is not None and num_speakers < 1:
            raise ValueError(f"num_speakers must be >= 1, got {num_speakers}")
        if (path is None) == (rows is None):
            raise ValueError("give either a path or rows")
        self.path = Path(path) if path is not None else None
        self._memory_rows = rows
        self.source = str(self.path) if self.path is not None else source
        if self.path is None:
            self.format = "rows"
        else:
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
        self.num_speakers = num_speakers
        self._audio_extractor = None
        self._visual_extractor = None
        self.missing_fill = {m: np.asarray(v, dtype=np.float32) for m, v in (missing_fill or {}).items()}
        self.trust_torchscript = bool(trust_torchscript)
        self.missing: dict[str, int] = {}
        """Per modality, the utterances read without its features (filled with the training mean)."""
        self._seen_dims: dict[str, int] = {}
        self.dialogues = self.rows = self.skipped_dialogues = self.skipped_rows = 0
        self._iterator = self._read()

    def __iter__(self) -> "ConversationReader":
        return self

    def __next__(self) -> list[InputUtterance]:
        return next(self._iterator)

    # rows -----------------------------------------------------------------------------------

    def _at(self, line: int) -> str:
        """Where a row is, for messages: ``FILE:LINE``, or ``SOURCE[INDEX]`` for rows in memory."""
        return f"{self.path}:{line}" if self.path is not None else f"{self.source}[{line}]"

    def _folder(self, fail, name: str) -> Path:
        """The folder relative paths are resolved against; rows in memory name no files."""
        if self.path is None:
            raise fail(name, "file paths are not read here; give the vector inline as a list of numbers")
        return self.path.parent

    def _raw_rows(self) -> Iterator[tuple[int, dict | _RowError]]:
        """``(line, row)`` pairs; ``row`` is a ``_RowError`` when the line cannot be parsed."""
        if self.format == "rows":
            for index, row in enumerate(self._memory_rows):
                if not isinstance(row, Mapping):
                    yield index, _RowError(f"{self._at(index)}: dialogue unknown: row: expected an object, got "
                                           f"{type(row).__name__}", None)
                    continue
                yield index, dict(row)
            return
        if self.format == "jsonl":
            with self.path.open("rb") as stream:
                for line, raw in enumerate(stream, start=1):
                    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                        raw = raw[3:]
                    if not raw.strip():
                        continue
                    guess = _DIALOGUE_ID_GUESS.search(raw.decode("utf-8", "replace"))
                    guessed = (guess.group(1) if guess.group(1) is not None else guess.group(2)) if guess else None
                    where = f"{self._at(line)}: dialogue {_short(guessed) if guessed is not None else 'unknown'}"
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
            if not header:
                return  # an empty file: no rows
            for name in REQUIRED_COLUMNS:
                if name not in header:
                    raise DataError(f"{self.path}:1: header: column {name!r} is missing "
                                    f"(need {', '.join(REQUIRED_COLUMNS)}, text)")
            for modality in MODALITIES:
                if modality != "text" and modality in header:
                    audio = f" or {AUDIO_PATH_COLUMN!r} (an audio file)" if modality == "audio" else ""
                    raise DataError(f"{self.path}:1: header: column {modality!r}: inline feature vectors are "
                                    f"only read from JSON Lines; in CSV give {npy_column(modality)!r} (a .npy path)"
                                    f"{audio}")
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
                if all(v in (None, "") for v in row.values()):
                    continue  # a blank CSV line of empty cells
                yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}

    def _parse(self, line: int, row: dict) -> InputUtterance:
        raw_id = row.get("dialogue_id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == "":
            problem = "missing" if raw_id in (None, "") else f"must be a string, got {_short(raw_id)}"
            raise _RowError(f"{self._at(line)}: dialogue unknown: field 'dialogue_id': {problem}", None)
        dialogue_id = str(raw_id)

        def fail(name: str, problem: str) -> _RowError:
            return _RowError(f"{self._at(line)}: dialogue {dialogue_id!r}: field {name!r}: {problem}", dialogue_id)

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
        sources: dict[str, Path] = {}
        if isinstance(text, list):  # JSON Lines: a precomputed text vector
            features["text"], text = self._vector(fail, "text", text), None
        elif text is not None and not isinstance(text, str):
            raise fail("text", f"must be a string (or a list of floats), got {_short(text)}")
        for modality in MODALITIES:
            inline, npy_name = row.get(modality) if modality != "text" else None, npy_column(modality)
            npy = row.get(npy_name)
            if npy is not None and (inline is not None or modality in features):
                raise fail(npy_name, f"give either {modality!r} or {npy_name!r}, not both")
            if inline is not None:
                if isinstance(inline, str) and modality == "audio":
                    raise fail(modality, f"must be a list of numbers (a feature vector), got {_short(inline)}; "
                               f"give an audio file as {AUDIO_PATH_COLUMN!r}")
                features[modality] = self._vector(fail, modality, inline)
            elif npy is not None:
                if not isinstance(npy, str) or not npy:
                    raise fail(npy_name, f"must be a path, got {_short(npy)}")
                path = _resolve(npy, self._folder(fail, npy_name))
                try:
                    array = _load_npy(path)
                except ValueError as error:
                    raise fail(npy_name, str(error)) from None
                features[modality] = self._vector(fail, npy_name, array, modality=modality)
                sources[modality] = path
        declared: dict[str, str] = {}
        for modality in MODALITIES:
            name = row.get(extractor_column(modality))
            if name is None:
                continue
            if not isinstance(name, str) or not name:
                raise fail(extractor_column(modality), f"must be an extractor name, got {_short(name)}")
            if modality not in features:
                raise fail(extractor_column(modality),
                           f"names the extractor of a {modality!r} vector the row does not give")
            problem = extractor_problem(modality, name, self.extractors.get(modality),
                                        allow_unverified=self.allow_unverified)
            if problem is not None:
                raise fail(extractor_column(modality), problem)
            declared[modality] = name
        missing: dict[str, str] = {}
        for modality in MODALITIES:
            flag = row.get(missing_column(modality))
            if flag in (None, "", False, "false", "0", 0):
                continue
            if modality == "text":
                raise fail(missing_column(modality), "text cannot be missing (it is the main stream)")
            if modality in features:
                raise fail(missing_column(modality), f"flags {modality} as missing, but the row gives its vector")
            missing[modality] = flag if isinstance(flag, str) and flag not in ("true", "1") else "missing"
        audio = self._clip(fail, row, AUDIO_PATH_COLUMN)
        video = self._clip(fail, row, VIDEO_PATH_COLUMN)
        if audio is not None and "audio" not in features and self.feature_dims is not None \
                and "audio" in self.feature_dims:
            features["audio"] = self._extract_audio(fail, audio)
            declared["audio"] = self._audio_extractor.info.name
        if video is not None and "visual" not in features and "visual" not in missing \
                and self.feature_dims is not None and "visual" in self.feature_dims:
            vector = self._extract_visual(fail, video)
            if vector is None:
                missing["visual"] = "no face found"
            else:
                features["visual"] = vector
                declared["visual"] = self._visual_extractor.info.name
        for modality in missing:
            if self.feature_dims is not None and modality in self.feature_dims:
                if modality not in self.missing_fill:
                    raise fail(missing_column(modality), f"{modality} is missing ({missing[modality]}) and the model "
                               f"gives no training mean to put in its place")
                features[modality] = self.missing_fill[modality]
                self.missing[modality] = self.missing.get(modality, 0) + 1
        if text is None and "text" not in features:
            raise fail("text", "missing (give the transcript, or a precomputed 'text' vector or 'text_npy')")
        if self.feature_dims is not None:
            for modality in self.feature_dims:
                if modality not in features and modality != "text":
                    raise fail(npy_column(modality), f"missing: the model takes {', '.join(self.feature_dims)} and "
                               f"needs all of them for every utterance")
        return InputUtterance(dialogue_id=dialogue_id, index=order, speaker=str(speaker), text=text,
                              features=features, extractors=declared, audio=audio, sources=sources,
                              columns={k: v for k, v in row.items() if k not in SCHEMA_COLUMNS}, line=line,
                              video=video, missing=missing)

    def _clip(self, fail, row: Mapping, column: str) -> MediaClip | None:
        """The row's ``column`` (``audio_path`` / ``video_path``) with its ``start``/``end``."""
        value = row.get(column)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise fail(column, f"must be a path, got {_short(value)}")
        times = []
        for name in SEGMENT_COLUMNS:
            try:
                times.append(_segment_time(row.get(name)))
            except ValueError as error:
                raise fail(name, str(error)) from None
        return MediaClip(_resolve(value, self._folder(fail, column)), *times)

    def _extract_visual(self, fail, clip: MediaClip) -> np.ndarray | None:
        """Features of ``clip`` made with the visual extractor the model was trained on (``None``: no face)."""
        return self._extract(fail, clip, VIDEO_PATH_COLUMN, "visual", lambda: visual_extractor_for(
            self.extractors.get("visual"), trust_torchscript=self.trust_torchscript))

    def _extract_audio(self, fail, clip: AudioClip) -> np.ndarray:
        """Features of ``clip`` made with the extractor the model was trained on."""
        return self._extract(fail, clip, AUDIO_PATH_COLUMN, "audio", lambda: audio_extractor_for(
            self.extractors.get("audio"), allow_unverified=self.allow_unverified))

    def _extract(self, fail, clip: MediaClip, column: str, modality: str, make) -> np.ndarray | None:
        """``clip`` through this modality's extractor (built by ``make`` on first use); errors name ``column``."""
        attribute = f"_{modality}_extractor"
        if getattr(self, attribute) is None:
            try:
                setattr(self, attribute, make())
            except ValueError as error:
                raise fail(column, str(error)) from None
        try:
            vector = getattr(self, attribute).extract_file(clip.path, clip.start, clip.end)
        except (DataError, ValueError) as error:
            raise fail(column, str(error)) from None
        return None if vector is None else self._vector(fail, column, vector, modality=modality)

    def _vector(self, fail, name: str, value: Any, *, modality: str | None = None) -> np.ndarray:
        modality = modality or name
        try:
            vector = as_vector(value)
        except ValueError as error:
            raise fail(name, str(error)) from None
        if self.feature_dims is not None:
            if modality in self.feature_dims and vector.shape[0] != self.feature_dims[modality]:
                raise fail(name, size_problem(modality, vector.shape[0], self.feature_dims[modality],
                                              self.extractors.get(modality)))
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
        speakers: set[str] = set()
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

        def flag(message: str) -> str:
            if self.on_error == "fail":
                raise DataError(message)
            return message

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
                current, started, utterances, speakers, rows, first_line, problem = (
                    dialogue_id, True, {}, set(), 0, line, None)
                if dialogue_id is not None and dialogue_id in seen:
                    problem = flag(f"{self._at(line)}: dialogue {dialogue_id!r}: field 'dialogue_id': the dialogue "
                                   f"reappears after other dialogues (first seen at line {seen[dialogue_id]}); the "
                                   f"rows of one dialogue must be contiguous")
                elif dialogue_id is not None:
                    seen[dialogue_id] = line
            rows += 1
            if error is not None:
                problem = problem or error
                continue
            if problem is not None:
                continue
            if utterance.index in utterances:
                problem = flag(f"{self._at(line)}: dialogue {current!r}: field 'utterance': order {utterance.index} "
                               f"appears twice (also at line {utterances[utterance.index][0]})")
            elif (self.num_speakers is not None and utterance.speaker not in speakers
                  and len(speakers) == self.num_speakers):
                problem = flag(f"{self._at(line)}: dialogue {current!r}: field 'speaker': "
                               f"{too_many_speakers(utterance.speaker, len(speakers) + 1, self.num_speakers)}")
            speakers.add(utterance.speaker)
            utterances[utterance.index] = (line, utterance)
        yield from finish()
        if not started:
            if self.path is None:
                raise DataError(f"{self.source}: no rows; nothing to read")
            raise DataError(f"{self.path}: no rows (the file is empty or holds only blank lines"
                            f"{' and a header' if self.format == 'csv' else ''}); nothing to read")
        if self.skipped_rows:
            logger.warning("%s: skipped %d dialogue(s), %d row(s) with errors", self.source, self.skipped_dialogues,
                           self.skipped_rows)


def too_many_speakers(speaker: str, count: int, slots: int) -> str:
    """The message for a dialogue whose ``count``-th distinct speaker has no speaker slot."""
    return (f"{speaker!r} is distinct speaker number {count} of the dialogue, but the model has {slots} speaker "
            f"slot(s) (speakers take slots in order of first appearance)")


def read_conversations(
    path: str | Path,
    *,
    on_error: str = "fail",
    feature_dims: Mapping[str, int] | None = None,
    extractors: Mapping[str, Mapping] | None = None,
    allow_unverified: bool = False,
    num_speakers: int | None = None,
    missing_fill: Mapping[str, np.ndarray] | None = None,
    trust_torchscript: bool = False,
) -> ConversationReader:
    """Stream the dialogues of a JSON Lines or CSV file (format by extension), one list each.

    Args:
        path: Input file (see the module docstring for the columns).
        on_error: ``"fail"`` raises :class:`DataError` at the first bad row; ``"skip"`` skips the
            dialogue holding it, logs a warning naming the line and counts it in the reader's
            ``skipped_dialogues`` / ``skipped_rows``.
        feature_dims: The modalities a model takes and their sizes: rows must give each
            non-text one (an ``audio_path`` is described with the recorded audio extractor),
            and vectors of another size are refused. ``None``: every vector of a modality must
            have the size of its first one, and ``audio_path`` is only read as a path.
        extractors: Recorded extractors per modality (named in size errors, compared with the
            ``<modality>_extractor`` a row declares, used for ``audio_path``).
        allow_unverified: Accept redifu's own extraction (``audio_path``, or a declared
            ``IS10_paraling``) for a model whose audio extractor is only reported by a feature
            file's authors.
        num_speakers: The model's speaker slots: a dialogue with more distinct speakers is a
            bad row (at the first speaker without a slot). ``None``: not checked.
        missing_fill: Per modality, the vector put in place of a missing one (the model's
            training mean): for ``<m>_missing`` rows and ``video_path`` clips without a face.
        trust_torchscript: Allow loading the TorchScript face model a visual extractor records.

    Returns:
        A :class:`ConversationReader`: an iterator of dialogues (utterances sorted by order).
        Reading a file without rows raises :class:`DataError`.
    """
    return ConversationReader(path, on_error=on_error, feature_dims=feature_dims, extractors=extractors,
                              allow_unverified=allow_unverified, num_speakers=num_speakers,
                              missing_fill=missing_fill, trust_torchscript=trust_torchscript)


def read_rows(
    rows: Iterable[Any],
    *,
    source: str = "rows",
    on_error: str = "fail",
    feature_dims: Mapping[str, int] | None = None,
    extractors: Mapping[str, Mapping] | None = None,
    allow_unverified: bool = False,
    num_speakers: int | None = None,
    missing_fill: Mapping[str, np.ndarray] | None = None,
) -> ConversationReader:
    """:func:`read_conversations` for rows already in memory (decoded JSON objects, say from an
    HTTP request), checked the same way.

    Messages name a row as ``SOURCE[INDEX]`` (its 0-based position in ``rows``) instead of a file
    and line. Rows in memory name no files: ``<modality>_npy``, ``audio_path`` and ``video_path``
    are refused (give vectors inline), so a caller cannot make the reader open paths.
    """
    return ConversationReader(rows=rows, source=source, on_error=on_error, feature_dims=feature_dims,
                              extractors=extractors, allow_unverified=allow_unverified, num_speakers=num_speakers,
                              missing_fill=missing_fill)


# -- writing ----------------------------------------------------------------------------------


def utterance_row(utterance: InputUtterance, folder: Path, *, npy_paths: Mapping[str, Path] | None = None
                  ) -> dict[str, Any]:
    """The row of ``utterance`` for a file in ``folder``.

    Vectors read from (or saved to, ``npy_paths``) a ``.npy`` file are written as ``<m>_npy``
    paths relative to ``folder``; other vectors inline as lists (JSON Lines only). Declared
    extractors, the audio clip and the other columns are written back.
    """
    row: dict[str, Any] = {"dialogue_id": utterance.dialogue_id, "utterance": utterance.index,
                           "speaker": utterance.speaker}
    if utterance.text is not None:
        row["text"] = utterance.text
    paths = {**utterance.sources, **(npy_paths or {})}
    for modality in MODALITIES:
        if modality in utterance.missing:
            row[missing_column(modality)] = utterance.missing[modality]
            continue
        if modality in paths:
            row[npy_column(modality)] = os.path.relpath(paths[modality], folder).replace(os.sep, "/")
        elif modality in utterance.features:
            row[modality] = utterance.features[modality].tolist()
        if modality in utterance.extractors:
            row[extractor_column(modality)] = utterance.extractors[modality]
    for column, clip in ((AUDIO_PATH_COLUMN, utterance.audio), (VIDEO_PATH_COLUMN, utterance.video)):
        if clip is not None:
            row[column] = os.path.relpath(clip.path, folder).replace(os.sep, "/")
            for name, value in zip(SEGMENT_COLUMNS, (clip.start, clip.end)):
                if value is not None:
                    row[name] = value
    row.update(utterance.columns)
    return row


class RowWriter:
    """Writes rows to ``.jsonl`` or ``.csv`` (by suffix) through :func:`redifu.files.atomic_file`:
    the file appears, complete, when the ``with`` block ends without error, and a failed run
    leaves no file.

    Args:
        path: The file to write.
        columns: CSV columns, in order (JSON Lines ignores them). A CSV cell that holds a list or
            a mapping is written as JSON text; a row with a column not listed is refused.
    """

    def __init__(self, path: str | Path, columns: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.format = ROW_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise ValueError(f"{self.path}: unknown output format {self.path.suffix!r}; use .jsonl or .csv")
        self.columns = list(columns)
        self.rows = 0
        self._context = None
        self._stream: IO[str] | None = None

    def __enter__(self) -> "RowWriter":
        self._context = atomic_file(self.path, "w", encoding="utf-8", newline="")
        self._stream = self._context.__enter__()
        if self.format == "csv":
            self._csv = csv.DictWriter(self._stream, fieldnames=self.columns, extrasaction="raise")
            self._csv.writeheader()
        return self

    def write(self, row: Mapping[str, Any]) -> None:
        if self.format == "csv":
            self._csv.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                                for k, v in row.items()})
        else:
            self._stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1

    def __exit__(self, kind, error, traceback) -> bool | None:
        context, self._context, self._stream = self._context, None, None
        return context.__exit__(kind, error, traceback)
