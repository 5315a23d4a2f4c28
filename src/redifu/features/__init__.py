"""Feature extractors that turn raw transcripts (and later audio and video) into arrays.

Heavy dependencies (sentence-transformers, torch models) are imported only when an extractor is
used; install them with ``pip install 'redifu[text]'``.
"""

from redifu.features.text import DEFAULT_TEXT_ENCODER, TextEncoder, TextEncoderInfo, default_cache_dir

__all__ = ["DEFAULT_TEXT_ENCODER", "TextEncoder", "TextEncoderInfo", "default_cache_dir"]
