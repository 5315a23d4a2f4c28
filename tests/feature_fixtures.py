"""Builders of format-faithful stand-ins for the published ERC feature pickles.

Each builder writes, to a directory the test chooses, a file with the tuple order, container
types, id types, speaker encoding and feature sizes of one real layout, filled with seeded random
numbers (a few dozen dialogues), and returns what it wrote so tests can compare the reader's
output against it. Nothing here imports the reader: the orders below are written out
independently from the authors' loader code.

Where the real container type is known it is copied: COSMIC dumps a *list* of fields with
``train_ids``/``test_ids``/``valid_ids`` lists and per-utterance lists of float32 RoBERTa rows;
the DialogueRNN/MMGCN IEMOCAP files are Python-2 protocol-2 pickles (read with
``encoding='latin1'``) whose split ids are sets; MELD dialogue ids are ints, IEMOCAP ids are
session names. The Python-2 files are produced by :class:`Py2StylePickler`, which emits the
opcodes a Python-2 ``cPickle.dump(obj, f, 2)`` does (``__builtin__`` globals, byte strings,
numpy's Python-2 array state), because Python 3's pickler cannot.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IEMOCAP_CLASS_COUNT = 6
MELD_CLASS_COUNT = 7
MELD_SPEAKER_SLOTS = 9

# Field names per layout, in the order the authors' loaders unpack them, with feature sizes.
_ROBERTA = [("videoText", 1024), ("roberta2", 1024), ("roberta3", 1024), ("roberta4", 1024)]
RECIPES: dict[str, dict[str, Any]] = {
    "sdt-iemocap": dict(
        dataset="iemocap", text=_ROBERTA, audio=1582, visual=342, order="sdt", py2=False,
        protocol=4, split_container=list, container=tuple,
    ),
    "sdt-meld": dict(
        dataset="meld", text=_ROBERTA, audio=300, visual=342, order="sdt", py2=False,
        protocol=4, split_container=list, container=tuple,
    ),
    "mmgcn-iemocap": dict(
        dataset="iemocap", text=[("videoText", 100)], audio=1582, visual=342, order="mmgcn",
        py2=True, split_container=set, container=tuple,
    ),
    "mmgcn-meld": dict(
        dataset="meld", text=[("videoText", 600)], audio=300, visual=342, order="mmgcn",
        py2=False, protocol=3, split_container=list, container=tuple,
    ),
    "dialoguernn-iemocap": dict(
        dataset="iemocap", text=[("videoText", 100)], audio=100, visual=512, order="mmgcn",
        py2=True, split_container=set, container=tuple,
    ),
    "dialoguernn-meld": dict(
        dataset="meld", text=[("videoText", 600)], audio=300, visual=None, order="dialoguernn-meld",
        py2=False, protocol=3, split_container=list, container=tuple,
    ),
    "cosmic-iemocap": dict(
        dataset="iemocap", text=[("roberta1", 1024), ("roberta2", 1024), ("roberta3", 1024),
                                 ("roberta4", 1024)],
        audio=None, visual=None, order="cosmic", py2=False, protocol=3, split_container=list,
        container=list,
    ),
    "cosmic-meld": dict(
        dataset="meld", text=[("roberta1", 1024), ("roberta2", 1024), ("roberta3", 1024),
                              ("roberta4", 1024)],
        audio=None, visual=None, order="cosmic", py2=False, protocol=3, split_container=list,
        container=list,
    ),
}
LAYOUT_NAMES = tuple(RECIPES)


@dataclass
class ExpectedDialogue:
    """What the reader should return for one dialogue (before float32 conversion)."""

    speakers: np.ndarray  # int64 (N,)
    labels: np.ndarray  # int64 (N,)
    text_layers: list[np.ndarray]  # 1 or 4 arrays (N, D)
    audio: np.ndarray | None = None
    visual: np.ndarray | None = None


@dataclass
class Fixture:
    """A fixture's fields (mutable, for corruption tests) plus the expected reading."""

    layout: str
    fields: list[Any]
    names: list[str]
    dialogues: dict[str, ExpectedDialogue]
    train_ids: list[Any]
    test_ids: list[Any]
    dev_ids: list[Any] | None
    num_speakers: int
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def field(self, name: str) -> Any:
        return self.fields[self.index(name)]


