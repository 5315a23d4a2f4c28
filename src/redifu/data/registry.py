"""One place per dataset: what redifu knows about each conversation-emotion dataset.

An entry (:class:`DatasetEntry`) holds everything dataset-specific: the emotion classes in
label-index order, the official files with their pinned SHA-256 checksums, the transcript
reader, the speaker slots, the audio locator, and which feature-file layouts
(:mod:`redifu.data.feature_files`) and synthetic presets (:mod:`redifu.data.synthetic`) belong
to it. ``redifu data prepare``, its CLI choices, the download, the feature-file layouts and the
synthetic presets all read the registry; none of them branches on a dataset's name. Adding a
dataset is adding an entry::

    register(DatasetEntry(name="mine", title="Mine", classes=("calm", "angry"),
                          split_files={"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
                          reader=read_my_csvs))

Model code never sees an entry: it is built from the :class:`~redifu.data.dialogue.DatasetMetadata`
of the corpus the entry's reader produced.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Protocol, Sequence

from redifu.data.csv_corpora import (EpisodeAudio, EpisodeVideo, MeldAudio, MeldVideo, read_emorynlp_csvs,
                                     read_meld_csvs)
from redifu.data.iemocap_transcripts import read_iemocap_pickle
from redifu.errors import SPLITS, DataError

if TYPE_CHECKING:
    from redifu.data.csv_corpora import AudioSource, TranscriptCorpus, TranscriptUtterance

__all__ = [
    "DatasetEntry",
    "RemoteFile",
    "AudioLocator",
    "entry_for_layout",
    "entry_for_preset",
    "get",
    "names",
    "register",
    "registered",
    "unregister",
]


@dataclass(frozen=True)
class RemoteFile:
    """One official file of a dataset: where to get it and what its SHA-256 must be."""

    url: str
    sha256: str


class AudioLocator(Protocol):
    """Finds each utterance's audio under a folder (see :class:`~redifu.data.csv_corpora.MeldAudio`)."""

    layout: str

    def check(self, splits: Sequence[str]) -> None: ...

    def locate(self, split: str, utterance: "TranscriptUtterance") -> "AudioSource": ...


TranscriptReader = Callable[[Path, "DatasetEntry"], "TranscriptCorpus"]
"""``reader(directory, entry)``: the entry's files in ``directory`` as a transcript corpus."""


