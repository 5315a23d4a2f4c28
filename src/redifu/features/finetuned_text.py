"""Text features from an encoder fine-tuned by ``redifu text finetune``: each utterance read with
its dialogue (:mod:`redifu.features.context`), the target's tokens mean-pooled.

An encoder directory holds::

    ENCODER_DIR/redifu-text-encoder.json   format, base model, context construction, pooling,
                                           dimension, classes, data fingerprint, settings,
                                           selected epoch and its dev scores, history, cost
    ENCODER_DIR/config.json, model.safetensors   the fine-tuned transformer (Hugging Face layout)
    ENCODER_DIR/adapter.safetensors              or, instead of model.safetensors, LoRA factors
                                                 merged into the base model on loading (the
                                                 base's version is checked: a different base
                                                 is refused)
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

__all__ = ["ADAPTER_FILE", "ENCODER_FILE", "FORMAT", "FineTunedTextEncoder", "is_encoder_dir", "load_text_encoder",
           "lora_factors", "merge_lora", "pool_target", "read_encoder_manifest"]

ENCODER_FILE = "redifu-text-encoder.json"
ADAPTER_FILE = "adapter.safetensors"
_PEFT_PREFIX = "base_model.model."
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


def lora_factors(peft_model: Any) -> dict[str, Any]:
    """The LoRA factors of a ``peft`` model, keyed by the base weight they change:
    ``NAME.lora_A`` ``(r, in)`` and ``NAME.lora_B`` ``(out, r)``, the scaling folded into B, so
    that the merged weight is ``W + B @ A``."""
    factors = {}
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        key = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
        factors[f"{key}.lora_A"] = module.lora_A["default"].weight.detach().cpu().contiguous()
        factors[f"{key}.lora_B"] = (module.lora_B["default"].weight.detach() * module.scaling["default"]).cpu().contiguous()
    return factors


def merge_lora(model: Any, factors: dict[str, Any], where: str) -> int:
    """Add ``B @ A`` to each weight named in ``factors`` (from :func:`lora_factors`); every
    factor must name a weight of ``model`` with matching shapes. Returns the weights changed."""
    import torch

    parameters = dict(model.named_parameters())
    names = sorted({key.rsplit(".", 1)[0] for key in factors})
    for name in names:
        a, b = factors.get(f"{name}.lora_A"), factors.get(f"{name}.lora_B")
        weight = parameters.get(f"{name}.weight")
        if a is None or b is None:
            raise DataError(f"{where}: factor {name!r}: lora_A and lora_B must both be there")
        if weight is None:
            raise DataError(f"{where}: factor {name!r}: the base model has no such weight (another base?)")
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise DataError(f"{where}: factor {name!r}: shapes {tuple(b.shape)} @ {tuple(a.shape)} do not fit the "
                            f"weight {tuple(weight.shape)}")
        with torch.no_grad():
            weight += (b.to(weight) @ a.to(weight))
    return len(names)


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

    @property
    def adapter(self) -> dict[str, Any] | None:
        """The manifest's LoRA adapter entry (``None``: the directory holds the whole model)."""
        return self.manifest.get("adapter")

    def _compute_version(self) -> str:
        version = super()._compute_version()
        if self.adapter:
            version += f" over {self.adapter.get('base_version')}"
        return version

    def _load_model(self) -> Any:
        import torch
        from transformers import AutoModel

        logger.info("loading fine-tuned text encoder %s", self.directory)
        if self.adapter:
            model = self._load_with_adapter()
        else:
            model = AutoModel.from_pretrained(str(self.directory), local_files_only=True)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return model.to(device).eval()

    def _load_with_adapter(self) -> Any:
        """The base model (which must be the version the factors were trained on), factors merged."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        where = str(self.directory / ENCODER_FILE)
        base = TextEncoder(self.manifest["base"])
        expected = self.adapter.get("base_version")
        if base.version != expected:
            raise DataError(f"{where}: field 'adapter.base_version': the factors were trained over {expected!r}, but "
                            f"the base model {self.manifest['base']!r} here is {base.version!r}")
        local = base._local_path()
        model = AutoModel.from_pretrained(str(local) if local is not None else self.manifest["base"],
                                          local_files_only=True)
        path = self.directory / str(self.adapter.get("file", ADAPTER_FILE))
        try:
            factors = load_file(str(path))
        except FileNotFoundError:
            raise DataError(f"{path}: missing (the encoder's LoRA factors)") from None
        except Exception as error:  # safetensors raises its own error types
            raise DataError(f"{path}: not a readable safetensors file ({error})") from None
        merged = merge_lora(model, factors, str(path))
        if merged != self.adapter.get("factors", merged) or merged == 0:
            raise DataError(f"{path}: {merged} factor pairs, the manifest says {self.adapter.get('factors')}")
        return model

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
