"""Readers for the official MELD and EmoryNLP transcript CSVs.

Both datasets ship one CSV per split with one row per utterance. The readers turn them into a
:class:`TranscriptCorpus` (dialogues of :class:`TranscriptUtterance`, labels as class indices),
which :meth:`TranscriptCorpus.to_dialogue_corpus` turns into a :class:`DialogueCorpus` once a text
encoder has been chosen.

MELD (Poria et al., ACL 2019), files ``{train,dev,test}_sent_emo.csv``: utterances are keyed by
``(Dialogue_ID, Utterance_ID)``. ``Sr No.`` is not unique, utterance ids have gaps and some
dialogue ids are absent (train dialogue 60), so nothing relies on row numbers or contiguous ids.

EmoryNLP (Zahiri & Choi, 2018), files ``emorynlp_{train,dev,test}_final.csv`` as distributed
with MELD: a dialogue is a scene, keyed by ``(Season, Episode, Scene_ID)``; the ``Speaker``
column holds a Python list literal because a line can be said by several people at once.

Text repair: many circulating copies of these CSVs carry Windows-1252 punctuation that was
decoded as Latin-1 somewhere along the way (``it\\x92s`` or ``itÂ\\x92s`` for ``it’s``). The
readers repair such mojibake with ``ftfy`` (curly quotes are kept, nothing else is normalised)
and count the utterances they changed in :attr:`TranscriptCorpus.repaired`.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, NoReturn, Sequence

import numpy as np

from redifu.data.dialogue import SPLITS, DataError, DatasetMetadata, Dialogue, DialogueCorpus

logger = logging.getLogger(__name__)

MELD_EMOTIONS: tuple[str, ...] = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
"""MELD's 7 emotions in the label-index order used by the standard feature files."""

MELD_SENTIMENTS: tuple[str, ...] = ("neutral", "positive", "negative")

EMORYNLP_EMOTIONS: tuple[str, ...] = ("Joyful", "Mad", "Peaceful", "Neutral", "Sad", "Powerful", "Scared")
"""EmoryNLP's 7 emotions in the label-index order used by the standard feature files."""

MELD_FILES: dict[str, str] = {
    "train": "train_sent_emo.csv",
    "dev": "dev_sent_emo.csv",
    "test": "test_sent_emo.csv",
}
EMORYNLP_FILES: dict[str, str] = {
    "train": "emorynlp_train_final.csv",
    "dev": "emorynlp_dev_final.csv",
    "test": "emorynlp_test_final.csv",
}

MELD_SPEAKER_SLOTS = 9
"""Speaker slots in MELD's standard feature files (one-hot speaker vectors of length 9)."""

MULTI_SPEAKER_SEPARATOR = " & "
"""Joins the names of an EmoryNLP line said by several people (names sorted first)."""

_MAX_SPEAKER_FIELD = 1000  # characters; a real speaker list is far shorter


@dataclass(frozen=True)
class TranscriptUtterance:
    """One utterance of a transcript CSV.

    Args:
        dialogue_id: Dialogue identifier (MELD: ``Dialogue_ID``; EmoryNLP: ``s{S}e{E}c{C}``).
        index: The utterance id from the file (``Utterance_ID``); may have gaps.
        speaker: Speaker name (EmoryNLP lines by several people: sorted names joined by
            :data:`MULTI_SPEAKER_SEPARATOR`).
        text: Utterance text, mojibake repaired.
        emotion: Emotion class index into the corpus' ``classes``.
        sentiment: Sentiment index into :data:`MELD_SENTIMENTS` (MELD only, else ``None``).
        start: Start time in the episode, as written in the file (``None`` if absent).
        end: End time in the episode, as written in the file (``None`` if absent).
    """

    dialogue_id: str
    index: int
    speaker: str
    text: str
    emotion: int
    sentiment: int | None
    start: str | None
    end: str | None


