"""Provenance shared by every feature extractor, and where extractors keep their caches."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from redifu.files import atomic_file

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