def _iemocap_ids(count: int, sessions: tuple[int, ...]) -> list[str]:
    """Unique IEMOCAP-style dialogue names spread over ``sessions``."""
    ids = []
    for i in range(count):
        session = sessions[i % len(sessions)]
        rest = i // len(sessions)
        gender = "FM"[rest % 2]
        kind = "impro" if (rest // 2) % 2 == 0 else "script"
        ids.append(f"Ses0{session}{gender}_{kind}{rest // 4 + 1:02d}")
    return ids


def _split_ids(dataset: str, num_train: int, num_dev: int, num_test: int):
    if dataset == "iemocap":
        # Sessions 1-4 train, session 5 test, as in the real files.
        train = _iemocap_ids(num_train + num_dev, (1, 2, 3, 4))
        test = _iemocap_ids(num_test, (5,))
        return train[:num_train], train[num_train:], test
    # MELD: integer dialogue ids; the train range has a gap (the real files lack dialogue 60).
    train = [i for i in range(num_train + num_dev + 1) if i != 3]
    test = list(range(train[-1] + 1, train[-1] + 1 + num_test))
    return train[:num_train], train[num_train:num_train + num_dev], test


def build_fixture(layout: str, *, seed: int = 0, num_train: int = 20, num_test: int = 6,
                  num_dev: int = 4, lengths: tuple[int, int] = (1, 16),
                  rows_as_matrix: bool = False) -> Fixture:
    """The fields of a ``layout`` file with random content, and what reading it should give.

    ``num_dev`` applies only to COSMIC layouts (the only ones with a validation list).
    ``rows_as_matrix`` stores each dialogue's features as one 2-D array instead of a list of rows.
    """
    recipe = RECIPES[layout]
    rng = np.random.default_rng(seed)
    dataset = recipe["dataset"]
    has_dev = recipe["order"] == "cosmic"
    train, dev, test = _split_ids(dataset, num_train, num_dev if has_dev else 0, num_test)
    all_ids = train + dev + test
    feature_dtype = np.float64 if recipe["py2"] else np.float32

    per_field: dict[str, dict] = {name: {} for name in (
        "utterance_ids", "speakers", "labels", "sentiment", "sentences", "audio", "visual",
        *[n for n, _ in recipe["text"]])}
    expected: dict[str, ExpectedDialogue] = {}
    for number, dialogue_id in enumerate(all_ids):
        # Include a single-utterance dialogue; real MELD has many.
        n = 1 if number == 1 else int(rng.integers(lengths[0], lengths[1] + 1))
        if dataset == "iemocap":
            speaker_index = rng.integers(0, 2, size=n)
            per_field["speakers"][dialogue_id] = ["M" if s == 0 else "F" for s in speaker_index]
            labels = rng.integers(0, IEMOCAP_CLASS_COUNT, size=n)
            per_field["utterance_ids"][dialogue_id] = [
                f"{dialogue_id}_{'MF'[int(s)]}{u:03d}" for u, s in enumerate(speaker_index)]
        else:
            speaker_index = rng.integers(0, MELD_SPEAKER_SLOTS, size=n)
            one_hot = np.eye(MELD_SPEAKER_SLOTS, dtype=np.int64)[speaker_index]
            per_field["speakers"][dialogue_id] = [list(map(int, row)) for row in one_hot]
            labels = rng.integers(0, MELD_CLASS_COUNT, size=n)
            per_field["utterance_ids"][dialogue_id] = list(range(n))
        per_field["labels"][dialogue_id] = [int(x) for x in labels]
        per_field["sentiment"][dialogue_id] = [int(x) for x in rng.integers(0, 3, size=n)]
        per_field["sentences"][dialogue_id] = [f"utterance {u} caf\xe9" for u in range(n)]

        def rows(dim: int) -> tuple[Any, np.ndarray]:
            array = rng.standard_normal((n, dim)).astype(feature_dtype)
            stored = array.copy() if rows_as_matrix else [row.copy() for row in array]
            return stored, array

        text_layers = []
        for name, dim in recipe["text"]:
            per_field[name][dialogue_id], array = rows(dim)
            text_layers.append(array)
        audio = visual = None
        if recipe["audio"]:
            per_field["audio"][dialogue_id], audio = rows(recipe["audio"])
        if recipe["visual"]:
            per_field["visual"][dialogue_id], visual = rows(recipe["visual"])
        expected[str(dialogue_id)] = ExpectedDialogue(
            speakers=speaker_index.astype(np.int64), labels=labels.astype(np.int64),
            text_layers=text_layers, audio=audio, visual=visual)

    container = recipe["split_container"]
    train_c, test_c, dev_c = container(train), container(test), container(dev)
    text_names = [n for n, _ in recipe["text"]]
    order = recipe["order"]
    if order == "sdt":
        names = ["videoIDs", "videoSpeakers", "videoLabels", *text_names, "videoAudio", "videoVisual",
                 "videoSentence", "trainVid", "testVid"]
        values = [per_field["utterance_ids"], per_field["speakers"], per_field["labels"],
                  *[per_field[n] for n in text_names], per_field["audio"], per_field["visual"],
                  per_field["sentences"], train_c, test_c]
        if dataset == "meld":
            names.append("_")
            values.append(per_field["sentiment"])
    elif order == "mmgcn":
        names = ["videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual",
                 "videoSentence", "trainVid", "testVid"]
        values = [per_field["utterance_ids"], per_field["speakers"], per_field["labels"],
                  per_field["videoText"], per_field["audio"], per_field["visual"],
                  per_field["sentences"], train_c, test_c]
        if dataset == "meld":
            names.append("_")
            values.append(per_field["sentiment"])
    elif order == "dialoguernn-meld":
        names = ["videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoSentence",
                 "trainVid", "testVid", "videoLabelsSentiment"]
        values = [per_field["utterance_ids"], per_field["speakers"], per_field["labels"],
                  per_field["videoText"], per_field["audio"], per_field["sentences"], train_c, test_c,
                  per_field["sentiment"]]
    else:  # cosmic
        if dataset == "meld":
            names = ["speakers", "emotion_labels", "sentiment_labels", *text_names, "sentences",
                     "trainIds", "testIds", "validIds"]
            values = [per_field["speakers"], per_field["labels"], per_field["sentiment"],
                      *[per_field[n] for n in text_names], per_field["sentences"], train_c, test_c, dev_c]
        else:
            names = ["speakers", "labels", *text_names, "sentences", "trainIds", "testIds", "validIds"]
            values = [per_field["speakers"], per_field["labels"], *[per_field[n] for n in text_names],
                      per_field["sentences"], train_c, test_c, dev_c]
    return Fixture(
        layout=layout, fields=values, names=names, dialogues=expected, train_ids=train,
        test_ids=test, dev_ids=dev if has_dev else None,
        num_speakers=2 if dataset == "iemocap" else MELD_SPEAKER_SLOTS,
    )


def dump_fixture(fixture: Fixture, path: Path) -> Path:
    """Write ``fixture.fields`` the way the real file is written (Python-2 style where it is)."""
    recipe = RECIPES[fixture.layout]
    payload = recipe["container"](fixture.fields)
    path = Path(path)
    if recipe["py2"]:
        path.write_bytes(Py2StylePickler().dumps(payload))
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=recipe["protocol"])
    fixture.path = path
    return path