@dataclass
class TranscriptCorpus:
    """A transcript dataset: per split, dialogues as lists of utterances in spoken order.

    Args:
        name: Dataset name (for reports).
        classes: Emotion class names in label-index order.
        splits: Split name to dialogues; dialogues sorted by id, utterances by utterance id.
        repaired: Number of utterances whose text or speaker was changed by mojibake repair.
        source_files: Split name to the SHA-256 of the CSV it was read from.
    """

    name: str
    classes: tuple[str, ...]
    splits: dict[str, list[list[TranscriptUtterance]]]
    repaired: int
    source_files: dict[str, str]

    def num_dialogues(self, split: str) -> int:
        return len(self.splits.get(split, []))

    def num_utterances(self, split: str) -> int:
        return sum(len(d) for d in self.splits.get(split, []))

    @property
    def max_speakers(self) -> int:
        """Largest number of distinct speakers in one dialogue, over all splits."""
        return max(
            (len({u.speaker for u in d}) for dialogues in self.splits.values() for d in dialogues),
            default=1,
        )

    def to_dialogue_corpus(
        self,
        encode: Callable[[Sequence[str]], np.ndarray],
        *,
        num_speakers: int | None = None,
        description: str = "",
    ) -> DialogueCorpus:
        """Encode every utterance's text and build a text-only :class:`DialogueCorpus`.

        Args:
            encode: Maps a list of ``T`` texts to a ``float32`` array of shape ``(T, D)``
                (e.g. :meth:`redifu.features.text.TextEncoder.encode`).
            num_speakers: Speaker slots; default :attr:`max_speakers`. See :func:`speaker_slots`
                for what happens to the speakers of a dialogue with more people than slots.
            description: Stored in the metadata.
        """
        slots = self.max_speakers if num_speakers is None else num_speakers
        if slots < 1:
            raise ValueError(f"num_speakers must be >= 1, got {slots}")
        splits: dict[str, list[Dialogue]] = {}
        dimension: int | None = None
        folded = 0
        for split, dialogues in self.splits.items():
            texts = [u.text for d in dialogues for u in d]
            features = np.asarray(encode(texts), dtype=np.float32)
            if features.ndim != 2 or features.shape[0] != len(texts):
                raise DataError(
                    f"{self.name}: split {split!r}: field 'text': encoder returned shape "
                    f"{tuple(features.shape)} for {len(texts)} texts"
                )
            if dimension is None:
                dimension = int(features.shape[1])
            elif features.shape[1] != dimension:
                raise DataError(
                    f"{self.name}: split {split!r}: field 'text': feature size {features.shape[1]}, "
                    f"expected {dimension}"
                )
            out: list[Dialogue] = []
            offset = 0
            for dialogue in dialogues:
                n = len(dialogue)
                speakers = speaker_slots(dialogue, max_slots=slots)
                folded += int(len({u.speaker for u in dialogue}) > slots)
                out.append(
                    Dialogue(
                        dialogue_id=dialogue[0].dialogue_id,
                        speakers=speakers,
                        labels=np.array([u.emotion for u in dialogue], dtype=np.int64),
                        features={"text": features[offset : offset + n]},
                    )
                )
                offset += n
            splits[split] = out
        if folded:
            logger.warning(
                "%s: %d dialogue(s) have more than %d speakers; the extra speakers share slot %d",
                self.name, folded, slots, slots - 1,
            )
        metadata = DatasetMetadata(
            name=self.name,
            classes=self.classes,
            num_speakers=slots,
            modality_dims={"text": dimension if dimension is not None else 0},
            description=description,
        )
        corpus = DialogueCorpus(metadata=metadata, splits=splits)
        corpus.validate(self.name)
        return corpus


def speaker_slots(dialogue: Sequence[TranscriptUtterance], *, max_slots: int | None = None) -> np.ndarray:
    """Speaker slot per utterance: each name gets the next slot on its first appearance.

    With ``max_slots`` set, the speakers beyond the first ``max_slots - 1`` distinct ones all
    share the last slot ``max_slots - 1`` (so the "same speaker" relation becomes approximate
    for them). The official MELD and EmoryNLP files never exceed 9 speakers per dialogue.

    Shapes:
        output: ``(N,)`` int64 for a dialogue of ``N`` utterances.
    """
    if max_slots is not None and max_slots < 1:
        raise ValueError(f"max_slots must be >= 1, got {max_slots}")
    slots: dict[str, int] = {}
    out = np.empty(len(dialogue), dtype=np.int64)
    for i, utterance in enumerate(dialogue):
        slot = slots.setdefault(utterance.speaker, len(slots))
        if max_slots is not None:
            slot = min(slot, max_slots - 1)
        out[i] = slot
    return out


# ---------------------------------------------------------------------------------------------
# Reading


