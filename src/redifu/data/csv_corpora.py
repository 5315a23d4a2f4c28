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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, NoReturn, Sequence

import numpy as np

from redifu.data.dialogue import SPLITS, DataError, DatasetMetadata, Dialogue, DialogueCorpus

if TYPE_CHECKING:
    from redifu.data.registry import DatasetEntry

logger = logging.getLogger(__name__)

MELD_SENTIMENTS: tuple[str, ...] = ("neutral", "positive", "negative")
"""The values of MELD's ``Sentiment`` column, in index order (part of the CSV format; the emotion
classes, files and speaker slots of each dataset are in :mod:`redifu.data.registry`)."""

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

    def without(self, dropped: Mapping[str, set[str]]) -> "TranscriptCorpus":
        """A copy without the dialogues whose ids ``dropped[split]`` lists."""
        splits = {split: [d for d in dialogues if d[0].dialogue_id not in dropped.get(split, set())]
                  for split, dialogues in self.splits.items()}
        return TranscriptCorpus(self.name, self.classes, splits, self.repaired, dict(self.source_files))

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
        encode: Callable[[Sequence[Sequence[tuple[str, str]]]], np.ndarray],
        *,
        num_speakers: int | None = None,
        description: str = "",
        features: Mapping[str, Callable[[str, list[list[TranscriptUtterance]]], np.ndarray]] | None = None,
    ) -> DialogueCorpus:
        """Encode every utterance's text and build a :class:`DialogueCorpus`.

        Args:
            encode: Maps a list of dialogues, each a list of ``(speaker, text)`` pairs, to a
                ``float32`` array of shape ``(T, D)`` for their ``T`` utterances in order (e.g.
                ``lambda d: redifu.features.text.encode_dialogues(encoder, d)``; a context-aware
                encoder reads each utterance with its dialogue).
            num_speakers: Speaker slots; default :attr:`max_speakers`. See :func:`speaker_slots`
                for what happens to the speakers of a dialogue with more people than slots.
            description: Stored in the metadata.
            features: More modalities: name to a function of ``(split, dialogues)`` returning the
                ``(U, D_m)`` features of the split's ``U`` utterances in order (e.g. audio).

        Shapes:
            ``encode``: dialogues of ``T`` utterances in all -> ``(T, D_text)``; each ``features`` function -> ``(U, D_m)``.
        """
        slots = self.max_speakers if num_speakers is None else num_speakers
        if slots < 1:
            raise ValueError(f"num_speakers must be >= 1, got {slots}")
        splits: dict[str, list[Dialogue]] = {}
        extra = dict(features or {})
        if "text" in extra:
            raise ValueError("features: 'text' comes from encode")
        dimensions: dict[str, int] = {}
        folded = 0
        for split, dialogues in self.splits.items():
            texts = [u.text for d in dialogues for u in d]
            arrays = {"text": np.asarray(encode([[(u.speaker, u.text) for u in d] for d in dialogues]),
                                         dtype=np.float32)}  # (U, D_text)
            arrays.update({m: np.asarray(make(split, dialogues), dtype=np.float32) for m, make in extra.items()})
            for modality, array in arrays.items():
                what = "encoder" if modality == "text" else "extractor"
                if array.ndim != 2 or array.shape[0] != len(texts):
                    raise DataError(
                        f"{self.name}: split {split!r}: field {modality!r}: {what} returned shape "
                        f"{tuple(array.shape)} for {len(texts)} utterances"
                    )
                expected = dimensions.setdefault(modality, int(array.shape[1]))
                if array.shape[1] != expected:
                    raise DataError(
                        f"{self.name}: split {split!r}: field {modality!r}: feature size {array.shape[1]}, "
                        f"expected {expected}"
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
                        features={m: array[offset : offset + n] for m, array in arrays.items()},
                        speaker_names=tuple(u.speaker for u in dialogue),
                        texts=tuple(u.text for u in dialogue),
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
            modality_dims={m: dimensions.get(m, 0) for m in ("text", *extra)},
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
# Where each utterance's audio is

MELD_AUDIO_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("train_splits", "train"),
    "dev": ("dev_splits_complete", "dev_splits", "dev"),
    "test": ("output_repeated_splits_test", "test_splits", "test"),
}
"""Per split, the folder names (under ``--audio DIR``) searched for MELD's clips, first match
wins: the official ``MELD.Raw`` archives unpack to the first name of each."""

AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".mp4", ".m4a", ".mkv", ".avi", ".webm", ".mp3", ".ogg")
"""Audio file suffixes looked for, in order of preference (a ``.wav`` made from a ``.mp4``
beside it wins)."""

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v")
"""Video file suffixes looked for (``--video DIR``), in order of preference."""


