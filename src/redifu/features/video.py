"""Utterance-level visual features from raw video: decode, sample, detect, track, align,
describe, pool; cached by content hash like the audio features.

Pipeline for one utterance (a whole clip, or the ``[start, end)`` segment of a longer file):

1. **Decode and sample** with PyAV: ``fps`` frames per second of the segment, evenly spaced
   (at most ``max_frames``; at least one), each the frame on screen at its time,
   converted to RGB and shrunk so that its longer side is at most ``max_side`` pixels.
2. **Detect** every face with five landmarks (:class:`~redifu.features.faces.FaceDetector`, MTCNN).
3. **Pick the speaker's face** (:func:`track_faces`, :func:`choose_track`): detections are linked
   frame to frame into tracks, greedily, a detection joining the track whose last box overlaps
   it most (IoU >= ``track_iou``); the chosen track is the one with the largest sum of face
   areas over the frames (a large face seen in many frames). Only its faces are described.
   (A face that moved too far between two sampled frames for any overlap still continues its
   track when its centre moved less than one face side at a similar size.)
   Failure cases, by design of this rule: with several people in the shot, the largest and
   steadiest face wins, which is the listener when the camera frames the listener; across a
   shot cut the face moves (by more than a face side) and a new track starts, so only the shot where the chosen face is
   largest-longest counts (another person framed at the same place after a cut joins the same
   track); a face the detector misses in some frames leaves those frames out (the track goes
   on past the gap).
4. **Align and describe**: each chosen face is aligned to :data:`~redifu.features.descriptors.FACE_TEMPLATE`
   by the similarity transform of its landmarks, cropped, and described
   (:mod:`redifu.features.descriptors`: built-in HOG + landmark geometry, or a TorchScript model).
5. **Pool** over the frames of the track: mean, standard deviation and maximum of each value,
   and the share of sampled frames where the track has a face: ``3 D + 1`` values.

No face in any sampled frame gives *no* vector (``None``): the caller applies redifu's
missing-modality treatment (the training mean, with the utterance recorded as missing).

Cache: ``<cache_dir>/<descriptor>-<tag>/<key[:2]>/<key>.npz`` (:class:`~redifu.features.info.ContentCache`),
keyed by the video file's SHA-256, the segment and the extractor's identity; it holds
``features`` (``(3 D + 1,)``, or ``(0,)`` for an utterance without a face) and the frame counts.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from redifu.errors import DataError
from redifu.features.info import ContentCache, ExtractorInfo, redifu_cache_dir

logger = logging.getLogger(__name__)

__all__ = ["FaceTrack", "UtteranceFaces", "VIDEO_SUFFIXES", "VisualFeatureExtractor", "choose_track",
           "default_video_cache_dir", "read_frames", "track_faces", "video_decoders"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
"""Video container suffixes looked for (MELD ships ``.mp4``)."""

POOLING = ("mean", "std", "max", "coverage")
_EXTRA_HINT = "pip install 'redifu[video]'"
PIPELINE_VERSION = "redifu-visual/1"
"""Bumped whenever sampling, tracking, alignment or pooling change the output."""


def default_video_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/redifu/visual-features`` (``~/.cache/redifu/visual-features`` by default)."""
    return redifu_cache_dir("visual-features")


# -- decoding --------------------------------------------------------------------------------


def _sample_times(start: float, end: float, fps: float, max_frames: int) -> np.ndarray:
    count = int(min(max_frames, max(1, np.floor((end - start) * fps))))
    return start + (np.arange(count) + 0.5) * (end - start) / count


def _shrunk(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale))), max(2, int(round(height * scale)))