def read_meld_csvs(directory: str | Path) -> TranscriptCorpus:
    """Read MELD's ``train/dev/test_sent_emo.csv`` from ``directory``.

    Raises:
        DataError: a file is missing or malformed; the message names the file, line, dialogue
            and field.
    """
    return _read_corpus("MELD", MELD_EMOTIONS, MELD_FILES, _read_meld_file, Path(directory))


def read_emorynlp_csvs(directory: str | Path) -> TranscriptCorpus:
    """Read EmoryNLP's ``emorynlp_{train,dev,test}_final.csv`` from ``directory``.

    Raises:
        DataError: a file is missing or malformed; the message names the file, line, dialogue
            and field.
    """
    return _read_corpus("EmoryNLP", EMORYNLP_EMOTIONS, EMORYNLP_FILES, _read_emorynlp_file, Path(directory))


def _read_corpus(
    name: str,
    classes: tuple[str, ...],
    files: Mapping[str, str],
    read_file: Callable[[Path], tuple[list[list[TranscriptUtterance]], str, int]],
    directory: Path,
) -> TranscriptCorpus:
    splits: dict[str, list[list[TranscriptUtterance]]] = {}
    hashes: dict[str, str] = {}
    repaired = 0
    for split, filename in files.items():
        dialogues, digest, fixed = read_file(directory / filename)
        splits[split], hashes[split] = dialogues, digest
        repaired += fixed
    _log_summary(name, splits, repaired)
    return TranscriptCorpus(name, classes, splits, repaired, hashes)


_MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
_EMORYNLP_COLUMNS = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")


def _read_meld_file(path: Path) -> tuple[list[list[TranscriptUtterance]], str, int]:
    repair = _TextRepair()
    dialogues: dict[int, dict[int, TranscriptUtterance]] = {}
    first_line: dict[tuple[int, int], int] = {}
    data = _read_bytes(path)
    for line, row in _rows(path, data, _MELD_COLUMNS):
        dialogue = _integer(row["Dialogue_ID"], path, line, "?", "Dialogue_ID")
        where = (path, line, str(dialogue))
        utterance = _integer(row["Utterance_ID"], path, line, str(dialogue), "Utterance_ID")
        key = (dialogue, utterance)
        if key in first_line:
            _fail(*where, "Utterance_ID", f"duplicate utterance {utterance} (first on line {first_line[key]})")
        first_line[key] = line
        speaker = repair.fix(row["Speaker"]).strip()
        if not speaker:
            _fail(*where, "Speaker", "empty")
        dialogues.setdefault(dialogue, {})[utterance] = TranscriptUtterance(
            dialogue_id=str(dialogue),
            index=utterance,
            speaker=speaker,
            text=repair.fix(row["Utterance"]),
            emotion=_label(row["Emotion"], MELD_EMOTIONS, *where, "Emotion"),
            sentiment=_label(row["Sentiment"], MELD_SENTIMENTS, *where, "Sentiment"),
            start=row.get("StartTime") or None,
            end=row.get("EndTime") or None,
        )
        repair.end_utterance()
    ordered = [[utts[i] for i in sorted(utts)] for _, utts in sorted(dialogues.items())]
    return ordered, hashlib.sha256(data).hexdigest(), repair.count


def _read_emorynlp_file(path: Path) -> tuple[list[list[TranscriptUtterance]], str, int]:
    repair = _TextRepair()
    dialogues: dict[tuple[int, int, int], dict[int, TranscriptUtterance]] = {}
    first_line: dict[tuple[int, int, int, int], int] = {}
    data = _read_bytes(path)
    for line, row in _rows(path, data, _EMORYNLP_COLUMNS):
        season = _integer(row["Season"], path, line, "?", "Season")
        episode = _integer(row["Episode"], path, line, "?", "Episode")
        scene = _integer(row["Scene_ID"], path, line, "?", "Scene_ID")
        dialogue_id = f"s{season}e{episode}c{scene}"
        where = (path, line, dialogue_id)
        utterance = _integer(row["Utterance_ID"], path, line, dialogue_id, "Utterance_ID")
        key = (season, episode, scene, utterance)
        if key in first_line:
            _fail(*where, "Utterance_ID", f"duplicate utterance {utterance} (first on line {first_line[key]})")
        first_line[key] = line
        names = [repair.fix(name).strip() for name in _speaker_list(row["Speaker"], *where)]
        dialogues.setdefault((season, episode, scene), {})[utterance] = TranscriptUtterance(
            dialogue_id=dialogue_id,
            index=utterance,
            speaker=MULTI_SPEAKER_SEPARATOR.join(sorted(set(names))),
            text=repair.fix(row["Utterance"]),
            emotion=_label(row["Emotion"], EMORYNLP_EMOTIONS, *where, "Emotion"),
            sentiment=None,
            start=row.get("Start_Time") or None,
            end=row.get("End_Time") or None,
        )
        repair.end_utterance()
    ordered = [[utts[i] for i in sorted(utts)] for _, utts in sorted(dialogues.items())]
    return ordered, hashlib.sha256(data).hexdigest(), repair.count


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path.read_bytes()