def write_fixture(layout: str, directory: Path, *, seed: int = 0, file_name: str | None = None,
                  **options: Any) -> Fixture:
    """Build a ``layout`` fixture and write it to ``directory``; returns it with ``path`` set."""
    fixture = build_fixture(layout, seed=seed, **options)
    dump_fixture(fixture, Path(directory) / (file_name or f"{layout}.pkl"))
    return fixture


class Py2StylePickler:
    """Serialises builtins and numpy arrays as Python 2's ``cPickle`` does at protocol 2.

    Python-2 ``str`` becomes ``SHORT_BINSTRING``/``BINSTRING`` bytes (latin-1 here, so that
    ``encoding='latin1'`` restores the text), ``set`` is reduced through ``__builtin__.set``, and
    arrays through ``numpy.core.multiarray._reconstruct`` with numpy's version-1 state tuple
    whose raw data is a byte string.
    """

    def dumps(self, obj: Any) -> bytes:
        out = bytearray(b"\x80\x02")
        self._save(obj, out)
        out += b"."
        return bytes(out)

    def _save(self, obj: Any, out: bytearray) -> None:
        if obj is None:
            out += b"N"
        elif obj is True or obj is False:
            out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, (int, np.integer)):
            self._int(int(obj), out)
        elif isinstance(obj, (float, np.floating)):
            out += b"G" + struct.pack(">d", float(obj))
        elif isinstance(obj, str):
            try:
                self._bytes(obj.encode("latin1"), out)
            except UnicodeEncodeError:  # a Python-2 unicode object
                data = obj.encode("utf-8")
                out += b"X" + struct.pack("<I", len(data)) + data
        elif isinstance(obj, bytes):
            self._bytes(obj, out)
        elif isinstance(obj, np.ndarray):
            self._array(obj, out)
        elif isinstance(obj, dict):
            out += b"}"
            if obj:
                out += b"("
                for key, value in obj.items():
                    self._save(key, out)
                    self._save(value, out)
                out += b"u"
        elif isinstance(obj, list):
            out += b"]"
            if obj:
                out += b"("
                for item in obj:
                    self._save(item, out)
                out += b"e"
        elif isinstance(obj, tuple):
            self._tuple(obj, out)
        elif isinstance(obj, (set, frozenset)):
            out += b"c__builtin__\n" + type(obj).__name__.encode() + b"\n"
            self._tuple((list(obj),), out)
            out += b"R"
        else:
            raise TypeError(f"Py2StylePickler cannot write {type(obj).__name__}")

    def _int(self, value: int, out: bytearray) -> None:
        if 0 <= value < 256:
            out += b"K" + bytes([value])
        elif 0 <= value < 65536:
            out += b"M" + struct.pack("<H", value)
        elif -(2 ** 31) <= value < 2 ** 31:
            out += b"J" + struct.pack("<i", value)
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            out += b"\x8a" + bytes([len(data)]) + data

    def _bytes(self, data: bytes, out: bytearray) -> None:
        if len(data) < 256:
            out += b"U" + bytes([len(data)]) + data
        else:
            out += b"T" + struct.pack("<i", len(data)) + data

    def _tuple(self, items: tuple, out: bytearray) -> None:
        if not items:
            out += b")"
            return
        if len(items) > 3:
            out += b"("
        for item in items:
            self._save(item, out)
        out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t")

    def _array(self, array: np.ndarray, out: bytearray) -> None:
        array = np.ascontiguousarray(array)
        out += b"cnumpy.core.multiarray\n_reconstruct\n"
        out += b"cnumpy\nndarray\n"
        self._tuple((0,), out)
        self._bytes(b"b", out)
        out += b"\x87R"
        # state: (version, shape, dtype, is_fortran, raw data)
        out += b"("
        self._int(1, out)
        self._tuple(tuple(int(s) for s in array.shape), out)
        dtype = array.dtype
        out += b"cnumpy\ndtype\n"
        self._tuple((f"{dtype.kind}{dtype.itemsize}", 0, 1), out)
        out += b"R("
        self._int(3, out)
        self._bytes(b"|" if dtype.itemsize == 1 else b"<", out)
        out += b"NNN"
        self._int(-1, out)
        self._int(-1, out)
        self._int(0, out)
        out += b"tb"
        out += b"\x89"
        self._bytes(array.astype(dtype.newbyteorder("<"), copy=False).tobytes(), out)
        out += b"tb"
