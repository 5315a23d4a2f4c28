"""Reader for IEMOCAP's transcripts as COSMIC distributes them (``iemocap.pkl``).

IEMOCAP (Busso et al., 2008) is licensed; its transcripts and labels circulate as the pickle
COSMIC's feature extraction reads (declare-lab/conv-emotion,
``COSMIC/feature-extraction/iemocap/iemocap.pkl``). It holds builtins only, a list of six items::

    [speakers, labels, sentences, trainIds, testIds, validIds]

``speakers``, ``labels`` and ``sentences`` are dicts keyed by dialogue id (``Ses01F_impro01``)
holding one entry per utterance in spoken order: ``'M'``/``'F'``, a label index in the order of
the registry entry's classes (hap, sad, neu, ang, exc, fru), and the text. The three id
collections (lists or sets) give the official split: ``trainIds`` -> train, ``validIds`` -> dev,
``testIds`` -> test (108/12/31 dialogues). Dialogues are taken in sorted id order whatever the
collection type, so the result never depends on set iteration order.

The file is read with :func:`~redifu.data.safe_pickle.load_pickle_safely`: a pickle naming any
code is refused before anything runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NoReturn, Sequence

from redifu.data.csv_corpora import TranscriptCorpus, TranscriptUtterance
from redifu.data.dialogue import SPLITS, DataError
from redifu.data.safe_pickle import load_pickle_safely
from redifu.files import file_sha256

if TYPE_CHECKING:
    from redifu.data.registry import DatasetEntry

logger = logging.getLogger(__name__)

__all__ = ["COSMIC_FIELDS", "COSMIC_SPEAKERS", "COSMIC_SPLIT_FIELDS", "read_iemocap_pickle"]

COSMIC_FIELDS: tuple[str, ...] = ("speakers", "labels", "sentences", "trainIds", "testIds", "validIds")
"""The six items of COSMIC's ``iemocap.pkl``, in file order (the names COSMIC's loader gives them)."""

COSMIC_SPLIT_FIELDS: dict[str, str] = {"train": "trainIds", "dev": "validIds", "test": "testIds"}
"""Split to the item listing its dialogue ids (COSMIC's validation list is the dev split)."""

COSMIC_SPEAKERS: tuple[str, ...] = ("M", "F")
"""Speaker codes: each session's male and female actor."""


def read_iemocap_pickle(directory: str | Path, dataset: "DatasetEntry | None" = None) -> TranscriptCorpus:
    """Read COSMIC's ``iemocap.pkl`` from ``directory`` into a :class:`TranscriptCorpus`.

    Args:
        directory: The folder holding the entry's file (every split in ``split_files`` names it).
        dataset: The registry entry giving the title, classes and file name; default IEMOCAP's.

    Returns:
        Splits train/dev/test, dialogues in sorted id order, utterances in the file's order
        (``index`` 0, 1, ...), speakers ``'M'``/``'F'`` as given, texts as given (empty allowed,
        as in the CSV readers).

    Raises:
        UnsafePickleError: The file references code.
        DataError: The file is missing or malformed; the one-line message names the file, the
            dialogue and the field.
    """
    if dataset is None:
        from redifu.data.registry import get  # the registry imports this reader

        dataset = get("iemocap")
    directory = Path(directory)
    files = {split: directory / name for split, name in dataset.split_files.items()}
    cache: dict[Path, tuple[dict[str, Any], str]] = {}
    splits: dict[str, list[list[TranscriptUtterance]]] = {}
    hashes: dict[str, str] = {}
    owner: dict[Any, tuple[Path, str]] = {}  # dialogue id -> (file, split field listing it)
    for split in (s for s in SPLITS if s in files):
        path = files[split]
        if path not in cache:
            cache[path] = (_read_fields(path), file_sha256(path))
        fields, digest = cache[path]
        field = COSMIC_SPLIT_FIELDS[split]
        ids = _split_ids(path, field, fields[field])
        for dialogue_id in ids:
            if dialogue_id in owner:
                other_path, other = owner[dialogue_id]
                also = f"'{other}'" if other_path == path else f"'{other}' of {other_path}"
                _fail(path, dialogue_id, field, f"also listed in {also} (splits must be disjoint)")
            owner[dialogue_id] = (path, field)
        splits[split] = [_dialogue(path, fields, dialogue_id, field, dataset.classes) for dialogue_id in ids]
        hashes[split] = digest
    for path, (fields, _) in cache.items():
        unused = sum(1 for dialogue_id in fields["labels"] if dialogue_id not in owner)
        if unused:
            logger.warning("%s: %d dialogue(s) are in no split; left out", path, unused)
    sizes = ", ".join(f"{s} {len(d)}/{sum(len(x) for x in d)}" for s, d in splits.items())
    logger.info("%s: dialogues/utterances %s", dataset.title, sizes)
    return TranscriptCorpus(dataset.title, dataset.classes, splits, 0, hashes)


def _read_fields(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    obj = load_pickle_safely(path)
    if not isinstance(obj, (list, tuple)) or len(obj) != len(COSMIC_FIELDS):
        got = f"a {type(obj).__name__} of {len(obj)}" if isinstance(obj, (list, tuple)) else f"a {type(obj).__name__}"
        raise DataError(f"{path}: expected a list of {len(COSMIC_FIELDS)} items ({', '.join(COSMIC_FIELDS)}), got {got}")
    fields = dict(zip(COSMIC_FIELDS, obj))
    for name in COSMIC_FIELDS[:3]:
        if not isinstance(fields[name], dict):
            raise DataError(f"{path}: field {name!r}: expected a dict keyed by dialogue id, "
                            f"got a {type(fields[name]).__name__}")
    return fields


def _split_ids(path: Path, field: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise DataError(f"{path}: field {field!r}: expected a list or set of dialogue ids, got a {type(value).__name__}")
    ids = list(value)
    if not ids:
        raise DataError(f"{path}: field {field!r}: no dialogues listed")
    odd = next((i for i in ids if not isinstance(i, (str, int)) or isinstance(i, bool)), None)
    if odd is not None:  # COSMIC's ids are strings ('Ses01F_impro01'); ints sort and print as well
        raise DataError(" ".join(f"{path}: field {field!r}: dialogue id {_short(odd)}: expected a string".split()))
    seen: set[Any] = set()
    for dialogue_id in ids:
        if dialogue_id in seen:
            _fail(path, dialogue_id, field, "listed twice")
        seen.add(dialogue_id)
    return sorted(ids, key=lambda dialogue_id: (type(dialogue_id).__name__, dialogue_id))


def _dialogue(path: Path, fields: Mapping[str, Any], dialogue_id: Any, listed_in: str,
              classes: Sequence[str]) -> list[TranscriptUtterance]:
    values: dict[str, Sequence[Any]] = {}
    for name in COSMIC_FIELDS[:3]:
        try:
            value = fields[name][dialogue_id]
        except (KeyError, TypeError):
            _fail(path, dialogue_id, name, f"missing, but the dialogue is listed in {listed_in!r}")
        if not isinstance(value, (list, tuple)):
            _fail(path, dialogue_id, name, f"expected a list with one entry per utterance, got a {type(value).__name__}")
        values[name] = value
    count = len(values["labels"])
    if count == 0:
        _fail(path, dialogue_id, "labels", "dialogue is empty")
    for name in ("speakers", "sentences"):
        if len(values[name]) != count:
            _fail(path, dialogue_id, name, f"{len(values[name])} utterances, but 'labels' has {count}")
    utterances = []
    for position, (speaker, label, text) in enumerate(zip(values["speakers"], values["labels"], values["sentences"])):
        if not isinstance(speaker, str) or speaker not in COSMIC_SPEAKERS:
            _fail(path, dialogue_id, "speakers", f"unknown speaker {_short(speaker)} at utterance {position} "
                  f"(expected {' or '.join(repr(s) for s in COSMIC_SPEAKERS)})")
        if type(label) is not int or not 0 <= label < len(classes):
            _fail(path, dialogue_id, "labels", f"label {_short(label)} at utterance {position}: expected an "
                  f"integer in 0..{len(classes) - 1} ({', '.join(classes)})")
        if not isinstance(text, str):
            _fail(path, dialogue_id, "sentences", f"utterance {position}: expected a string, got a {type(text).__name__}")
        utterances.append(TranscriptUtterance(dialogue_id=str(dialogue_id), index=position, speaker=speaker,
                                              text=text, emotion=label, sentiment=None, start=None, end=None))
    return utterances


def _fail(path: Path, dialogue_id: Any, field: str, message: str) -> NoReturn:
    # ids and values are quoted from the file: squash whitespace so the message stays one line
    raise DataError(" ".join(f"{path}: dialogue {dialogue_id}: field {field!r}: {message}".split()))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