@dataclass(frozen=True)
class AudioSource:
    """Where one utterance's audio is: a file, and optionally a segment of it (seconds or
    ``HH:MM:SS,mmm``)."""

    path: Path
    start: str | None = None
    end: str | None = None


class MeldAudio:
    """MELD's per-utterance clips: ``DIR/<split folder>/dia{Dialogue_ID}_utt{Utterance_ID}.<suffix>``.

    The official clips are ``.mp4`` (video with an AAC audio track); ``.wav``/``.flac`` copies
    with the same stem are preferred when present. Each folder is listed once.

    Raises (from :meth:`locate`):
        DataError: no folder for the split, or no file for the utterance; the message names
            the folder or the expected file.
    """

    layout = "meld: DIR/{train_splits,dev_splits_complete,output_repeated_splits_test}/dia{D}_utt{U}.<suffix>"

    def __init__(self, directory: str | Path, *, suffixes: tuple[str, ...] = AUDIO_SUFFIXES,
                 media: str = "audio") -> None:
        self.directory = Path(directory)
        self.suffixes, self.media = tuple(suffixes), media
        if not self.directory.is_dir():
            raise DataError(f"{self.directory}: {media} folder not found")
        self._files: dict[str, tuple[Path, dict[str, Path]]] = {}

    def _folder(self, split: str) -> tuple[Path, dict[str, Path]]:
        if split not in self._files:
            names = MELD_AUDIO_FOLDERS.get(split, (split,))
            folder = next((self.directory / n for n in names if (self.directory / n).is_dir()), None)
            if folder is None:
                raise DataError(f"{self.directory}: no folder for MELD's {split} split "
                                f"(looked for {', '.join(names)})")
            files: dict[str, Path] = {}
            rank = {suffix: i for i, suffix in enumerate(self.suffixes)}
            for path in folder.iterdir():
                suffix = path.suffix.lower()
                if suffix in rank and not path.name.startswith("."):  # skip macOS "._x.mp4" forks
                    best = files.get(path.stem)
                    if best is None or rank[suffix] < rank[best.suffix.lower()]:
                        files[path.stem] = path
            self._files[split] = (folder, files)
        return self._files[split]

    def check(self, splits: Sequence[str]) -> None:
        """Raise :class:`DataError` unless every split has its folder (never a per-dialogue problem)."""
        for split in splits:
            self._folder(split)

    def locate(self, split: str, utterance: TranscriptUtterance) -> AudioSource:
        folder, files = self._folder(split)
        stem = f"dia{utterance.dialogue_id}_utt{utterance.index}"
        if stem not in files:
            raise DataError(f"{folder / (stem + '.mp4')}: {self.media} file not found "
                            f"(nor {stem} with {', '.join(s for s in self.suffixes if s != '.mp4')})")
        return AudioSource(files[stem])


class EpisodeAudio:
    """One audio (or video) file per episode, cut by the CSVs' start/end times: EmoryNLP's
    ``Start_Time``/``End_Time`` point into Friends episodes (which it does not distribute).

    A file belongs to season ``S`` episode ``E`` when its name holds ``s{S}e{E}`` (any case, zero
    padding optional: ``Friends.S01E02.mkv``, ``s1e2.wav``). Files are searched recursively.

    Raises (from the constructor or :meth:`locate`):
        DataError: two files for one episode, no file for an utterance's episode, or an
            utterance without times; the message names the folder or episode.
    """

    layout = "episode: DIR/**/*s{season}e{episode}*.<suffix>, cut at Start_Time..End_Time"
    _EPISODE = re.compile(r"(?<![a-z0-9])s0*(\d{1,2})[ ._-]?e0*(\d{1,3})(?![0-9])")
    _DIALOGUE = re.compile(r"s(\d+)e(\d+)c\d+")

    def __init__(self, directory: str | Path, *, suffixes: tuple[str, ...] = AUDIO_SUFFIXES,
                 media: str = "audio") -> None:
        self.directory = Path(directory)
        self.suffixes, self.media = tuple(suffixes), media
        if not self.directory.is_dir():
            raise DataError(f"{self.directory}: {media} folder not found")
        rank = {suffix: i for i, suffix in enumerate(self.suffixes)}
        self.episodes: dict[tuple[int, int], Path] = {}
        for path in sorted(self.directory.rglob("*")):
            suffix = path.suffix.lower()
            found = self._EPISODE.search(path.stem.lower())
            if suffix not in rank or found is None or path.name.startswith(".") or not path.is_file():
                continue
            key = (int(found.group(1)), int(found.group(2)))
            other = self.episodes.get(key)
            if other is not None and rank[other.suffix.lower()] == rank[suffix]:
                raise DataError(f"{path}: season {key[0]} episode {key[1]} has two {media} files (also {other})")
            if other is None or rank[suffix] < rank[other.suffix.lower()]:
                self.episodes[key] = path

    def check(self, splits: Sequence[str]) -> None:
        """Raise :class:`DataError` when the folder holds no episode file at all."""
        if not self.episodes:
            raise DataError(f"{self.directory}: no episode {self.media} files (names holding s01e02, with a suffix of "
                            f"{', '.join(self.suffixes)})")

    def locate(self, split: str, utterance: TranscriptUtterance) -> AudioSource:
        match = self._DIALOGUE.fullmatch(utterance.dialogue_id)
        if match is None:
            raise DataError(f"dialogue id {utterance.dialogue_id!r} does not name a season and episode")
        key = (int(match.group(1)), int(match.group(2)))
        if key not in self.episodes:
            raise DataError(f"{self.directory}: {self.media} file not found for season {key[0]} episode {key[1]} "
                            f"(a name holding s{key[0]:02d}e{key[1]:02d})")
        if utterance.start is None or utterance.end is None:
            raise DataError(f"{self.episodes[key]}: the utterance has no start/end time in the CSV")
        return AudioSource(self.episodes[key], utterance.start, utterance.end)


