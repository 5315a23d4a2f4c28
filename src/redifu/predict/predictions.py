"""Prediction records and the file they are written to (``redifu predict --output``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from redifu.predict.rows import ROW_FORMATS, RowWriter

__all__ = ["OUTPUT_FORMATS", "PredictionWriter", "UtterancePrediction"]

OUTPUT_FORMATS = dict(ROW_FORMATS)


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
            model has them (:func:`redifu.predict.explanation.explain`). Plain JSON types only.
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


class PredictionWriter:
    """Writes predictions to ``.jsonl`` or ``.csv`` (by extension) atomically: the file appears,
    complete, when the ``with`` block ends without error, and a failed run leaves no file.

    CSV columns: ``dialogue_id, utterance, speaker, label, prob_<class>...`` (plus ``attention``
    as JSON text with ``explain``). JSON Lines: :meth:`UtterancePrediction.to_dict` per line.
    """

    def __init__(self, path: str | Path, classes: Sequence[str], *, explain: bool = False) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in OUTPUT_FORMATS:
            raise ValueError(f"{self.path}: unknown output format {self.path.suffix!r}; use .jsonl or .csv")
        self.format = OUTPUT_FORMATS[self.path.suffix.lower()]
        self.classes = tuple(classes)
        self.explain = explain
        self.dialogues = self.utterances = 0
        columns = ["dialogue_id", "utterance", "speaker", "label", *(f"prob_{c}" for c in self.classes)]
        self._rows = RowWriter(self.path, columns + (["attention"] if explain else []))

    def __enter__(self) -> "PredictionWriter":
        self._rows.__enter__()
        return self

    def write(self, predictions: Sequence[UtterancePrediction]) -> None:
        """Write one dialogue's predictions."""
        for p in predictions:
            if self.format == "jsonl":
                self._rows.write(p.to_dict())
                continue
            row = {"dialogue_id": p.dialogue_id, "utterance": p.index, "speaker": p.speaker, "label": p.label,
                   **{f"prob_{c}": repr(p.probabilities[c]) for c in self.classes}}
            if self.explain:
                row["attention"] = p.attention
            self._rows.write(row)
        self.dialogues += 1
        self.utterances += len(predictions)

    def __exit__(self, kind, error, traceback) -> bool | None:
        return self._rows.__exit__(kind, error, traceback)
