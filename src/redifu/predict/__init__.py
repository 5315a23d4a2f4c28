"""Emotion predictions for new conversations with a saved checkpoint.

- :mod:`redifu.predict.rows`: the utterance row schema (JSON Lines / CSV) that ``redifu predict``
  reads and ``redifu features extract`` reads and writes, its streaming reader and its writer;
- :mod:`redifu.predict.compatibility`: which features a checkpoint's model can take (the
  extractor each modality was trained on, sizes, raw audio);
- :mod:`redifu.predict.predictor`: :class:`Predictor`, whole dialogues in, one prediction per
  utterance out;
- :mod:`redifu.predict.session`: :class:`ConversationSession`, a live conversation, one utterance
  at a time (:meth:`Predictor.session`, causal checkpoints);
- :mod:`redifu.predict.explanation`: graph neighbours and fusion gates behind a prediction;
- :mod:`redifu.predict.predictions`: :class:`UtterancePrediction` and the
  :class:`PredictionWriter` of ``redifu predict --output``.
"""

from redifu.predict.compatibility import extractor_problem
from redifu.predict.explanation import EXPLAIN_TOP_K, explain
from redifu.predict.predictions import OUTPUT_FORMATS, PredictionWriter, UtterancePrediction
from redifu.predict.predictor import Predictor
from redifu.predict.session import ConversationSession
from redifu.predict.rows import (INPUT_FORMATS, ON_ERROR, ConversationReader, InputUtterance, read_conversations,
                                 read_rows)

__all__ = [
    "EXPLAIN_TOP_K",
    "INPUT_FORMATS",
    "ON_ERROR",
    "OUTPUT_FORMATS",
    "ConversationReader",
    "ConversationSession",
    "InputUtterance",
    "PredictionWriter",
    "Predictor",
    "UtterancePrediction",
    "explain",
    "extractor_problem",
    "read_conversations",
    "read_rows",
]
