"""Errors and constants that every part of redifu shares.

A leaf module: it imports nothing from redifu, so ``nn/``, ``model.py``, ``data/`` and the
pipelines can all depend on it without depending on each other.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("text", "audio", "visual")
"""Known modalities, in canonical order. Text is always the main stream."""

SPLITS: tuple[str, ...] = ("train", "dev", "test")
"""Dataset splits, in order. Models are selected on ``dev``; ``test`` is read once."""

IGNORE_LABEL = -100
"""Label value for utterances without a gold emotion (and for padding)."""


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


class DataError(ValueError):
    """Invalid input data; the message names the source, dialogue and field at fault."""


class CheckpointError(ValueError):
    """A checkpoint directory that is missing files or does not match its config."""


class UsageError(Exception):
    """A mistake in what the user asked for on the command line (reported in one line, exit status 2)."""
