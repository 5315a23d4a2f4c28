"""Utterance-level acoustic features with openSMILE, with a content-addressed on-disk cache.

Two functionals sets of openSMILE (Eyben et al., "openSMILE: the Munich versatile and fast
open-source audio feature extractor", ACM MM 2010), through the ``opensmile`` Python package:

- ``IS10_paraling``: the INTERSPEECH 2010 Paralinguistic Challenge set (Schuller et al., 2010),
  1582 functionals of 38 low-level descriptors and their deltas. It is the set behind the
  standard IEMOCAP audio features (DialogueRNN, MMGCN, ...). ``opensmile`` ships its config as
  ``is09-13/IS10_paraling_compat.conf`` (numerically compatible with the original release except
  for jitter and shimmer, whose bugs openSMILE 2.1 fixed).
- ``eGeMAPSv02``: the extended Geneva Minimalistic Acoustic Parameter Set (Eyben et al., IEEE
  Trans. Affective Computing 2016), 88 functionals.

Sampling rates: openSMILE itself processes a signal at whatever rate it is given (the rate is
passed to the config; frames are defined in seconds), and ``opensmile.Smile`` only resamples
when built with ``sampling_rate=...`` and ``resample=True``. The spectral descriptors (mel bands,
MFCCs, SHS pitch, spectral slopes) however depend on the Nyquist frequency, so the same speech
recorded at 8 kHz and at 44.1 kHz gives different vectors. Every signal is therefore mixed down
to mono and resampled to :data:`SAMPLING_RATE` (16 kHz, the rate both sets were designed for and
the rate of IEMOCAP) with ``audresample`` (the resampler ``opensmile`` itself uses) before
extraction. Upsampling 8 kHz audio adds no content above 4 kHz; the dimension is unchanged.

Decoding: WAV, FLAC, OGG and AIFF are read with ``soundfile``; any other file (MELD's ``.mp4``
clips, ``.m4a``, ``.mkv``, ``.mp3``, ...) with PyAV, whose wheels bundle FFmpeg's libraries: its
first audio stream is decoded to float samples (lossy codecs such as AAC give vectors close to,
not equal to, those of the lossless original). Segments of long files are reached by seeking.

Cache layout: ``<cache_dir>/<set tag>/<key[:2]>/<key>.npz``, one file per (audio file content
SHA-256, segment, feature set identity) holding ``features`` (``float32``, ``(D,)``). Files are
written to a temporary file and renamed (atomic) and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from redifu.errors import DataError
from redifu.features.info import ContentCache, ExtractorInfo, redifu_cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_FEATURE_SETS",
    "AudioFeatureExtractor",
    "AudioFeatureInfo",
    "SAMPLING_RATE",
    "SOUNDFILE_SUFFIXES",
    "audio_decoders",
    "default_audio_cache_dir",
    "parse_segment",
    "parse_timestamp",
]

AUDIO_FEATURE_SETS: dict[str, int] = {"IS10_paraling": 1582, "eGeMAPSv02": 88}
"""Supported feature sets and their dimensions."""

SAMPLING_RATE = 16000
"""Every signal is resampled to this rate (Hz) before extraction."""

_EXTRA_HINT = "pip install 'redifu[audio]'"
_IS10_CONFIG = ("is09-13", "IS10_paraling_compat.conf")
_TIMESTAMP = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:[.,]\d*)?)$")  # [HH:]MM:SS[,mmm]


AudioFeatureInfo = ExtractorInfo
"""What produced a set of audio features (see :class:`~redifu.features.info.ExtractorInfo`)."""


def default_audio_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/redifu/audio-features`` (``~/.cache/redifu/audio-features`` by default)."""
    return redifu_cache_dir("audio-features")


