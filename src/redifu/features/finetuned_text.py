"""Text features from an encoder fine-tuned by ``redifu text finetune``: each utterance read with
its dialogue (:mod:`redifu.features.context`), the target's tokens mean-pooled.

An encoder directory holds::

    ENCODER_DIR/redifu-text-encoder.json   format, base model, context construction, pooling,
                                           dimension, classes, data fingerprint, settings,
                                           selected epoch and its dev scores, history, cost
    ENCODER_DIR/config.json, model.safetensors   the fine-tuned transformer (Hugging Face layout)
    ENCODER_DIR/tokenizer.json, ...              its tokenizer
    ENCODER_DIR/head.safetensors                 the emotion classifier it was fine-tuned with

:func:`load_text_encoder` opens either kind of text extractor by name: an encoder directory
gives a :class:`FineTunedTextEncoder`, anything else a sentence-transformers
:class:`~redifu.features.text.TextEncoder`. Both encode whole dialogues
(:func:`~redifu.features.text.encode_dialogues`) and share the content-addressed cache.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from redifu.errors import DataError
from redifu.features.context import ContextInput, ContextSpec, build_dialogue_inputs
from redifu.features.text import _SHARD_TEXTS, DEFAULT_TEXT_ENCODER, TextEncoder, TextEncoderInfo

logger = logging.getLogger(__name__)

__all__ = ["ENCODER_FILE", "FORMAT", "FineTunedTextEncoder", "is_encoder_dir", "load_text_encoder",
           "pool_target", "read_encoder_manifest"]

ENCODER_FILE = "redifu-text-encoder.json"
FORMAT = "redifu-text-encoder"
POOLING = "target-mean"


def is_encoder_dir(name: str | Path) -> bool:
    """Whether ``name`` is a directory written by ``redifu text finetune``."""
    return (Path(name).expanduser() / ENCODER_FILE).is_file()


def read_encoder_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory).expanduser() / ENCODER_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{directory}: not a fine-tuned text encoder ({ENCODER_FILE} is missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: field 'format': expected {FORMAT!r}")
    for key in ("context", "dimension", "base"):
        if key not in manifest:
            raise DataError(f"{path}: field {key!r}: missing")
    return manifest


def load_text_encoder(name: str | None = None, **options: Any) -> TextEncoder:
    """The text extractor called ``name``: a fine-tuned encoder directory or a sentence-transformers
    model (default: the packaged all-MiniLM-L6-v2). ``options`` go to the encoder's constructor."""
    name = name or DEFAULT_TEXT_ENCODER
    if is_encoder_dir(name):
        options.pop("max_seq_length", None)  # the encoder's context construction decides
        options.pop("normalize", None)
        return FineTunedTextEncoder(name, **options)
    return TextEncoder(name, **options)


def pool_target(hidden: Any, target_mask: Any) -> Any:
    """Mean of the target utterance's token states.

    Shapes:
        ``hidden`` ``(B, L, H)``, ``target_mask`` ``(B, L)`` -> ``(B, H)``.
    """
    weights = target_mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def pad_inputs(inputs: Sequence[ContextInput], pad_id: int) -> dict[str, Any]:
    """A batch of context inputs as padded tensors (``input_ids``, ``attention_mask``,
    ``token_type_ids``, ``target_mask``, each ``(B, L_max)``)."""
    import torch

    length = max(len(i.input_ids) for i in inputs)
    batch = {name: torch.zeros((len(inputs), length), dtype=torch.long)
             for name in ("input_ids", "attention_mask", "token_type_ids", "target_mask")}
    batch["input_ids"].fill_(pad_id)
    for row, item in enumerate(inputs):
        n = len(item.input_ids)
        batch["input_ids"][row, :n] = torch.tensor(item.input_ids)
        batch["attention_mask"][row, :n] = 1
        batch["token_type_ids"][row, :n] = torch.tensor(item.token_type_ids)
        batch["target_mask"][row, :n] = torch.tensor(item.target_mask)
    return batch


def uses_segment_ids(model_config: Any) -> bool:
    """Whether the transformer has a second segment embedding for the context (BERT's family)."""
    return int(getattr(model_config, "type_vocab_size", 1) or 1) >= 2