def _rows(path: Path, data: bytes, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number of the record's first line, row)``; header checked first."""
    text = _decode(path, data)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: file is empty (no header line)") from None
    except csv.Error as error:
        raise DataError(f"{path}: line 1: {error}") from None
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (header has {header})")
    line = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(f"{path}: line {line}: {error}") from None
        if record:  # csv yields [] for blank lines
            if len(record) != len(header):
                raise DataError(
                    f"{path}: line {line}: {len(record)} fields, the header has {len(header)}"
                )
            yield line, dict(zip(header, record))
        line = reader.line_num + 1


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # Single-byte (Windows-1252) copies exist; Latin-1 never fails and ftfy then maps the
        # C1 control characters it produces back to the punctuation they stood for.
        logger.warning("%s: not UTF-8 (%s); reading it as Latin-1 and repairing", path, error.reason)
        return data.decode("latin-1")


class _TextRepair:
    """ftfy with settings that only undo encoding damage (quotes stay curly, no NFKC, ...)."""

    def __init__(self) -> None:
        try:
            import ftfy
        except ImportError as error:  # pragma: no cover - ftfy is a core dependency
            raise ImportError("reading transcript CSVs needs ftfy: pip install ftfy") from error
        self._fix_text = ftfy.fix_text
        self._config = ftfy.TextFixerConfig(
            unescape_html=False,
            uncurl_quotes=False,
            fix_latin_ligatures=False,
            fix_character_width=False,
            explain=False,
        )
        self.count = 0
        self.changed = False

    def fix(self, text: str) -> str:
        if text.isascii():
            return text
        fixed = self._fix_text(text, self._config)
        if fixed != text:
            self.changed = True
        return fixed

    def end_utterance(self) -> None:
        self.count += int(self.changed)
        self.changed = False


def _integer(value: str, path: Path, line: int, dialogue: str, field: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        _fail(path, line, dialogue, field, f"not an integer: {_short(value)}")


def _label(value: str, classes: tuple[str, ...], path: Path, line: int, dialogue: str, field: str) -> int:
    wanted = value.strip().lower()
    for i, name in enumerate(classes):
        if name.lower() == wanted:
            return i
    _fail(path, line, dialogue, field, f"unknown label {_short(value)}; expected one of {list(classes)}")


def _speaker_list(value: str, path: Path, line: int, dialogue: str) -> list[str]:
    """Parse ``"['A', 'B']"`` with :func:`ast.literal_eval` (literals only, never code)."""
    problem = None
    names: object = None
    if len(value) > _MAX_SPEAKER_FIELD:
        problem = f"longer than {_MAX_SPEAKER_FIELD} characters"
    else:
        try:
            names = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            problem = "not a Python list literal"
    if problem is None:
        if not isinstance(names, (list, tuple)) or not names:
            problem = "not a non-empty list"
        elif not all(isinstance(n, str) and n.strip() for n in names):
            problem = "list items must be non-empty strings"
    if problem is not None:
        _fail(path, line, dialogue, "Speaker", f"cannot parse speaker list {_short(value)}: {problem}")
    return list(names)  # type: ignore[arg-type]


def _fail(path: Path, line: int, dialogue: str, field: str, message: str) -> NoReturn:
    raise DataError(f"{path}: line {line}: dialogue {dialogue}: field {field!r}: {message}")


def _short(value: str, limit: int = 60) -> str:
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)  # repr keeps the message on one line


def _log_summary(name: str, splits: Mapping[str, list[list[TranscriptUtterance]]], repaired: int) -> None:
    sizes = ", ".join(
        f"{split} {len(splits[split])}/{sum(len(d) for d in splits[split])}" for split in SPLITS if split in splits
    )
    logger.info("%s: dialogues/utterances %s; %d utterance(s) repaired", name, sizes, repaired)