@dataclass(frozen=True)
class DatasetEntry:
    """Everything dataset-specific about one dataset.

    Args:
        name: Registry key and ``redifu data prepare NAME`` choice (lower case, e.g. ``"meld"``).
        title: Name for reports and messages (``"MELD"``).
        classes: Emotion class names in label-index order (the order of the published feature
            files; checkpoints and reports depend on it).
        split_files: Split to the file its transcripts are in (names as in ``files``).
        files: File name to :class:`RemoteFile` (URL and pinned SHA-256); empty when the
            dataset cannot be downloaded (``--source`` only).
        reader: ``reader(directory, entry)`` returning a
            :class:`~redifu.data.csv_corpora.TranscriptCorpus`; ``None`` for datasets known only
            through feature files and synthetic presets (not preparable).
        speaker_slots: Fixed number of speaker slots (MELD's feature files: 9); ``None`` gives
            as many as the busiest dialogue has speakers.
        audio_locator: ``audio_locator(directory)`` finding each utterance's audio for
            ``--audio DIR``; ``None`` when the dataset has no audio layout.
        video_locator: The same for its video (``--video DIR``); ``None``: no video layout.
        feature_layouts: Names of the :data:`~redifu.data.feature_files.LAYOUTS` that hold
            this dataset.
        synthetic_presets: Names of the :data:`~redifu.data.synthetic.PRESETS` shaped like it.
        reference: Where the dataset comes from (paper, repository).
    """

    name: str
    title: str
    classes: tuple[str, ...]
    split_files: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, RemoteFile] = field(default_factory=dict)
    reader: TranscriptReader | None = None
    speaker_slots: int | None = None
    audio_locator: Callable[[Path], AudioLocator] | None = None
    video_locator: Callable[[Path], AudioLocator] | None = None
    feature_layouts: tuple[str, ...] = ()
    synthetic_presets: tuple[str, ...] = ()
    reference: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or not self.name.replace("-", "").isalnum():
            raise ValueError(f"name: must be lower-case letters, digits and '-', got {self.name!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "feature_layouts", tuple(self.feature_layouts))
        object.__setattr__(self, "synthetic_presets", tuple(self.synthetic_presets))
        object.__setattr__(self, "split_files", dict(self.split_files))
        object.__setattr__(self, "files", dict(self.files))
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{self.name}: classes: needs at least 2 distinct names, got {self.classes}")
        if self.speaker_slots is not None and self.speaker_slots < 1:
            raise ValueError(f"{self.name}: speaker_slots: must be >= 1 or None, got {self.speaker_slots}")
        unknown = [s for s in self.split_files if s not in SPLITS]
        if unknown:
            raise ValueError(f"{self.name}: split_files: unknown split {unknown[0]!r}; expected {SPLITS}")
        if self.reader is not None and self.files:
            unlisted = [f for f in self.split_files.values() if f not in self.files]
            if unlisted:
                raise ValueError(f"{self.name}: split_files: {unlisted[0]!r} is not in files")

    @property
    def preparable(self) -> bool:
        """Whether ``redifu data prepare`` can build it from its transcripts."""
        return self.reader is not None

    @property
    def reader_name(self) -> str:
        """The reader's dotted name, recorded in a prepared dataset's provenance."""
        reader = self.reader
        return f"{getattr(reader, '__module__', '?')}.{getattr(reader, '__qualname__', repr(reader))}"

    def read(self, directory: str | Path) -> "TranscriptCorpus":
        """The transcripts in ``directory`` (the entry's ``split_files``)."""
        if self.reader is None:
            raise DataError(f"dataset {self.name!r}: has no transcript reader; preparable: {', '.join(names(preparable=True))}")
        return self.reader(Path(directory), self)


_ENTRIES: dict[str, DatasetEntry] = {}


def register(entry: DatasetEntry, *, replace: bool = False) -> DatasetEntry:
    """Add ``entry``; a name, feature layout or synthetic preset already claimed by another entry
    is refused unless ``replace``."""
    if entry.name in _ENTRIES and not replace:
        raise ValueError(f"dataset {entry.name!r} is already registered")
    others = [e for e in _ENTRIES.values() if e.name != entry.name]
    for kind, claimed in (("feature layout", "feature_layouts"), ("synthetic preset", "synthetic_presets")):
        for value in getattr(entry, claimed):
            owner = next((e.name for e in others if value in getattr(e, claimed)), None)
            if owner is not None:
                raise ValueError(f"{entry.name}: {kind} {value!r} already belongs to dataset {owner!r}")
    _ENTRIES[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove an entry (tests, plug-ins replacing a built-in)."""
    _ENTRIES.pop(name, None)


@contextlib.contextmanager
def registered(entry: DatasetEntry) -> Iterator[DatasetEntry]:
    """``entry`` registered for the duration of a block (tests)."""
    register(entry)
    try:
        yield entry
    finally:
        unregister(entry.name)


def get(name: str) -> DatasetEntry:
    """The entry called ``name``; :class:`DataError` naming the known ones otherwise."""
    try:
        return _ENTRIES[name]
    except (KeyError, TypeError):
        raise DataError(f"dataset: unknown dataset {name!r}; known: {', '.join(names())}") from None


def names(*, preparable: bool = False) -> tuple[str, ...]:
    """Registered dataset names in registration order (only preparable ones if asked)."""
    return tuple(n for n, e in _ENTRIES.items() if e.preparable or not preparable)


def entry_for_layout(layout: str) -> DatasetEntry:
    """The entry that claims feature-file layout ``layout``."""
    for entry in _ENTRIES.values():
        if layout in entry.feature_layouts:
            return entry
    raise ValueError(f"feature layout {layout!r} belongs to no registered dataset")


def entry_for_preset(preset: str) -> DatasetEntry:
    """The entry that claims synthetic preset ``preset``."""
    for entry in _ENTRIES.values():
        if preset in entry.synthetic_presets:
            return entry
    raise ValueError(f"synthetic preset {preset!r} belongs to no registered dataset")


# ---------------------------------------------------------------------------------------------
# The built-in datasets

_MELD_BASE = "https://raw.githubusercontent.com/declare-lab/MELD/master/data/MELD"
_EMORYNLP_BASE = "https://raw.githubusercontent.com/declare-lab/MELD/master/data/emorynlp"
_COSMIC_IEMOCAP_BASE = "https://raw.githubusercontent.com/declare-lab/conv-emotion/master/COSMIC/feature-extraction/iemocap"

register(DatasetEntry(
    name="meld",
    title="MELD",
    # the label-index order of the standard feature files (DialogueGCN loader comment)
    classes=("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
    split_files={"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"},
    files={
        "train_sent_emo.csv": RemoteFile(
            f"{_MELD_BASE}/train_sent_emo.csv",
            "d2fa2d6529cf03cac2989efec05c9b27d8fd2f4c8fc5974c7ae88aa537fa02db",
        ),
        "dev_sent_emo.csv": RemoteFile(
            f"{_MELD_BASE}/dev_sent_emo.csv",
            "2e89c6f8aa182d6f62f8c6331aece905ac7273ca4999660bfb5213e1d0370c1c",
        ),
        "test_sent_emo.csv": RemoteFile(
            f"{_MELD_BASE}/test_sent_emo.csv",
            "8d37103938f7067600839fe29d5a114a6cd1bcdafb75bec101e06464c5006888",
        ),
    },
    reader=read_meld_csvs,
    speaker_slots=9,  # one-hot speaker vectors of length 9 in MELD's standard feature files
    audio_locator=MeldAudio,
    video_locator=MeldVideo,
    feature_layouts=("sdt-meld", "mmgcn-meld", "dialoguernn-meld", "cosmic-meld"),
    synthetic_presets=("meld",),
    reference="Poria et al., ACL 2019; declare-lab/MELD",
))

register(DatasetEntry(
    name="emorynlp",
    title="EmoryNLP",
    classes=("Joyful", "Mad", "Peaceful", "Neutral", "Sad", "Powerful", "Scared"),
    split_files={"train": "emorynlp_train_final.csv", "dev": "emorynlp_dev_final.csv",
                 "test": "emorynlp_test_final.csv"},
    files={
        "emorynlp_train_final.csv": RemoteFile(
            f"{_EMORYNLP_BASE}/emorynlp_train_final.csv",
            "462c66c333783adb801836d12d1424f48489bef4fb8ddfec7fbb2f08ce8211d5",
        ),
        "emorynlp_dev_final.csv": RemoteFile(
            f"{_EMORYNLP_BASE}/emorynlp_dev_final.csv",
            "20edc9d5917fe705b17b849f7f288e495d4132a60353a6247c3800445bdf8734",
        ),
        "emorynlp_test_final.csv": RemoteFile(
            f"{_EMORYNLP_BASE}/emorynlp_test_final.csv",
            "dbc4b5638acd12c92a5f48def829e04f1c765cddffb4eedbe34216312e0d2d78",
        ),
    },
    reader=read_emorynlp_csvs,
    audio_locator=EpisodeAudio,
    video_locator=EpisodeVideo,
    reference="Zahiri & Choi, 2018; the CSVs as distributed with declare-lab/MELD",
))

register(DatasetEntry(
    name="iemocap",
    title="IEMOCAP",
    # {'hap':0, 'sad':1, 'neu':2, 'ang':3, 'exc':4, 'fru':5} in every loader checked
    classes=("happy", "sad", "neutral", "angry", "excited", "frustrated"),
    # one pickle holds the transcripts, labels and COSMIC's official train/valid/test ids
    split_files={"train": "iemocap.pkl", "dev": "iemocap.pkl", "test": "iemocap.pkl"},
    files={
        "iemocap.pkl": RemoteFile(
            f"{_COSMIC_IEMOCAP_BASE}/iemocap.pkl",
            "85f15be1fbd8678e0dd443a11ac609615f0e990cc0ca1551fdf86f98b9e6067f",
        ),
    },
    reader=read_iemocap_pickle,
    speaker_slots=2,  # one male and one female actor per session, as in the feature files
    feature_layouts=("sdt-iemocap", "mmgcn-iemocap", "dialoguernn-iemocap", "cosmic-iemocap"),
    synthetic_presets=("iemocap",),
    reference="Busso et al., 2008 (licensed); transcripts, labels and split as COSMIC's iemocap.pkl "
              "(declare-lab/conv-emotion)",
))