def read_frames(path: Path, start: float = 0.0, end: float | None = None, *, fps: float = 3.0,
                max_frames: int = 24, max_side: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """Sampled RGB frames of ``[start, end)`` of a video file, and their times (seconds).

    Times are presentation times from the stream's start; a segment not at 0 is reached by
    seeking to the key frame before it. An ``end`` past the end of the video is clipped to it.

    Returns:
        ``(F, H, W, 3)`` ``uint8`` frames and ``(F,)`` times.

    Raises:
        DataError: one line naming the file: unreadable, no video stream, an empty segment.
    """
    try:
        import av
    except ImportError as error:
        raise ImportError(f"decoding video needs PyAV: {_EXTRA_HINT}") from error
    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
                raise DataError(f"{path}: no video stream in the file (streams: {kinds})")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            offset = stream.start_time or 0
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            stop = end if end is not None else duration
            if stop is not None and duration is not None and stop > duration + 0.5:
                stop = max(duration, start + 1e-3)
            if stop is None:  # no duration known: decode once to find it
                stop = start + 3600.0
            if stop <= start:
                raise DataError(f"{path}: empty segment [{start:.3f} s, {stop:.3f} s) (the video lasts "
                                f"{duration or 0:.3f} s)")
            wanted = _sample_times(start, stop, fps, max_frames)
            if start > 0 and stream.time_base is not None:
                container.seek(offset + int(start / stream.time_base), stream=stream, backward=True)
            size: tuple[int, int] | None = None
            shown = None  # the latest frame at or before the next sample time: the one on screen then
            upcoming = 0

            def keep(frame: Any, at: float) -> None:
                nonlocal size
                if times and times[-1] == at:
                    return  # a frame standing for several sample times is kept once
                size = size or _shrunk(frame.width, frame.height, max_side)
                frames.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
                times.append(at)

            for frame in container.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    continue
                at = float((frame.pts - offset) * frame.time_base)
                if at >= stop:
                    break
                while upcoming < len(wanted) and at > wanted[upcoming] + 1e-6:
                    if shown is not None:
                        keep(*shown)
                    upcoming += 1
                if upcoming == len(wanted):
                    break
                shown = frame, at
            if upcoming < len(wanted) and shown is not None:
                keep(*shown)
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: cannot read the video file ({reason})") from None
    if not frames:
        raise DataError(f"{path}: no video frame in the segment [{start:.3f} s, "
                        f"{'end' if end is None else f'{end:.3f} s'})")
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def video_decoders() -> dict[str, str]:
    """The installed video decoder's version (recorded with datasets built from raw video)."""
    try:
        import av
    except ImportError:
        return {}
    ffmpeg = ".".join(str(part) for part in av.library_versions.get("libavcodec", ()))
    return {"av": f"av=={av.__version__} (libavcodec {ffmpeg})"}


# -- tracking --------------------------------------------------------------------------------


@dataclass
class FaceTrack:
    """Detections linked across frames: ``faces[frame] = index of the detection in that frame``."""

    faces: dict[int, int] = field(default_factory=dict)
    last_box: np.ndarray | None = None
    area: float = 0.0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _link(previous: np.ndarray, box: np.ndarray, *, iou: float, max_shift: float, max_scale: float) -> float:
    """How well ``box`` continues a track that ended at ``previous``: ``1 + IoU`` when they
    overlap by at least ``iou``; else, for a face that moved (sampled frames are far apart),
    ``1 - shift`` when its centre moved less than ``max_shift`` face sides and its side changed
    less than ``max_scale`` times; ``0``: not the same face."""
    overlap = _iou(previous, box)
    if overlap >= iou:
        return 1.0 + overlap
    side_a, side_b = max(previous[2] - previous[0], 1e-6), max(box[2] - box[0], 1e-6)
    if max(side_a, side_b) / min(side_a, side_b) > max_scale:
        return 0.0
    shift = float(np.hypot((box[0] + box[2] - previous[0] - previous[2]) / 2,
                           (box[1] + box[3] - previous[1] - previous[3]) / 2)) / ((side_a + side_b) / 2)
    return 1.0 - shift if shift < max_shift else 0.0


TRACK_MAX_SHIFT = 1.0
"""A face continues a track it does not overlap enough if its centre moved less than this many face sides."""
TRACK_MAX_SCALE = 1.5
"""... and its side changed less than this many times."""


def track_faces(detections: Sequence[Sequence[Any]], *, iou: float = 0.3, max_shift: float = TRACK_MAX_SHIFT,
                max_scale: float = TRACK_MAX_SCALE) -> list[FaceTrack]:
    """Link each frame's detections (``.box``, ``.area``) into tracks, greedily.

    In frame order, each detection (best score first) joins the not yet extended track it
    continues best (:func:`_link`: overlap of at least ``iou`` first, else a centre shift under
    ``max_shift`` face sides at a similar size); otherwise it starts a track.
    """
    tracks: list[FaceTrack] = []
    for frame, faces in enumerate(detections):
        taken: set[int] = set()
        for index, face in enumerate(faces):
            best, best_link = None, 0.0
            for number, track in enumerate(tracks):
                if number in taken:
                    continue
                link = _link(track.last_box, face.box, iou=iou, max_shift=max_shift, max_scale=max_scale)
                if link > best_link:
                    best, best_link = number, link
            if best is None:
                tracks.append(FaceTrack())
                best = len(tracks) - 1
            track = tracks[best]
            track.faces[frame] = index
            track.last_box = face.box
            track.area += face.area
            taken.add(best)
    return tracks


def choose_track(tracks: Sequence[FaceTrack]) -> FaceTrack | None:
    """The speaker's face: the track with the largest sum of face areas (the first on a tie)."""
    return max(tracks, key=lambda t: t.area, default=None)


# -- the extractor ---------------------------------------------------------------------------


@dataclass
class UtteranceFaces:
    """What :meth:`VisualFeatureExtractor.analyse` saw in one utterance.

    Attributes:
        times: ``(F,)`` times of the sampled frames.
        detections: Per frame, its faces (best first).
        track: The chosen face track (``None``: no face at all).
        features: ``(3 D + 1,)`` pooled features, ``None`` without a face.
        seconds: Per stage (``decode``, ``detect``, ``describe``), the time spent.
    """

    times: np.ndarray
    detections: list[list[Any]]
    track: FaceTrack | None
    features: np.ndarray | None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return len(self.detections)

    @property
    def face_frames(self) -> int:
        """Sampled frames where the chosen face was found."""
        return 0 if self.track is None else len(self.track.faces)


class VisualFeatureExtractor:
    """Pooled face descriptors of whole video files or segments of them, cached on disk.

    Args:
        descriptor: A :class:`~redifu.features.descriptors.FaceDescriptor`; default the built-in
            ``hog-landmarks``.
        fps: Frames sampled per second of the utterance. Default 3.
        max_frames: At most this many frames per utterance (evenly spaced). Default 24.
        max_side: Frames are shrunk to this longer side, in pixels, before detection. Default 640.
        track_iou: Overlap linking a face to the previous frame's. Default 0.3.
        detector: A :class:`~redifu.features.faces.FaceDetector`; default one with its defaults
            (built on first use).
        cache_dir: Cache root; default :func:`default_video_cache_dir`.
        batch_frames: Frames per detector batch. Default 8.

    Shapes:
        extract_file: one file (or segment) in, ``(3 D + 1,)`` ``float32`` or ``None`` out.
    """

    def __init__(self, descriptor: Any = None, *, fps: float = 3.0, max_frames: int = 24, max_side: int = 640,
                 track_iou: float = 0.3, detector: Any = None, cache_dir: str | Path | None = None,
                 batch_frames: int = 8) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if max_side < 48:
            raise ValueError(f"max_side must be >= 48 pixels, got {max_side}")
        if not 0 < track_iou < 1:
            raise ValueError(f"track_iou must be in (0, 1), got {track_iou}")
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        if descriptor is None:
            from redifu.features.descriptors import HogLandmarkDescriptor

            descriptor = HogLandmarkDescriptor()
        self.descriptor = descriptor
        self.fps, self.max_frames, self.max_side = float(fps), int(max_frames), int(max_side)
        self.track_iou, self.batch_frames = float(track_iou), int(batch_frames)
        self._detector = detector
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_video_cache_dir()
        self.cache = ContentCache(self.cache_dir, prefix=descriptor.name.replace(":", "-"), identity=self._identity,
                                  what="visual feature", media="video")
        self.extractions = 0
        """Utterances that went through detection (cache misses)."""
        self.missing = 0
        """Utterances without a face so far (cached ones included)."""

    @property
    def detector(self) -> Any:
        if self._detector is None:
            from redifu.features.faces import FaceDetector

            self._detector = FaceDetector()
        return self._detector

    @property
    def settings(self) -> dict:
        """Options that change the features (part of every cache key)."""
        detector = {k: list(v) if isinstance(v, tuple) else v for k, v in self.detector.settings.items()}
        return {"fps": self.fps, "max_frames": self.max_frames, "max_side": self.max_side,
                "tracking": {"rule": "largest total face area", "iou": self.track_iou,
                             "max_shift": TRACK_MAX_SHIFT, "max_scale": TRACK_MAX_SCALE},
                "pooling": list(POOLING), "detector": detector, **self.descriptor.settings}

    @property
    def dimension(self) -> int:
        return 3 * self.descriptor.dimension + 1

    @property
    def info(self) -> ExtractorInfo:
        """Name (the descriptor's), version, dimension and settings (loads the detector's weights)."""
        from redifu.features.faces import MTCNN_PACKAGE, MTCNN_WEIGHTS

        version = (f"{PIPELINE_VERSION} {self.descriptor.version} "
                   f"{MTCNN_PACKAGE} sha256:{MTCNN_WEIGHTS['pnet'][:8]}{MTCNN_WEIGHTS['rnet'][:8]}"
                   f"{MTCNN_WEIGHTS['onet'][:8]}")
        return ExtractorInfo(name=self.descriptor.name, version=version, dimension=self.dimension,
                             settings=self.settings)

    def _identity(self) -> str:
        info = self.info
        return json.dumps({"name": info.name, "version": info.version, "settings": info.settings}, sort_keys=True)

    # -- extraction -------------------------------------------------------------------------

    def extract_file(self, path: str | Path, start: float | str | None = None,
                     end: float | str | None = None) -> np.ndarray | None:
        """Pooled features of a video file or its segment ``[start, end)``; ``None``: no face.

        Raises:
            DataError: one line naming the file for a missing or unreadable file, no video
                stream, an invalid or empty segment.
        """
        from redifu.features.audio import parse_segment

        path = Path(path)
        start_s, end_s = parse_segment(path, start, end)
        key = self.cache.key(self.cache.file_hash(path), start_s, end_s)
        stored = self.cache.read(key)
        if stored is not None and "features" in stored:
            features = stored["features"].astype(np.float32, copy=False)
            if features.shape == (0,):
                self.missing += 1
                return None
            if features.shape == (self.dimension,):
                return features
            logger.warning("visual feature cache: ignoring %s (shape %s)", self.cache.path(key), features.shape)
        faces = self.analyse(path, start_s, end_s)
        features = faces.features
        self.cache.write(key, features=features if features is not None else np.zeros(0, np.float32),
                         frames=np.asarray(faces.frames), face_frames=np.asarray(faces.face_frames))
        if features is None:
            self.missing += 1
        return features

    def analyse(self, path: str | Path, start: float = 0.0, end: float | None = None) -> UtteranceFaces:
        """Decode, detect, track, describe and pool one utterance (not cached)."""
        import torch

        from redifu.features.descriptors import face_geometry, similarity_transform, FACE_TEMPLATE
        from redifu.features.faces import sample_affine

        seconds = {}
        began = time.perf_counter()
        frames, times = read_frames(Path(path), start, end, fps=self.fps, max_frames=self.max_frames,
                                    max_side=self.max_side)
        seconds["decode"] = time.perf_counter() - began
        began = time.perf_counter()
        detections: list[list[Any]] = []
        for first in range(0, len(frames), self.batch_frames):
            detections.extend(self.detector.detect(frames[first:first + self.batch_frames]))
        seconds["detect"] = time.perf_counter() - began
        self.extractions += 1
        track = choose_track(track_faces(detections, iou=self.track_iou))
        if track is None:
            return UtteranceFaces(times, detections, None, None, seconds)
        began = time.perf_counter()
        size = self.descriptor.crop_size
        chosen = sorted(track.faces.items())
        faces = [detections[frame][index] for frame, index in chosen]
        height, width = frames.shape[1:3]
        to_crop = [similarity_transform(face.landmarks, FACE_TEMPLATE) for face in faces]  # frame px -> crop fraction
        geometry = np.stack([face_geometry(face.landmarks, m, face.box, face.score, (height, width))
                             for face, m in zip(faces, to_crop)])  # (T, G)
        maps = []
        for m in to_crop:  # crop pixel -> frame pixel: invert the similarity, then scale fractions to pixels
            inverse = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
            maps.append(inverse @ np.diag([1.0 / size, 1.0 / size, 1.0]))
        images = torch.from_numpy(frames).float()  # (F, H, W, 3)
        index = torch.tensor([frame for frame, _ in chosen], dtype=torch.long)
        with torch.inference_mode():
            crops = sample_affine(images, index, torch.from_numpy(np.stack(maps)), size)  # (T, 3, S, S)
        vectors = self.descriptor.describe(crops, geometry)  # (T, D)
        coverage = np.float32(len(chosen) / len(frames))
        features = np.concatenate([vectors.mean(0), vectors.std(0), vectors.max(0), [coverage]]).astype(np.float32)
        seconds["describe"] = time.perf_counter() - began
        return UtteranceFaces(times, detections, track, features, seconds)
