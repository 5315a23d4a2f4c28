"""Provenance shared by every feature extractor, and where and how extractors keep their caches."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from redifu.errors import DataError
from redifu.files import atomic_file, file_sha256

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractorInfo:
    """What produced a set of features (stored with them, and with checkpoints, for provenance).

    Args:
        name: Extractor name (a text model name or path, an openSMILE feature set).
        version: Extractor identity: package version and a fingerprint of the model or config files.
        dimension: Feature size ``D``.
        settings: Options that change the features (sequence length, sampling rate, ...).
    """

    name: str
    version: str
    dimension: int
    settings: dict = field(default_factory=dict)


def redifu_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/redifu/<parts>`` (``~/.cache/redifu/<parts>`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root, "redifu", *parts)


def write_cache_npz(path: Path, *, what: str, **arrays: np.ndarray) -> bool:
    """Write ``arrays`` to ``path`` as ``.npz`` atomically (temporary file, then rename).

    A cache that cannot be written is not an error: a warning names ``what`` and the path, and
    the result is ``False``.
    """
    try:
        with atomic_file(path, "wb") as stream:
            np.savez(stream, **arrays)
        return True
    except OSError as error:
        logger.warning("%s cache: cannot write %s: %s", what, path, error)
        return False


def segment_key(start: float, end: float | None) -> str:
    """A segment's part of a cache key, to the millisecond (the precision of MELD's timestamps)."""
    return f"{round(start * 1000)}:{'end' if end is None else round(end * 1000)}"


class ContentCache:
    """A content-addressed cache of per-segment feature arrays, shared by the audio and visual
    extractors: ``<root>/<prefix>-<tag>/<key[:2]>/<key>.npz``.

    ``tag`` is the first 16 hex digits of the SHA-256 of the extractor's ``identity`` (a JSON
    text of its name, version and settings); ``key`` the SHA-256 of the identity, the media
    file's content SHA-256 and the segment. Files are written atomically and read with
    ``allow_pickle=False``; an unreadable entry is ignored with a warning.

    Args:
        root: Cache root.
        prefix: Folder name before the tag (a feature set, a descriptor name).
        identity: Called once, when first needed (the identity may need a heavy import).
        what: Word for log messages (``"audio feature"``).
        media: Word for error messages (``"audio"``, ``"video"``).
    """

    def __init__(self, root: Path, *, prefix: str, identity: Callable[[], str], what: str, media: str) -> None:
        self.root, self.prefix, self.what, self.media = Path(root), prefix, what, media
        self._identity_of = identity
        self._identity: str | None = None
        self._hashes: dict[tuple[str, int, int], str] = {}

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = self._identity_of()
        return self._identity

    @property
    def directory(self) -> Path:
        tag = hashlib.sha256(self.identity.encode()).hexdigest()[:16]
        return self.root / f"{self.prefix}-{tag}"

    def file_hash(self, path: Path) -> str:
        """SHA-256 of a media file's content, memoised by path, size and modification time.

        Raises:
            DataError: one line naming the file when it is missing, a directory or unreadable.
        """
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise DataError(f"{path}: {self.media} file not found") from None
        except OSError as error:
            raise DataError(f"{path}: cannot read the {self.media} file ({error.strerror or error})") from None
        if not path.is_file():
            raise DataError(f"{path}: not an {self.media} file (a directory?)" if self.media[0] in "aeiou"
                            else f"{path}: not a {self.media} file (a directory?)")
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in self._hashes:
            try:
                self._hashes[memo] = file_sha256(path)
            except OSError as error:
                raise DataError(f"{path}: cannot read the {self.media} file ({error.strerror or error})") from None
        return self._hashes[memo]

    def key(self, file_hash: str, start: float, end: float | None) -> str:
        text = f"{self.identity}\0{file_hash}\0{segment_key(start, end)}"
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def read(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, KeyError, EOFError) as error:
            logger.warning("%s cache: ignoring unreadable entry %s (%s)", self.what, path, error)
            return None

    def write(self, key: str, **arrays: np.ndarray) -> bool:
        return write_cache_npz(self.path(key), what=self.what, **arrays)
