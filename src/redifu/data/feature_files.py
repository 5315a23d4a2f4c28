"""Readers for the published ERC feature pickles (SDT, MMGCN/M3Net, DialogueRNN/DialogueGCN, COSMIC).

Each file is a tuple (or, for COSMIC, a list) of fields: dicts keyed by dialogue id holding one
entry per utterance (speakers, labels, features, sentences), followed by the lists or sets of
dialogue ids in each split. The layouts differ in field order, feature sizes and speaker
encoding; :data:`LAYOUTS` describes each one as its authors' loader unpacks it, and
:func:`read_feature_file` turns any of them into a validated :class:`DialogueCorpus`.

Files are opened with :func:`~redifu.data.safe_pickle.load_pickle_safely`, never plain
``pickle.load``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from redifu.data.dialogue import (
    IGNORE_LABEL,
    DataError,
    DatasetMetadata,
    Dialogue,
    DialogueCorpus,
    validate_dialogue,
)
from redifu.data.registry import entry_for_layout
from redifu.data.safe_pickle import load_pickle_safely
from redifu.files import file_sha256

logger = logging.getLogger(__name__)

__all__ = [
    "TEXT_FEATURES",
    "FieldSpec",
    "LayoutSpec",
    "LAYOUTS",
    "detect_layout",
    "load_feature_file",
    "read_feature_file",
    "reported_extractors",
]

TEXT_FEATURES: tuple[str, ...] = ("roberta1", "roberta2", "roberta3", "roberta4", "mean")
"""``text_feature`` choices: one of the last four RoBERTa layers (roberta1 = last) or their mean."""

_FEATURE_ROLES = ("text", "roberta1", "roberta2", "roberta3", "roberta4", "audio", "visual")
_ID_ROLES = ("train_ids", "test_ids", "dev_ids")
_ROLES = ("utterance_ids", "speakers", "labels", "sentiment_labels", "sentences", "unused",
          *_FEATURE_ROLES, *_ID_ROLES)


@dataclass(frozen=True)
class FieldSpec:
    """One position of a feature file's tuple.

    Args:
        name: The variable name the authors' loader unpacks it into (used in error messages).
        role: What redifu reads it as: a feature (``text``, ``roberta1``..``roberta4``,
            ``audio``, ``visual``), ``speakers``, ``labels``, split ids (``train_ids``,
            ``test_ids``, ``dev_ids``), or a field that is only checked for its type during
            layout detection (``utterance_ids``, ``sentences``, ``sentiment_labels``, ``unused``).
        dim: Feature size in the published file; a hint for layout detection, never enforced.
    """

    name: str
    role: str
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"FieldSpec {self.name!r}: unknown role {self.role!r}")


@dataclass(frozen=True)
class LayoutSpec:
    """A feature-file layout: tuple order, speaker encoding and label classes.

    Args:
        name: Layout key in :data:`LAYOUTS`.
        dataset: Name of the :mod:`~redifu.data.registry` entry that claims this layout.
        file_name: The file name the authors distribute it under.
        classes: Emotion class names in label-index order (the entry's ``classes``).
        speaker_encoding: ``"gender"`` ('M'/'F' strings -> 0/1) or ``"one_hot"`` (rows -> argmax).
        fields: One :class:`FieldSpec` per tuple position.
        reference: The public loader code the layout was checked against.
    """

    name: str
    dataset: str
    file_name: str
    classes: tuple[str, ...]
    speaker_encoding: str
    fields: tuple[FieldSpec, ...]
    reference: str

    def __post_init__(self) -> None:
        if self.speaker_encoding not in ("gender", "one_hot"):
            raise ValueError(f"layout {self.name!r}: unknown speaker_encoding {self.speaker_encoding!r}")

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def position(self, role: str) -> int | None:
        """Tuple index of the field with ``role``, or ``None`` if the layout has none."""
        for index, spec in enumerate(self.fields):
            if spec.role == role:
                return index
        return None

    @property
    def text_features(self) -> tuple[str, ...]:
        """The ``text_feature`` values this layout supports."""
        layers = tuple(r for r in ("roberta1", "roberta2", "roberta3", "roberta4") if self.position(r) is not None)
        if len(layers) == 4:
            return (*layers, "mean")
        # Layouts with one (non-RoBERTa) text feature accept only the default choice.
        return ("roberta1",)

    @property
    def modalities(self) -> tuple[str, ...]:
        present = {"text"} | {r for r in ("audio", "visual") if self.position(r) is not None}
        return tuple(m for m in ("text", "audio", "visual") if m in present)


def _f(name: str, role: str, dim: int | None = None) -> FieldSpec:
    return FieldSpec(name=name, role=role, dim=dim)


def _layout(*, name: str, **spec) -> LayoutSpec:
    """A layout whose dataset and classes come from the registry entry that claims it."""
    entry = entry_for_layout(name)
    return LayoutSpec(name=name, dataset=entry.name, classes=entry.classes, **spec)


_SDT_REF = "butterfliesss/SDT dataloader.py and train.py"
_MMGCN_REF = "hujingwen6666/MMGCN dataloader.py; 1136623363/M3NET-ERC dataloader.py"
_DRNN_REF = "declare-lab/conv-emotion DialogueRNN/dataloader.py and DialogueGCN/dataloader.py"
_COSMIC_REF = ("declare-lab/conv-emotion COSMIC/erc-training/dataloader.py and "
               "COSMIC/feature-extraction/roberta_feature_extract_{iemocap,meld}.py")

LAYOUTS: dict[str, LayoutSpec] = {
    spec.name: spec
    for spec in (
        _layout(
            name="sdt-iemocap", file_name="iemocap_multimodal_features.pkl",
            speaker_encoding="gender", reference=_SDT_REF,
            fields=(_f("videoIDs", "utterance_ids"), _f("videoSpeakers", "speakers"),
                    _f("videoLabels", "labels"), _f("videoText", "roberta1", 1024),
                    _f("roberta2", "roberta2", 1024), _f("roberta3", "roberta3", 1024),
                    _f("roberta4", "roberta4", 1024), _f("videoAudio", "audio", 1582),
                    _f("videoVisual", "visual", 342), _f("videoSentence", "sentences"),
                    _f("trainVid", "train_ids"), _f("testVid", "test_ids")),
        ),
        _layout(
            name="sdt-meld", file_name="meld_multimodal_features.pkl",
            speaker_encoding="one_hot", reference=_SDT_REF,
            fields=(_f("videoIDs", "utterance_ids"), _f("videoSpeakers", "speakers"),
                    _f("videoLabels", "labels"), _f("videoText", "roberta1", 1024),
                    _f("roberta2", "roberta2", 1024), _f("roberta3", "roberta3", 1024),
                    _f("roberta4", "roberta4", 1024), _f("videoAudio", "audio", 300),
                    _f("videoVisual", "visual", 342), _f("videoSentence", "sentences"),
                    _f("trainVid", "train_ids"), _f("testVid", "test_ids"), _f("_", "unused")),
        ),
        _layout(
            name="mmgcn-iemocap", file_name="IEMOCAP_features.pkl",
            speaker_encoding="gender", reference=_MMGCN_REF,
            fields=(_f("videoIDs", "utterance_ids"), _f("videoSpeakers", "speakers"),
                    _f("videoLabels", "labels"), _f("videoText", "text", 100),
                    _f("videoAudio", "audio", 1582), _f("videoVisual", "visual", 342),
                    _f("videoSentence", "sentences"), _f("trainVid", "train_ids"),
                    _f("testVid", "test_ids")),
        ),
        _layout(
            name="mmgcn-meld", file_name="MELD_features_raw1.pkl",
            speaker_encoding="one_hot", reference=_MMGCN_REF,
            fields=(_f("videoIDs", "utterance_ids"), _f("videoSpeakers", "speakers"),
                    _f("videoLabels", "labels"), _f("videoText", "text", 600),
                    _f("videoAudio", "audio", 300), _f("videoVisual", "visual", 342),
                    _f("videoSentence", "sentences"), _f("trainVid", "train_ids"),
                    _f("testVid", "test_ids"), _f("_", "unused")),
        ),
        _layout(
            # Same order as mmgcn-iemocap; the DialogueRNN features are 100-d text (CNN), 100-d
            # audio (openSMILE reduced by an FC layer) and 512-d visual (3D-CNN).
            name="dialoguernn-iemocap", file_name="IEMOCAP_features_raw.pkl",
            speaker_encoding="gender", reference=_DRNN_REF,
            fields=(_f("videoIDs", "utterance_ids"), _f("videoSpeakers", "speakers"),
                    _f("videoLabels", "labels"), _f("videoText", "text", 100),
                    _f("videoAudio", "audio", 100), _f("videoVisual", "visual", 512),
                    _f("videoSentence", "sentences"), _f("trainVid", "train_ids"),
                    _f("testVid", "test_ids")),
        ),
        _layout(
            name="dialoguernn-meld", file_name="MELD_features_raw.pkl",
            speaker_encoding="one_hot", reference=_DRNN_REF,
            fields=(_f("videoIDs", "utterance_ids"), _f("videoSpeakers", "speakers"),
                    _f("videoLabels", "labels"), _f("videoText", "text", 600),
                    _f("videoAudio", "audio", 300), _f("videoSentence", "sentences"),
                    _f("trainVid", "train_ids"), _f("testVid", "test_ids"),
                    _f("videoLabelsSentiment", "sentiment_labels")),
        ),
        _layout(
            name="cosmic-iemocap", file_name="iemocap_features_roberta.pkl",
            speaker_encoding="gender", reference=_COSMIC_REF,
            fields=(_f("speakers", "speakers"), _f("labels", "labels"),
                    _f("roberta1", "roberta1", 1024), _f("roberta2", "roberta2", 1024),
                    _f("roberta3", "roberta3", 1024), _f("roberta4", "roberta4", 1024),
                    _f("sentences", "sentences"), _f("trainIds", "train_ids"),
                    _f("testIds", "test_ids"), _f("validIds", "dev_ids")),
        ),
        _layout(
            name="cosmic-meld", file_name="meld_features_roberta.pkl",
            speaker_encoding="one_hot", reference=_COSMIC_REF,
            fields=(_f("speakers", "speakers"), _f("emotion_labels", "labels"),
                    _f("sentiment_labels", "sentiment_labels"),
                    _f("roberta1", "roberta1", 1024), _f("roberta2", "roberta2", 1024),
                    _f("roberta3", "roberta3", 1024), _f("roberta4", "roberta4", 1024),
                    _f("sentences", "sentences"), _f("trainIds", "train_ids"),
                    _f("testIds", "test_ids"), _f("validIds", "dev_ids")),
        ),
    )
}
"""Every supported layout, keyed by name (``<codebase>-<dataset>``)."""

_IS10 = {"name": "openSMILE IS10 paralinguistic functionals", "settings": {"feature_set": "IS10_paraling"}}
_MELD_AUDIO = {"name": "openSMILE functionals reduced to 300-d by the file authors", "settings": {}}
_DENSENET = {"name": "DenseNet facial-expression features (FER+)", "settings": {}}
_REPORTED: dict[str, dict[str, dict]] = {
    "sdt-iemocap": {"audio": _IS10, "visual": _DENSENET},
    "mmgcn-iemocap": {"audio": _IS10, "visual": _DENSENET},
    "sdt-meld": {"audio": _MELD_AUDIO, "visual": _DENSENET},
    "mmgcn-meld": {"audio": _MELD_AUDIO, "visual": _DENSENET},
    "dialoguernn-iemocap": {"audio": {"name": "openSMILE functionals reduced to 100-d by an FC layer", "settings": {}},
                            "visual": {"name": "3D-CNN video features", "settings": {}}},
    "dialoguernn-meld": {"audio": _MELD_AUDIO},
}


def reported_extractors(layout: str, modality_dims: Mapping[str, int]) -> dict[str, dict]:
    """What a layout's authors report about how its audio and visual features were made.

    These are descriptions from the papers and code behind each file, not checked against the
    files (no raw audio or video comes with them): every record says ``verified: false`` and who
    reported it, so that a model trained on such features does not treat redifu's own openSMILE
    extraction as the same thing (see :func:`redifu.predict.extractor_problem`). A feature whose
    size in the file differs from the published one gets no record.
    """
    spec = LAYOUTS[layout]
    records = {}
    for modality, report in _REPORTED.get(layout, {}).items():
        position = spec.position(modality)
        if position is None or modality_dims.get(modality) != spec.fields[position].dim:
            continue
        records[modality] = {
            "name": report["name"], "version": "unknown", "dimension": int(modality_dims[modality]),
            "settings": dict(report["settings"]), "verified": False,
            "reported_by": f"the authors of the {layout} feature file ({spec.reference})",
        }
    return records


# --------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Seen:
    """What a field looks like, judged from a few sample entries."""

    kind: str  # strings | integers | rows | floats | dict | empty-dict | ids | other
    dim: int | None = None
    text: str = ""


def _sample_values(mapping: Mapping, limit: int = 4) -> list[Any]:
    values = []
    for value in mapping.values():
        if _length(value) not in (None, 0):
            values.append(value)
            if len(values) == limit:
                break
    return values


def _length(value: Any) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def _describe_sequence(value: Any) -> _Seen:
    """Kind of one per-dialogue entry (a list or array with one item per utterance)."""
    if isinstance(value, np.ndarray):
        if value.ndim == 2 and value.dtype.kind in "biuf":
            return _Seen("rows", int(value.shape[1]), f"{value.shape[1]}-d rows")
        if value.ndim == 1 and value.dtype.kind in "iu":
            return _Seen("integers", text="int lists")
        if value.ndim == 1 and value.dtype.kind in "US":
            return _Seen("strings", text="str lists")
        if value.ndim == 1 and value.dtype.kind == "f":
            return _Seen("floats", text="float lists")
        if value.ndim != 1 or value.dtype.kind != "O":
            return _Seen("other", text=f"{value.ndim}-d {value.dtype} arrays")
    elif not isinstance(value, (list, tuple)):
        return _Seen("other", text=f"{type(value).__name__} values")
    first = value[0]
    if isinstance(first, (str, bytes)):
        return _Seen("strings", text="str lists")
    if isinstance(first, (bool, np.bool_)):
        return _Seen("other", text="bool lists")
    if isinstance(first, (int, np.integer)):
        return _Seen("integers", text="int lists")
    if isinstance(first, (float, np.floating)):
        return _Seen("floats", text="float lists")
    if isinstance(first, np.ndarray) and first.ndim == 1 and first.dtype.kind in "biuf":
        return _Seen("rows", int(first.shape[0]), f"{first.shape[0]}-d rows")
    if isinstance(first, (list, tuple)) and first and isinstance(first[0], (int, float, np.number)):
        return _Seen("rows", len(first), f"{len(first)}-d rows")
    return _Seen("other", text=f"lists of {type(first).__name__}")


def _describe_field(value: Any) -> _Seen:
    if isinstance(value, dict):
        samples = _sample_values(value)
        if not samples:
            return _Seen("empty-dict", text="empty dict" if not value else "dict of empty entries")
        seen = [_describe_sequence(sample) for sample in samples]
        first = seen[0]
        if any(s.kind != first.kind or s.dim != first.dim for s in seen[1:]):
            return _Seen("dict", text="dict of mixed entries")
        return _Seen(first.kind, first.dim, f"dict of {first.text}")
    if isinstance(value, (list, tuple, set, frozenset)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        return _Seen("ids", text=f"{type(value).__name__} of {len(value)} ids")
    return _Seen("other", text=type(value).__name__)


def _role_accepts(spec: FieldSpec, seen: _Seen, speaker_encoding: str) -> bool:
    role = spec.role
    if role == "unused":
        return True
    if role in _ID_ROLES:
        return seen.kind == "ids"
    if seen.kind == "empty-dict":
        return True
    if role == "utterance_ids":
        return seen.kind in ("strings", "integers", "rows", "floats", "dict", "other")
    if role == "speakers":
        return seen.kind == ("strings" if speaker_encoding == "gender" else "rows")
    if role in ("labels", "sentiment_labels"):
        return seen.kind == "integers"
    if role == "sentences":
        return seen.kind == "strings"
    return seen.kind == "rows"  # features


def _expectation(spec: FieldSpec, speaker_encoding: str) -> str:
    role = spec.role
    if role in _ID_ROLES:
        return "a list or set of dialogue ids"
    if role == "speakers":
        return "'M'/'F' strings per utterance" if speaker_encoding == "gender" else "one-hot rows per utterance"
    if role in ("labels", "sentiment_labels"):
        return "integer labels per utterance"
    if role == "sentences":
        return "sentences per utterance"
    if role in _FEATURE_ROLES:
        return "feature rows per utterance"
    return "anything"


def _mismatches(layout: LayoutSpec, seen: list[_Seen]) -> tuple[list[str], int]:
    """Kind mismatches (as messages) and the number of feature-size differences from the hints."""
    problems = []
    dim_differences = 0
    for index, (spec, observed) in enumerate(zip(layout.fields, seen)):
        if not _role_accepts(spec, observed, layout.speaker_encoding):
            problems.append(
                f"field '{spec.name}' (position {index}) holds {observed.text}, expected "
                f"{_expectation(spec, layout.speaker_encoding)}"
            )
        elif spec.dim is not None and observed.kind == "rows" and observed.dim != spec.dim:
            dim_differences += 1
    return problems, dim_differences


def _top_level_fields(obj: Any, source: str) -> list[Any]:
    if not isinstance(obj, (tuple, list)):
        raise _data_error(
            f"{source}: expected a tuple of fields (a published ERC feature file), got {type(obj).__name__}"
        )
    return list(obj)


def _summary(seen: list[_Seen]) -> str:
    return "[" + ", ".join(s.text for s in seen) + "]"


def detect_layout(obj: Any, *, source: str) -> str:
    """Name of the :data:`LAYOUTS` entry that ``obj`` (an unpickled feature file) follows.

    The layout is recognised from the number of fields and what each field holds (speaker
    strings or one-hot rows, integer labels, feature rows, id lists); feature sizes decide
    between layouts that agree on everything else (MMGCN's 342-d vs DialogueRNN's 512-d visual).

    Args:
        obj: The unpickled object.
        source: File name for error messages.

    Raises:
        DataError: No layout or more than one fits; the message lists what was seen.
    """
    fields = _top_level_fields(obj, source)
    seen = [_describe_field(value) for value in fields]
    same_length = [layout for layout in LAYOUTS.values() if layout.num_fields == len(fields)]
    fitting: list[tuple[int, str]] = []
    for layout in same_length:
        problems, dim_differences = _mismatches(layout, seen)
        if not problems:
            fitting.append((dim_differences, layout.name))
    if not fitting:
        lengths = ", ".join(f"{name} ({spec.num_fields})" for name, spec in LAYOUTS.items())
        candidates = (f"; closest by length: {', '.join(s.name for s in same_length)}" if same_length else "")
        raise _data_error(
            f"{source}: unknown feature-file layout: a {type(obj).__name__} of {len(fields)} fields "
            f"{_summary(seen)}{candidates}; known layouts (fields): {lengths}"
        )
    fitting.sort()
    best = [name for differences, name in fitting if differences == fitting[0][0]]
    if len(best) > 1:
        raise _data_error(
            f"{source}: ambiguous feature-file layout: a {type(obj).__name__} of {len(fields)} fields "
            f"{_summary(seen)} fits {', '.join(best)}; pass layout= explicitly"
        )
    if fitting[0][0]:
        logger.info("%s: layout %s fits, but %d feature size(s) differ from the published file",
                    source, best[0], fitting[0][0])
    return best[0]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _data_error(message: str) -> DataError:
    """A :class:`DataError` whose message is one line, whatever ids or values it quotes."""
    return DataError(_one_line(message))


def _id_sort_key(dialogue_id: Any) -> tuple[str, Any]:
    return (type(dialogue_id).__name__, dialogue_id)


class _FileReader:
    """Reads the dialogues of one unpickled file, remembering per-field feature sizes."""

    def __init__(self, source: str, layout: LayoutSpec, fields: list[Any], text_feature: str) -> None:
        self.source = source
        self.layout = layout
        self.fields = fields
        self.text_feature = text_feature
        self.dims: dict[str, int] = {}  # field name -> feature size seen in earlier dialogues
        self.multi_hot_rows = 0
        self.listed_in: dict[Any, str] = {}  # dialogue id -> name of the split field listing it
        for index, spec in enumerate(layout.fields):
            if spec.role in ("speakers", "labels", *_FEATURE_ROLES) and not isinstance(fields[index], dict):
                raise _data_error(
                    f"{source}: field '{spec.name}' (position {index}): expected a dict keyed by "
                    f"dialogue id, got {type(fields[index]).__name__}"
                )

    # -- helpers -------------------------------------------------------------------------------
    def error(self, dialogue_id: Any, field: str, message: str) -> DataError:
        return _data_error(f"{self.source}: dialogue {dialogue_id}: field '{field}': {message}")

    def field(self, role: str) -> tuple[FieldSpec, Any]:
        index = self.layout.position(role)
        assert index is not None, role
        return self.layout.fields[index], self.fields[index]

    def entry(self, role: str, dialogue_id: Any) -> tuple[str, Any]:
        spec, mapping = self.field(role)
        try:
            return spec.name, mapping[dialogue_id]
        except (KeyError, TypeError):
            listed = self.listed_in.get(dialogue_id, "a split")
            raise self.error(dialogue_id, spec.name, f"missing, but the dialogue is listed in '{listed}'") from None

    def split_ids(self, role: str) -> list[Any]:
        spec, value = self.field(role)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, (set, frozenset)):
            ids = sorted(value, key=_id_sort_key)
        elif isinstance(value, (list, tuple)):
            ids = list(value)
        else:
            raise _data_error(
                f"{self.source}: field '{spec.name}': expected a list or set of dialogue ids, "
                f"got {type(value).__name__}"
            )
        seen: set = set()
        for dialogue_id in ids:
            if dialogue_id in seen:
                raise _data_error(f"{self.source}: dialogue {dialogue_id}: field '{spec.name}': listed twice")
            seen.add(dialogue_id)
        return ids

    # -- per-field readers -----------------------------------------------------------------------
    def labels(self, dialogue_id: Any) -> np.ndarray:
        name, value = self.entry("labels", dialogue_id)
        try:
            labels = np.asarray(value)
        except (ValueError, TypeError) as error:
            raise self.error(dialogue_id, name, f"not a list of labels ({_one_line(error)})") from None
        if labels.ndim != 1:
            raise self.error(dialogue_id, name, f"expected one label per utterance, got shape {labels.shape}")
        if labels.size == 0:
            raise self.error(dialogue_id, name, "dialogue is empty")
        if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
            labels = labels.astype(np.int64)
        if labels.dtype.kind not in "iu":
            raise self.error(dialogue_id, name, f"labels must be integers, got {labels.dtype} values")
        labels = labels.astype(np.int64, copy=False)
        num_classes = len(self.layout.classes)
        bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            raise self.error(
                dialogue_id, name,
                f"label {int(labels[position])} at utterance {position} out of range [0, {num_classes})",
            )
        return labels

    def check_length(self, dialogue_id: Any, name: str, length: int, expected: int) -> None:
        if length != expected:
            labels_name = self.field("labels")[0].name
            raise self.error(
                dialogue_id, name, f"{length} utterances, but '{labels_name}' has {expected}"
            )

    def speakers(self, dialogue_id: Any, n: int) -> np.ndarray:
        name, value = self.entry("speakers", dialogue_id)
        if self.layout.speaker_encoding == "gender":
            codes = np.asarray(value)
            if codes.ndim != 1:
                raise self.error(dialogue_id, name, f"expected one 'M'/'F' per utterance, got shape {codes.shape}")
            self.check_length(dialogue_id, name, codes.shape[0], n)
            is_male, is_female = codes == "M", codes == "F"
            unknown = ~(is_male | is_female)
            if unknown.any():
                position = int(np.flatnonzero(unknown)[0])
                raise self.error(
                    dialogue_id, name,
                    f"unknown speaker {codes[position]!r} at utterance {position} (expected 'M' or 'F')",
                )
            return is_female.astype(np.int64)
        rows = self.matrix(dialogue_id, name, value, n, what="one-hot speaker rows")
        active = rows != 0
        counts = active.sum(axis=1)
        if (counts == 0).any():
            position = int(np.flatnonzero(counts == 0)[0])
            raise self.error(dialogue_id, name, f"utterance {position} has an all-zero one-hot speaker row")
        self.multi_hot_rows += int((counts > 1).sum())
        return rows.argmax(axis=1).astype(np.int64)

    def matrix(self, dialogue_id: Any, name: str, value: Any, n: int, *, what: str) -> np.ndarray:
        """``value`` as a finite float32 ``(n, D)`` array whose ``D`` matches earlier dialogues."""
        try:
            array = np.asarray(value, dtype=np.float32)
        except (ValueError, TypeError) as error:
            raise self.error(dialogue_id, name, _ragged_detail(value) or
                             f"cannot read as {what} ({_one_line(error)})") from None
        if array.ndim != 2:
            if array.ndim == 1 and array.shape[0] == 0:
                self.check_length(dialogue_id, name, 0, n)
            raise self.error(dialogue_id, name, f"expected {what} (utterances, size), got shape {array.shape}")
        self.check_length(dialogue_id, name, array.shape[0], n)
        expected = self.dims.setdefault(name, int(array.shape[1]))
        if array.shape[1] != expected:
            raise self.error(
                dialogue_id, name, f"size {array.shape[1]}, but earlier dialogues have size {expected}"
            )
        finite = np.isfinite(array)
        if not finite.all():
            position = int(np.flatnonzero(~finite.all(axis=1))[0])
            raise self.error(dialogue_id, name, f"NaN or Inf at utterance {position}")
        return array

    def feature(self, role: str, dialogue_id: Any, n: int) -> np.ndarray:
        name, value = self.entry(role, dialogue_id)
        return self.matrix(dialogue_id, name, value, n, what="feature rows")

    def text(self, dialogue_id: Any, n: int) -> np.ndarray:
        if self.layout.position("text") is not None:
            return self.feature("text", dialogue_id, n)
        if self.text_feature != "mean":
            return self.feature(self.text_feature, dialogue_id, n)
        layers = [self.feature(f"roberta{k}", dialogue_id, n) for k in range(1, 5)]
        if len({layer.shape[1] for layer in layers}) != 1:
            name = self.field("roberta1")[0].name
            raise self.error(dialogue_id, name, "RoBERTa layers differ in size; cannot take their mean")
        return np.mean(np.stack(layers), axis=0, dtype=np.float64).astype(np.float32)

    def dialogue(self, dialogue_id: Any) -> Dialogue:
        labels = self.labels(dialogue_id)
        n = labels.shape[0]
        speakers = self.speakers(dialogue_id, n)
        features = {"text": self.text(dialogue_id, n)}
        for modality in ("audio", "visual"):
            if self.layout.position(modality) is not None:
                features[modality] = self.feature(modality, dialogue_id, n)
        return Dialogue(dialogue_id=str(dialogue_id), speakers=speakers, labels=labels, features=features)


def _ragged_detail(rows: Any) -> str | None:
    """Which utterance's row differs in size from the first one, if that is why reading failed."""
    if not isinstance(rows, (list, tuple)) or not rows:
        return None
    sizes = [_length(row) for row in rows]
    for position, size in enumerate(sizes):
        if size != sizes[0]:
            def describe(count: int | None) -> str:
                return "a single number" if count is None else f"{count} values"

            return f"utterance {position} has {describe(size)}, utterance 0 has {describe(sizes[0])}"
    return None


def _dev_split(train_ids: list[Any], dev_fraction: float, dev_seed: int, *, source: str,
               field: str) -> tuple[list[Any], list[Any]]:
    """Hold out ``dev_fraction`` of the train ids, chosen by ``default_rng(dev_seed)`` over the sorted ids."""
    if len(train_ids) < 2:
        raise _data_error(f"{source}: field '{field}': needs at least 2 dialogues to hold out a dev split")
    pool = sorted(train_ids, key=_id_sort_key)
    count = min(max(1, int(round(dev_fraction * len(pool)))), len(pool) - 1)
    chosen = np.random.default_rng(dev_seed).choice(len(pool), size=count, replace=False)
    dev = {pool[i] for i in chosen.tolist()}
    return [i for i in train_ids if i not in dev], [i for i in pool if i in dev]


def read_feature_file(
    path: str | os.PathLike,
    *,
    layout: str | None = None,
    text_feature: str = "roberta1",
    dev_fraction: float = 0.1,
    dev_seed: int = 0,
) -> DialogueCorpus:
    """Read a published ERC feature pickle into a validated :class:`DialogueCorpus`.

    Args:
        path: The pickle (e.g. ``iemocap_multimodal_features.pkl``).
        layout: A key of :data:`LAYOUTS`; ``None`` detects it from the file's contents.
        text_feature: Which text feature to use where the file has the last four RoBERTa layers
            (SDT, COSMIC): ``roberta1`` (last layer) .. ``roberta4``, or ``mean`` of the four.
            Layouts with a single text feature accept only the default.
        dev_fraction: Share of the train dialogues held out as ``dev`` when the file has no
            validation list of its own (every layout except COSMIC's). In ``(0, 1)``.
        dev_seed: Seed of ``numpy.random.default_rng`` choosing those dev dialogues from the
            sorted train ids.

    Returns:
        Splits ``train``/``dev``/``test``; speakers as indices (IEMOCAP 'M'->0, 'F'->1; MELD
        one-hot -> argmax), ``int64`` labels, ``float32`` features, dialogue ids as strings.
        ``metadata.description`` records the file, its SHA-256, the layout, the text feature and
        how the dev split was made.

    Raises:
        ValueError: An option is invalid (the message names it).
        UnsafePickleError: The file references code (see :mod:`redifu.data.safe_pickle`).
        DataError: The file is malformed; the one-line message names the file, dialogue and field.
    """
    source = os.fspath(path)
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; expected one of {sorted(LAYOUTS)} or None")
    if text_feature not in TEXT_FEATURES:
        raise ValueError(f"text_feature: unknown choice {text_feature!r}; expected one of {TEXT_FEATURES}")
    if not 0.0 < float(dev_fraction) < 1.0:
        raise ValueError(f"dev_fraction: must be in (0, 1), got {dev_fraction!r}")

    obj = load_pickle_safely(source)
    fields = _top_level_fields(obj, source)
    if layout is None:
        layout = detect_layout(obj, source=source)
        logger.info("%s: detected layout %s", source, layout)
    spec = LAYOUTS[layout]
    if len(fields) != spec.num_fields:
        raise _data_error((
            f"{source}: layout '{layout}' expects a tuple of {spec.num_fields} fields "
            f"({', '.join(f.name for f in spec.fields)}), got {len(fields)}{_detection_hint(obj, source)}"
        ))
    problems, _ = _mismatches(spec, [_describe_field(value) for value in fields])
    if problems:
        raise _data_error((
            f"{source}: does not match layout '{layout}': {problems[0]}{_detection_hint(obj, source)}"
        ))
    if text_feature not in spec.text_features:
        text_name = spec.fields[spec.position("text")].name
        raise ValueError(
            f"text_feature: {text_feature!r} needs RoBERTa layers; layout '{layout}' has a single "
            f"text feature '{text_name}' (leave text_feature at its default)"
        )

    reader = _FileReader(source, spec, fields, text_feature)
    train_name = spec.fields[spec.position("train_ids")].name
    test_name = spec.fields[spec.position("test_ids")].name
    split_ids = {"train": reader.split_ids("train_ids"), "test": reader.split_ids("test_ids")}
    if spec.position("dev_ids") is not None:
        dev_name = spec.fields[spec.position("dev_ids")].name
        split_ids["dev"] = reader.split_ids("dev_ids")
        dev_note = f"dev split: the file's own '{dev_name}' ({len(split_ids['dev'])} dialogues)"
    else:
        dev_name = train_name
        split_ids["train"], split_ids["dev"] = _dev_split(
            split_ids["train"], dev_fraction, dev_seed, source=source, field=train_name
        )
        dev_note = (
            f"dev split: {len(split_ids['dev'])} of {len(split_ids['train']) + len(split_ids['dev'])} "
            f"'{train_name}' dialogues held out (dev_fraction={dev_fraction}, "
            f"numpy.random.default_rng({dev_seed}) over the sorted train ids; the file has no validation list)"
        )
    names = {"train": train_name, "dev": dev_name, "test": test_name}
    for split, ids in split_ids.items():
        if not ids:
            raise _data_error(f"{source}: field '{names[split]}': no dialogues listed for split {split!r}")
    owner: dict[Any, str] = {}
    for split in ("train", "dev", "test"):
        for dialogue_id in split_ids[split]:
            if dialogue_id in owner:
                raise _data_error(
                    f"{source}: dialogue {dialogue_id}: field '{names[split]}': also listed in "
                    f"'{names[owner[dialogue_id]]}' (splits must be disjoint)"
                )
            owner[dialogue_id] = split
            reader.listed_in[dialogue_id] = names[split]
    string_ids: dict[str, Any] = {}
    for dialogue_id in owner:
        previous = string_ids.setdefault(str(dialogue_id), dialogue_id)
        if previous is not dialogue_id and previous != dialogue_id:
            raise _data_error(
                f"{source}: dialogue {dialogue_id}: ids {previous!r} and {dialogue_id!r} are the same as strings"
            )

    splits = {split: [reader.dialogue(i) for i in split_ids[split]] for split in ("train", "dev", "test")}
    if reader.multi_hot_rows:
        speaker_name = spec.fields[spec.position("speakers")].name
        logger.warning("%s: field '%s': %d speaker rows have more than one non-zero entry; used their argmax",
                       source, speaker_name, reader.multi_hot_rows)

    first = splits["train"][0]
    if spec.speaker_encoding == "gender":
        num_speakers = 2
    else:
        num_speakers = reader.dims[spec.fields[spec.position("speakers")].name]
    modality_dims = {m: int(first.features[m].shape[1]) for m in spec.modalities}
    text_note = (
        f"text feature {text_feature}" if spec.position("text") is None
        else f"text feature {spec.fields[spec.position('text')].name}"
    )
    description = (
        f"{entry_for_layout(layout).title} features read from {source} (sha256 {file_sha256(source)}); "
        f"layout {layout} ({spec.reference}); {text_note}; {dev_note}"
    )
    metadata = DatasetMetadata(
        name=spec.dataset, classes=spec.classes, num_speakers=num_speakers,
        modality_dims=modality_dims, description=description,
    )
    for dialogues in splits.values():
        for dialogue in dialogues:
            validate_dialogue(dialogue, metadata, source=source)
    unused = sum(1 for _ in _unlisted_ids(reader, owner))
    logger.info(
        "%s: layout %s: %d/%d/%d train/dev/test dialogues, %d utterances%s", source, layout,
        len(splits["train"]), len(splits["dev"]), len(splits["test"]),
        sum(len(d) for ds in splits.values() for d in ds),
        f"; {unused} dialogues in the data are in no split" if unused else "",
    )
    provenance = {"detected_layout": layout, "extractors": reported_extractors(layout, modality_dims)}
    return DialogueCorpus(metadata=metadata, splits=splits, provenance=provenance)


def load_feature_file(path: str | os.PathLike, **options: Any) -> DialogueCorpus:
    """:func:`read_feature_file`, with invalid options also reported as a one-line :class:`DataError`
    (what a dataset path in a config or on the command line needs)."""
    try:
        return read_feature_file(path, **options)
    except ValueError as error:
        if isinstance(error, DataError):
            raise
        raise DataError(str(error)) from None


def _unlisted_ids(reader: _FileReader, listed: Mapping[Any, str]) -> Iterable[Any]:
    _, labels = reader.field("labels")
    return (dialogue_id for dialogue_id in labels if dialogue_id not in listed)


def _detection_hint(obj: Any, source: str) -> str:
    try:
        return f"; the file looks like layout '{detect_layout(obj, source=source)}'"
    except DataError:
        return ""