class FineTunedTextEncoder(TextEncoder):
    """Context-aware text features from a ``redifu text finetune`` encoder directory.

    Args:
        directory: The encoder directory.
        batch_size: Utterances per forward pass. Default: ``64``.
        device: Torch device; ``None``: CUDA when present, else the CPU.
        cache_dir: Feature cache root (shared with :class:`~redifu.features.text.TextEncoder`;
            keys differ by model, version and settings).
        progress: Show a progress bar while encoding.

    Shapes:
        encode_dialogues: dialogues of ``T`` utterances in all -> ``(T, D)`` ``float32``.
    """

    def __init__(self, directory: str | Path, *, batch_size: int = 64, device: str | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True) -> None:
        directory = Path(directory).expanduser().resolve()
        super().__init__(str(directory), batch_size=batch_size, device=device, cache_dir=cache_dir,
                         progress=progress)
        self.directory = directory
        self.manifest = read_encoder_manifest(directory)
        try:
            self.context = ContextSpec.from_dict(self.manifest["context"])
        except (TypeError, ValueError) as error:
            raise DataError(f"{directory / ENCODER_FILE}: field 'context': {error}") from None
        self._tokenizer: Any = None
        self._inputs: dict[str, ContextInput] = {}

    def _local_path(self) -> Path | None:
        return self.directory

    @property
    def settings(self) -> dict:
        return {"context": self.context.to_dict(), "pooling": POOLING, "base": self.manifest["base"]}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.directory), local_files_only=True)
        return self._tokenizer

    def _load_model(self) -> Any:
        import torch
        from transformers import AutoModel

        logger.info("loading fine-tuned text encoder %s", self.directory)
        model = AutoModel.from_pretrained(str(self.directory), local_files_only=True)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return model.to(device).eval()

    @property
    def info(self) -> TextEncoderInfo:
        if self._info is None:
            self._info = TextEncoderInfo(name=str(self.directory), version=self.version,
                                         dimension=int(self.manifest["dimension"]), settings=self.settings)
        return self._info

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise TypeError(f"{self.directory}: a context-aware encoder reads whole dialogues; use encode_dialogues")

    def encode_dialogues(self, dialogues: Sequence[Sequence[tuple[str, str]]]) -> np.ndarray:
        """Features of every utterance of ``dialogues`` (each a list of ``(speaker, text)``), in order."""
        segments = uses_segment_ids(self._model_config())
        inputs = [item for dialogue in dialogues
                  for item in build_dialogue_inputs(self.tokenizer, dialogue, self.context, segment_ids=segments)]
        if not inputs:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        keys = [item.key() for item in inputs]
        self._inputs = dict(zip(keys, inputs))
        try:
            return TextEncoder.encode(self, keys)  # cached by input, the rest through the model
        finally:
            self._inputs = {}

    def _model_config(self) -> Any:
        from transformers import AutoConfig

        if getattr(self, "_config", None) is None:
            self._config = AutoConfig.from_pretrained(str(self.directory), local_files_only=True)
        return self._config

    def _encode_missing(self, missing: dict[bytes, str]) -> dict[bytes, np.ndarray]:
        keys = list(missing)
        vectors = encode_inputs(self.model, [self._inputs[missing[k]] for k in keys],
                                pad_id=self.tokenizer.pad_token_id or 0, batch_size=self.batch_size,
                                progress=self.progress)  # (T, D)
        for start in range(0, len(keys), _SHARD_TEXTS):
            self._write_shard(keys[start : start + _SHARD_TEXTS], vectors[start : start + _SHARD_TEXTS])
        return dict(zip(keys, vectors))


def encode_inputs(model: Any, inputs: Sequence[ContextInput], *, pad_id: int, batch_size: int = 64,
                  progress: bool = False, desc: str = "text features") -> np.ndarray:
    """Pooled target features of ``inputs`` through ``model`` (a Hugging Face transformer), longest
    first in batches; ``(len(inputs), H)`` ``float32`` in input order."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i].input_ids), reverse=True)
    out = np.zeros((len(inputs), model.config.hidden_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), tqdm(total=len(order), disable=not progress, desc=desc, unit="utt") as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pad_inputs([inputs[i] for i in rows], pad_id).items()}
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"]).last_hidden_state  # (B, L, H)
            out[rows] = pool_target(hidden, batch["target_mask"]).float().cpu().numpy()
            bar.update(len(rows))
    model.train(was_training)
    return out
