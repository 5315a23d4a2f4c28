"""The :class:`Predictor`: emotions of whole dialogues with a saved checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from redifu.checkpoint import load_checkpoint
from redifu.data.batching import DialogueTensors, collate_dialogues
from redifu.errors import IGNORE_LABEL, MODALITIES, CheckpointError, DataError
from redifu.model import ReDiFu
from redifu.predict.compatibility import check_recorded_extractors, extractor_problem, size_problem
from redifu.predict.explanation import explain as explain_batch
from redifu.predict.predictions import UtterancePrediction
from redifu.predict.rows import (ConversationReader, InputUtterance, as_vector, read_conversations, read_rows,
                                 too_many_speakers)

if TYPE_CHECKING:
    from redifu.features.text import TextEncoder
    from redifu.predict.session import ConversationSession

logger = logging.getLogger(__name__)

__all__ = ["Predictor"]


class Predictor:
    """Predicts emotions of whole dialogues with a :class:`ReDiFu` model in eval mode.

    Args:
        model: The model (moved to ``device``, put in eval mode).
        classes: Class names in label order.
        extractors: Recorded extractor per modality (:attr:`redifu.checkpoint.RunInfo.extractors`).
        device: Torch device. Default: ``cuda`` when present, else ``cpu``.
        text_encoder: Encoder for transcripts; default: one built from the recorded text
            extractor (or :data:`~redifu.features.text.DEFAULT_TEXT_ENCODER`), created on first use.
        batch_size: Dialogues per forward pass in :meth:`predict_many`.
        allow_unverified: Compute (or accept declared) features with redifu's own extractor of
            the kind a feature file's authors report for the training features (see
            :func:`~redifu.predict.compatibility.extractor_problem`); off by default.
        trust_torchscript: Load the TorchScript face model that the recorded visual extractor
            names, to describe ``video_path`` rows (loading it runs the code saved in it); off by
            default.

    A ``video_path`` clip where no face is found, and a row flagged ``visual_missing``, gets the
    model's training mean of the visual features (what its standardisation maps to zero).

    A dialogue with more distinct speakers than the model has speaker slots is refused with a
    :class:`DataError` (speakers take slots in order of first appearance).
    """

    def __init__(
        self,
        model: ReDiFu,
        classes: Sequence[str],
        *,
        extractors: Mapping[str, Mapping] | None = None,
        device: str | torch.device | None = None,
        text_encoder: "TextEncoder | None" = None,
        batch_size: int = 16,
        allow_unverified: bool = False,
        trust_torchscript: bool = False,
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
        self.trust_torchscript = bool(trust_torchscript)
        self._text_encoder = text_encoder
        self._checked_encoder = False
        self._bundled_encoder: Path | None = None
        self.source: Path | None = None  # the checkpoint directory (set by from_pretrained)
        self.card: dict | None = None  # its model card summary, where it has one

    @classmethod
    def from_pretrained(
        cls,
        checkpoint_dir: str | Path | None = None,
        *,
        device: str | None = None,
        text_encoder: "TextEncoder | None" = None,
        batch_size: int = 16,
        allow_unverified: bool = False,
        trust_torchscript: bool = False,
    ) -> "Predictor":
        """Load a checkpoint directory, or a model shipped with the package by name (``None``: the
        default one, :data:`redifu.pretrained.DEFAULT_MODEL`); offline. Refuses a checkpoint whose
        recorded extractors do not fit its model.

        A checkpoint directory holding ``text-encoder/`` (a bundled fine-tuned encoder) encodes
        transcripts with it; its version must be the one the model was trained on.
        """
        from redifu.pretrained import BUNDLED_ENCODER, read_card, resolve_model

        directory = resolve_model(checkpoint_dir)
        checkpoint = load_checkpoint(directory)
        config = checkpoint.model.config
        check_recorded_extractors(str(directory), config.modalities, config.modality_dims,
                                  checkpoint.run.modalities, checkpoint.run.extractors)
        predictor = cls(checkpoint.model, checkpoint.classes, extractors=checkpoint.run.extractors, device=device,
                        text_encoder=text_encoder, batch_size=batch_size, allow_unverified=allow_unverified,
                        trust_torchscript=trust_torchscript)
        predictor.source = directory
        predictor.card = read_card(directory)
        bundled = directory / BUNDLED_ENCODER
        if text_encoder is None and bundled.is_dir():
            predictor._bundled_encoder = bundled
        return predictor

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model.config.modalities

    @property
    def feature_dims(self) -> dict[str, int]:
        return dict(self.model.config.modality_dims)

    @property
    def text_encoder(self) -> "TextEncoder":
        """The transcript encoder (built from the recorded text extractor on first use)."""
        if self._text_encoder is None:
            from redifu.features.finetuned_text import is_encoder_dir, load_text_encoder

            extractor = self.extractors.get("text") or {}
            settings = extractor.get("settings") or {}
            name = extractor.get("name")
            if self._bundled_encoder is not None:
                encoder = load_text_encoder(str(self._bundled_encoder), device=str(self.device), progress=False)
                if extractor.get("version") and encoder.version != extractor["version"]:
                    raise CheckpointError(
                        f"{self._bundled_encoder}: the bundled text encoder is version {encoder.version}, but the "
                        f"model was trained on features from {extractor['version']}")
                self._text_encoder = encoder
                return encoder
            if "context" in settings and not is_encoder_dir(name):
                raise CheckpointError(
                    f"text: the model was trained on features of the fine-tuned encoder {name!r}, which is not "
                    "there; copy that directory to this path, or give precomputed 'text' vectors")
            self._text_encoder = load_text_encoder(
                name, device=str(self.device), progress=False,
                max_seq_length=settings.get("max_seq_length"), normalize=bool(settings.get("normalize", False)),
            )
        return self._text_encoder

    def read(self, path: str | Path, *, on_error: str = "fail") -> ConversationReader:
        """:func:`~redifu.predict.rows.read_conversations` checking rows against this model's
        modalities, sizes, extractors and speaker slots."""
        return read_conversations(path, on_error=on_error, feature_dims=self.feature_dims,
                                  extractors=self.extractors, allow_unverified=self.allow_unverified,
                                  num_speakers=self.model.config.num_speakers, missing_fill=self.training_means,
                                  trust_torchscript=self.trust_torchscript)

    @property
    def training_means(self) -> dict[str, np.ndarray]:
        """Per non-text modality, the training mean the model standardises with (put in place of
        a missing vector)."""
        return {m: self.model.encoders[m].feature_mean.detach().cpu().numpy().astype(np.float32)
                for m in self.modalities if m != "text"}

    def read_rows(self, rows: Iterable, *, source: str = "rows", on_error: str = "fail") -> ConversationReader:
        """:func:`~redifu.predict.rows.read_rows` (rows in memory) with the checks of :meth:`read`."""
        return read_rows(rows, source=source, on_error=on_error, feature_dims=self.feature_dims,
                         extractors=self.extractors, allow_unverified=self.allow_unverified,
                         num_speakers=self.model.config.num_speakers, missing_fill=self.training_means)

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

    def session(self, *, dialogue_id: str = "live") -> "ConversationSession":
        """A live conversation: ``session.add(speaker=..., text=...)`` returns each new
        utterance's :class:`UtterancePrediction` at once (:class:`~redifu.predict.session.ConversationSession`).

        Only for a causal checkpoint (``model.causal``) whose text features read no later
        utterance; otherwise a one-line :class:`~redifu.errors.CheckpointError`.
        """
        from redifu.predict.session import ConversationSession

        return ConversationSession(self, dialogue_id=dialogue_id)

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
            features = {m: item[m] for m in MODALITIES
                        if m in item and not (m == "text" and isinstance(text, (str, type(None))))}
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
                    vector = as_vector(vector)
                except ValueError as error:
                    raise DataError(f"{where}: field {modality!r}: {error}") from None
                if vector.shape[0] != dims[modality]:
                    problem = size_problem(modality, vector.shape[0], dims[modality], self.extractors.get(modality))
                    raise DataError(f"{where}: field {modality!r}: {problem}")
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

    def _encode_texts(self, dialogues: list[list[tuple[str, str]]]) -> np.ndarray:
        """Text features of every utterance of ``dialogues`` (``(speaker, text)`` lists)."""
        encoder = self.text_encoder
        if not self._checked_encoder:
            self._checked_encoder = True
            recorded = (self.extractors.get("text") or {}).get("version")
            if recorded and encoder.version != recorded:
                logger.warning("text encoder %s is version %s, but the model was trained on features from %s",
                               encoder.model_name, encoder.version, recorded)
        from redifu.features.text import encode_dialogues

        vectors = encode_dialogues(encoder, dialogues)  # (T, D_text)
        expected = self.feature_dims["text"]
        if vectors.shape[1] != expected:
            raise CheckpointError(
                f"text: the model takes {expected}-d text features but the text encoder {encoder.model_name!r} "
                f"gives {vectors.shape[1]}-d; give precomputed 'text' vectors or the matching encoder")
        return vectors

    def _speaker_slots(self, dialogue_id: str, utterances: list[InputUtterance]) -> list[int]:
        """Each utterance's speaker slot, in order of first appearance in the dialogue."""
        slots: dict[str, int] = {}
        limit = self.model.config.num_speakers
        for utterance in utterances:
            if utterance.speaker not in slots and len(slots) == limit:
                raise DataError(f"dialogue {dialogue_id!r}: utterance {utterance.index}: field 'speaker': "
                                f"{too_many_speakers(utterance.speaker, limit + 1, limit)}")
            slots.setdefault(utterance.speaker, len(slots))
        return [slots[u.speaker] for u in utterances]

    @torch.inference_mode()
    def _predict_batch(self, dialogues: list, *, explain: bool) -> list[list[UtterancePrediction]]:
        prepared = []
        for dialogue in dialogues:
            dialogue_id, utterances = self._coerce(dialogue)
            checked = self._check(dialogue_id, utterances)
            prepared.append((dialogue_id, checked, self._speaker_slots(dialogue_id, checked)))
        # whole dialogues, so that a context-aware encoder reads each utterance with its context
        pending = [utterances for _, utterances, _ in prepared if any("text" not in u.features for u in utterances)]
        vectors = self._encode_texts([[(u.speaker, u.text or "") for u in d] for d in pending]) if pending else []
        text_vectors = {id(u): v for u, v in zip((u for d in pending for u in d), vectors)
                        if "text" not in u.features}
        items = []
        for dialogue_id, utterances, speakers in prepared:
            features = {}
            for modality in self.modalities:
                rows = [text_vectors[id(u)] if modality == "text" and id(u) in text_vectors else u.features[modality]
                        for u in utterances]
                features[modality] = torch.from_numpy(np.stack(rows))  # (N, D_m)
            items.append(DialogueTensors(
                dialogue_id=dialogue_id, features=features, speakers=torch.tensor(speakers, dtype=torch.long),
                labels=torch.full((len(utterances),), IGNORE_LABEL, dtype=torch.long),
            ))
        batch = collate_dialogues(items).to(self.device)
        output = self.model(batch.features, batch.speakers, batch.mask, return_attention=explain)
        probabilities = output.logits.float().softmax(-1).cpu().double().numpy()  # (B, N, C)
        explanations = explain_batch(output, [[u.index for u in utterances] for _, utterances, _ in prepared]) \
            if explain else None
        results = []
        for row, (dialogue_id, utterances, _) in enumerate(prepared):
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