def parse_timestamp(value: Any) -> float:
    """Seconds from a number or a ``[HH:]MM:SS[,mmm]`` / ``[HH:]MM:SS[.mmm]`` string.

    MELD's CSVs write ``StartTime``/``EndTime`` as ``'00:14:38,127'`` (878.127 s); plain numbers
    (``12.5``, ``'12.5'``) are taken as seconds.

    Raises:
        ValueError: for anything else, negative or non-finite times.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        match = _TIMESTAMP.match(text)
        if match:
            hours, minutes, rest = match.groups()
            seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(rest.replace(",", "."))
        else:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"not a time: {value!r} (use seconds or HH:MM:SS,mmm)") from None
    else:
        raise ValueError(f"not a time: {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a time: {value!r} (must be finite and >= 0)")
    return seconds


def parse_segment(path: Path, start: Any, end: Any) -> tuple[float, float | None]:
    """``(start, end)`` seconds of a segment of ``path`` (``None`` start: 0; ``None`` end: the file's end).

    Raises:
        DataError: one line naming the file for an unreadable time or an end not after the start.
    """
    try:
        start_s = parse_timestamp(start) if start is not None else 0.0
        end_s = parse_timestamp(end) if end is not None else None
    except ValueError as error:
        raise DataError(f"{path}: segment: {error}") from None
    if end_s is not None and end_s <= start_s:
        raise DataError(f"{path}: segment end {end_s:.3f} s must be after its start {start_s:.3f} s")
    return start_s, end_s


class AudioFeatureExtractor:
    """openSMILE functionals for whole audio files or segments of them, cached on disk.

    openSMILE is set up on first use, so a run whose segments are all cached never loads it.

    Args:
        feature_set: ``"IS10_paraling"`` (1582-d, default) or ``"eGeMAPSv02"`` (88-d).
        cache_dir: Cache root; default :func:`default_audio_cache_dir`.

    Shapes:
        extract_file: one file (or segment) in, ``(D,)`` ``float32`` out.
    """

    def __init__(self, feature_set: str = "IS10_paraling", *, cache_dir: str | Path | None = None) -> None:
        if feature_set not in AUDIO_FEATURE_SETS:
            raise ValueError(f"feature_set must be one of {sorted(AUDIO_FEATURE_SETS)}, got {feature_set!r}")
        self.feature_set = feature_set
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_audio_cache_dir()
        self.extractions = 0
        """Number of signals that went through openSMILE (cache misses)."""
        self._smile: Any = None
        self._info: AudioFeatureInfo | None = None
        self.cache = ContentCache(self.cache_dir, prefix=feature_set, identity=self._identity, what="audio feature",
                                  media="audio")

    # -- openSMILE --------------------------------------------------------------------------

    @staticmethod
    def _opensmile() -> Any:
        try:
            import opensmile
        except ImportError as error:
            raise ImportError(f"audio features need opensmile: {_EXTRA_HINT}") from error
        return opensmile

    def _config_path(self) -> Path:
        opensmile = self._opensmile()
        root = Path(opensmile.__file__).resolve().parent / "core" / "config"
        if self.feature_set == "IS10_paraling":
            return root.joinpath(*_IS10_CONFIG)
        return root / "egemaps" / "v02" / "eGeMAPSv02.conf"

    @property
    def smile(self) -> Any:
        """The ``opensmile.Smile`` at the functionals level (created on first access)."""
        if self._smile is None:
            opensmile = self._opensmile()
            logger.info("setting up openSMILE %s (%s)", self.feature_set, opensmile.__version__)
            if self.feature_set == "IS10_paraling":
                # Not one of opensmile's FeatureSet members: the packaged config, by path.
                self._smile = opensmile.Smile(feature_set=str(self._config_path()), feature_level="func")
            else:
                self._smile = opensmile.Smile(
                    feature_set=opensmile.FeatureSet.eGeMAPSv02,
                    feature_level=opensmile.FeatureLevel.Functionals,
                )
            names = len(self._smile.feature_names)
            assert names == AUDIO_FEATURE_SETS[self.feature_set], (self.feature_set, names)
        return self._smile

    @property
    def settings(self) -> dict:
        """Options that change the features (part of every cache key)."""
        return {"sampling_rate": SAMPLING_RATE, "mixdown": "mean", "feature_level": "functionals"}

    @property
    def info(self) -> AudioFeatureInfo:
        """Name, version, dimension and settings (does not start openSMILE)."""
        if self._info is None:
            opensmile = self._opensmile()
            root = Path(opensmile.__file__).resolve().parent / "core" / "config"
            digest = hashlib.sha256()
            # The config and the files it includes define the features: hash all packaged configs.
            for path in sorted(root.rglob("*.conf*")):
                digest.update(path.relative_to(root).as_posix().encode() + b"\0")
                digest.update(path.read_bytes())
            version = f"opensmile=={opensmile.__version__} sha256:{digest.hexdigest()[:16]}"
            self._info = AudioFeatureInfo(
                name=self.feature_set,
                version=version,
                dimension=AUDIO_FEATURE_SETS[self.feature_set],
                settings=self.settings,
            )
        return self._info

    # -- extraction -------------------------------------------------------------------------

    def extract_file(self, path: str | Path, start: float | str | None = None,
                     end: float | str | None = None) -> np.ndarray:
        """Features of a whole audio file, or of its segment ``[start, end)`` in seconds.

        Args:
            path: An audio file: WAV, FLAC, OGG, AIFF through ``soundfile``; any container FFmpeg
                reads (MELD's ``.mp4`` clips, ``.m4a``, ``.mkv``, ``.mp3``, ...) through PyAV,
                whose first audio stream is decoded.
            start: Segment start (seconds or ``HH:MM:SS,mmm``); ``None`` = 0.
            end: Segment end; ``None`` = end of file. An end past the end of the file is clipped
                to it (MELD's timestamps sometimes overshoot by a few milliseconds).

        Returns:
            ``float32`` array of shape ``(D,)``.

        Raises:
            DataError: one line naming the file for a missing or unreadable file, an invalid or
                empty segment, or a segment too short for the feature set.
        """
        path = Path(path)
        start_s, end_s = self._segment(path, start, end)
        key = self.cache.key(self.cache.file_hash(path), start_s, end_s)
        cached = self._read_cache(key)
        if cached is not None:
            return cached
        signal, rate = _read_audio(path, start_s, end_s)
        features = self.extract_signal(signal, rate, source=_describe(path, start_s, end_s))
        self._write_cache(key, features)
        return features

    def extract_signal(self, signal: np.ndarray, sampling_rate: int, *, source: str = "signal") -> np.ndarray:
        """Features of an in-memory signal (not cached).

        Args:
            signal: ``(samples,)`` or ``(channels, samples)`` floats in ``[-1, 1]``.
            sampling_rate: Its rate in Hz (any; resampled to :data:`SAMPLING_RATE`).
            source: Name used in error messages.

        Shapes:
            ``(S,)`` or ``(C, S)`` in, ``(D,)`` ``float32`` out.
        """
        import audresample

        signal = np.asarray(signal, dtype=np.float32)
        if signal.ndim == 1:
            signal = signal[None, :]  # (1, S)
        if signal.ndim != 2 or signal.shape[1] == 0:
            raise DataError(f"{source}: empty audio")
        if signal.shape[0] > 1:
            signal = audresample.remix(signal, mixdown=True)  # (1, S): mean of the channels
        if sampling_rate != SAMPLING_RATE:
            signal = audresample.resample(signal, int(sampling_rate), SAMPLING_RATE)  # (1, S')
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Segment too short": checked below
            frame = self.smile.process_signal(signal, SAMPLING_RATE)
        self.extractions += 1
        features = np.asarray(frame.to_numpy(), dtype=np.float32).reshape(-1)  # (D,)
        if features.shape[0] != self.info.dimension or not np.isfinite(features).all():
            seconds = signal.shape[1] / SAMPLING_RATE
            raise DataError(f"{source}: audio too short for {self.feature_set} ({seconds:.3f} s): "
                            f"openSMILE returned no finite features")
        return features

    def _segment(self, path: Path, start: Any, end: Any) -> tuple[float, float | None]:
        return parse_segment(path, start, end)

    # -- cache ------------------------------------------------------------------------------

    def _identity(self) -> str:
        info = self.info
        return json.dumps({"set": info.name, "version": info.version, "settings": info.settings}, sort_keys=True)

    def _read_cache(self, key: str) -> np.ndarray | None:
        stored = self.cache.read(key)
        if stored is None:
            return None
        features = stored.get("features")
        if features is None or features.shape != (self.info.dimension,):
            logger.warning("audio feature cache: ignoring %s (shape %s)", self.cache.path(key),
                           None if features is None else features.shape)
            return None
        return features.astype(np.float32, copy=False)

    def _write_cache(self, key: str, features: np.ndarray) -> None:
        self.cache.write(key, features=features.astype(np.float32))


def audio_decoders() -> dict[str, str]:
    """Versions of the installed audio decoders (recorded with datasets built from raw audio)."""
    decoders = {}
    try:
        import soundfile

        decoders["soundfile"] = f"soundfile=={soundfile.__version__} ({soundfile.__libsndfile_version__})"
    except ImportError:
        pass
    try:
        import av

        ffmpeg = ".".join(str(part) for part in av.library_versions.get("libavcodec", ()))
        decoders["av"] = f"av=={av.__version__} (libavcodec {ffmpeg})"
    except ImportError:
        pass
    return decoders


def _describe(path: Path, start: float, end: float | None) -> str:
    if start == 0.0 and end is None:
        return str(path)
    return f"{path} [{start:.3f} s, {'end' if end is None else f'{end:.3f} s'})"


SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".aifc", ".au", ".snd"})
"""Read with ``soundfile`` (libsndfile); every other suffix (``.mp4``, ``.m4a``, ``.mkv``, ``.mp3``,
``.webm``, ...) is decoded with PyAV (FFmpeg)."""


def _read_audio(path: Path, start: float, end: float | None) -> tuple[np.ndarray, int]:
    """``(channels, samples)`` float32 signal of ``[start, end)`` and its sampling rate."""
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        return _read_with_soundfile(path, start, end)
    return _read_with_pyav(path, start, end)


def _empty_segment(path: Path, start: float, end: float | None, duration: float) -> DataError:
    return DataError(f"{_describe(path, start, end)}: empty segment (the audio lasts {duration:.3f} s)")


def _read_with_soundfile(path: Path, start: float, end: float | None) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError as error:
        raise ImportError(f"audio features need soundfile: {_EXTRA_HINT}") from error
    try:
        with soundfile.SoundFile(str(path)) as reader:
            rate, frames = reader.samplerate, reader.frames
            first = int(round(start * rate))
            last = frames if end is None else min(frames, int(round(end * rate)))
            if first >= last:
                raise _empty_segment(path, start, end, frames / rate)
            if end is not None and end * rate > frames + 1:
                logger.debug("%s: segment end %.3f s clipped to the file's end %.3f s", path, end, frames / rate)
            reader.seek(first)
            signal = reader.read(last - first, dtype="float32", always_2d=True)  # (S, C)
    except DataError:
        raise
    except (RuntimeError, OSError, ValueError) as error:  # soundfile.LibsndfileError is a RuntimeError
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: cannot read the audio file ({reason})") from None
    return np.ascontiguousarray(signal.T), int(rate)  # (C, S)


def _read_with_pyav(path: Path, start: float, end: float | None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any FFmpeg-readable file (MELD's ``.mp4`` clips).

    Times are presentation times from the stream's start (what ``ffmpeg -ss`` uses). For a segment
    not at 0 the container is first seeked to the key frame before ``start``, so cutting many
    utterances out of one long episode file does not decode it from the top each time.
    """
    try:
        import av
    except ImportError as error:
        raise ImportError(f"decoding {path.suffix or 'this'} audio needs PyAV: {_EXTRA_HINT}") from error
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
                raise DataError(f"{path}: no audio stream in the file (streams: {kinds})")
            stream = container.streams.audio[0]
            offset = stream.start_time or 0  # in stream.time_base units
            if start > 0 and stream.time_base is not None:
                container.seek(offset + int(start / stream.time_base), stream=stream, backward=True)
            resampler = av.AudioResampler(format="fltp")  # planar float32, same layout and rate
            chunks: list[np.ndarray] = []
            rate: int | None = None
            position: float | None = None  # time of the next sample when frames carry no pts
            for frame in container.decode(stream):
                rate = rate or int(frame.sample_rate)
                if frame.pts is not None and frame.time_base is not None:
                    frame_start = float((frame.pts - offset) * frame.time_base)
                else:
                    frame_start = position if position is not None else 0.0
                position = frame_start + frame.samples / frame.sample_rate
                if end is not None and frame_start >= end:
                    break
                if position <= start:
                    continue
                for converted in resampler.resample(frame):
                    samples = converted.to_ndarray()  # (C, n)
                    first = max(0, int(round((start - frame_start) * rate)))
                    last = samples.shape[1] if end is None else min(samples.shape[1], int(round((end - frame_start) * rate)))
                    if last > first:
                        chunks.append(samples[:, first:last])
                    frame_start += samples.shape[1] / rate
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: cannot read the audio file ({reason})") from None
    if not chunks or rate is None:
        raise _empty_segment(path, start, end, position or 0.0)
    return np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32), rate  # (C, S)