# ---------------------------------------------------------------------------------------------
# Reading


def read_meld_csvs(directory: str | Path, dataset: "DatasetEntry | None" = None) -> TranscriptCorpus:
    """Read MELD-format CSVs (``train/dev/test_sent_emo.csv``) from ``directory``.

    Args:
        directory: The folder holding the entry's ``split_files``.
        dataset: The registry entry giving the title, classes and file names; default MELD's.

    Raises:
        DataError: a file is missing or malformed; the message names the file, line, dialogue
            and field.
    """
    return _read_corpus(dataset or _entry("meld"), _read_meld_file, Path(directory))


def read_emorynlp_csvs(directory: str | Path, dataset: "DatasetEntry | None" = None) -> TranscriptCorpus:
    """Read EmoryNLP-format CSVs (``emorynlp_{train,dev,test}_final.csv``) from ``directory``.

    Args:
        directory: The folder holding the entry's ``split_files``.
        dataset: The registry entry giving the title, classes and file names; default EmoryNLP's.

    Raises:
        DataError: a file is missing or malformed; the message names the file, line, dialogue
            and field.
    """
    return _read_corpus(dataset or _entry("emorynlp"), _read_emorynlp_file, Path(directory))


def _entry(name: str) -> "DatasetEntry":
    from redifu.data.registry import get  # the registry imports these readers

    return get(name)


def _read_corpus(
    dataset: "DatasetEntry",
    read_file: Callable[[Path, tuple[str, ...]], tuple[list[list[TranscriptUtterance]], str, int]],
    directory: Path,
) -> TranscriptCorpus:
    splits: dict[str, list[list[TranscriptUtterance]]] = {}
    hashes: dict[str, str] = {}
    repaired = 0
    for split, filename in dataset.split_files.items():
        dialogues, digest, fixed = read_file(directory / filename, dataset.classes)
        splits[split], hashes[split] = dialogues, digest
        repaired += fixed
    _log_summary(dataset.title, splits, repaired)
    return TranscriptCorpus(dataset.title, dataset.classes, splits, repaired, hashes)


_MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
_EMORYNLP_COLUMNS = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")


def _read_meld_file(path: Path, classes: tuple[str, ...]) -> tuple[list[list[TranscriptUtterance]], str, int]:
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
            emotion=_label(row["Emotion"], classes, *where, "Emotion"),
            sentiment=_label(row["Sentiment"], MELD_SENTIMENTS, *where, "Sentiment"),
            start=row.get("StartTime") or None,
            end=row.get("EndTime") or None,
        )
        repair.end_utterance()
    ordered = [[utts[i] for i in sorted(utts)] for _, utts in sorted(dialogues.items())]
    return ordered, hashlib.sha256(data).hexdigest(), repair.count


def _read_emorynlp_file(path: Path, classes: tuple[str, ...]) -> tuple[list[list[TranscriptUtterance]], str, int]:
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
            emotion=_label(row["Emotion"], classes, *where, "Emotion"),
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


class MeldVideo(MeldAudio):
    """MELD's clips as video (``--video DIR``): the layout of :class:`MeldAudio`, video suffixes only."""

    layout = "meld: DIR/{train_splits,dev_splits_complete,output_repeated_splits_test}/dia{D}_utt{U}.mp4"

    def __init__(self, directory: str | Path) -> None:
        super().__init__(directory, suffixes=VIDEO_SUFFIXES, media="video")


class EpisodeVideo(EpisodeAudio):
    """One video file per episode, cut at the CSVs' times (the layout of :class:`EpisodeAudio`)."""

    layout = "episode: DIR/**/*s{season}e{episode}*.<video suffix>, cut at Start_Time..End_Time"

    def __init__(self, directory: str | Path) -> None:
        super().__init__(directory, suffixes=VIDEO_SUFFIXES, media="video")
