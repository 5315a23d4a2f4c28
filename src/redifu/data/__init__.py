"""Dataset formats and batching: dialogue containers, the dataset registry, CSV transcripts,
published feature pickles, the open on-disk store and the synthetic generator.

Imports nothing from ``features/``, the pipelines (``prepare``, ``predict``), training or the
model; the pipelines combine ``data/`` with ``features/``.
"""
