"""A live conversation: one utterance in, its emotion out (:meth:`Predictor.session`)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from redifu.errors import CheckpointError, DataError
from redifu.features.context import future_context_problem
from redifu.incremental import IncrementalReDiFu
from redifu.predict.predictions import UtterancePrediction
from redifu.predict.rows import InputUtterance, too_many_speakers

if TYPE_CHECKING:
    from redifu.predict.predictor import Predictor

__all__ = ["ConversationSession", "live_problem"]


def live_problem(predictor: "Predictor") -> str | None:
    """Why ``predictor``'s checkpoint cannot run live sessions, or ``None``."""
    if not predictor.model.config.causal:
        return ("live sessions need a causal checkpoint (trained with model.causal=true, e.g. configs/meld-text-live.yaml); "
                "this model reads later utterances")
    problem = future_context_problem(predictor.extractors.get("text"))
    return None if problem is None else problem.replace("a causal model needs", "a live session needs")


class ConversationSession:
    """One conversation, predicted as it happens: :meth:`add` gives each new utterance's emotion
    at once, computed from it and the earlier ones only (never revised later).

    Made by :meth:`redifu.predict.Predictor.session`. What is kept between utterances is bounded
    by the model's windows (:class:`~redifu.incremental.IncrementalReDiFu`); transcripts are
    encoded with at most the ``past`` utterances a fine-tuned text encoder's context reads.
    Speakers take the model's speaker slots in order of first appearance.
    """

    def __init__(self, predictor: "Predictor", *, dialogue_id: str = "live") -> None:
        problem = live_problem(predictor)
        if problem is not None:
            raise CheckpointError(problem)
        self.predictor = predictor
        self.dialogue_id = str(dialogue_id)
        self.state = IncrementalReDiFu(predictor.model)
        self._slots: dict[str, int] = {}
        settings = (predictor.extractors.get("text") or {}).get("settings") or {}
        past = int((settings.get("context") or {}).get("past", 0) or 0)
        self._recent_texts: deque[tuple[str, str]] = deque(maxlen=past)  # the earlier utterances it reads

    @property
    def utterances(self) -> int:
        """Utterances added so far."""
        return self.state.position

    def state_bytes(self) -> int:
        """Bytes kept for later utterances (model state; transcripts of the text context aside)."""
        return self.state.state_bytes() + sum(len(s) + len(t) for s, t in self._recent_texts)

    def add(self, speaker: str, text: str | Sequence[float] | None = None, *, audio: Sequence[float] | None = None,
            visual: Sequence[float] | None = None, **features: Any) -> UtterancePrediction:
        """The next utterance's prediction.

        Args:
            speaker: Who speaks.
            text: The transcript, or a precomputed text vector.
            audio, visual: Precomputed feature vectors, where the model takes them.
            features: Other fields of the row schema (``text_extractor``, ...) are refused.

        Raises:
            DataError: A missing or malformed field, or one speaker too many (one line); the
                session is unchanged and takes the next utterance.
        """
        index = self.state.position
        where = f"utterance {index}"
        if features:
            raise DataError(f"{where}: field {sorted(features)[0]!r}: unknown; give speaker, text, audio, visual")
        if not isinstance(speaker, str) or not speaker.strip():
            raise DataError(f"{where}: field 'speaker': must be a non-empty string")
        transcript = text if isinstance(text, str) else None
        given = {m: v for m, v in (("text", None if transcript is not None else text), ("audio", audio),
                                   ("visual", visual)) if v is not None}
        predictor = self.predictor
        unknown = [m for m in given if m not in predictor.modalities]
        if unknown:
            raise DataError(f"{where}: field {unknown[0]!r}: this model takes {', '.join(predictor.modalities)}")
        if transcript is None and "text" not in given:
            raise DataError(f"{where}: field 'text': missing (a transcript or a 'text' vector)")
        [checked] = predictor._check(self.dialogue_id, [InputUtterance(self.dialogue_id, index, speaker, transcript,
                                                                       given)])
        if speaker not in self._slots and len(self._slots) == predictor.model.config.num_speakers:
            limit = predictor.model.config.num_speakers
            raise DataError(f"{where}: field 'speaker': {too_many_speakers(speaker, limit + 1, limit)}")
        vectors = dict(checked.features)
        context = [*self._recent_texts, (speaker, transcript or "")]
        if "text" not in vectors:  # past-only context: the last utterance's input reads no later one
            vectors["text"] = predictor._encode_texts([context])[-1]
        slot = self._slots.setdefault(speaker, len(self._slots))
        logits = self.state.step({m: torch.from_numpy(np.asarray(vectors[m], dtype=np.float32))
                                  for m in predictor.modalities}, slot)
        self._recent_texts.append((speaker, transcript or ""))
        probabilities = logits.float().softmax(-1).cpu().double().numpy()
        return UtterancePrediction(
            dialogue_id=self.dialogue_id, index=index, speaker=speaker,
            label=predictor.classes[int(probabilities.argmax())],
            probabilities={name: float(p) for name, p in zip(predictor.classes, probabilities)},
        )
