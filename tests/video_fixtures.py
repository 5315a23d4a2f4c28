"""Real faces made into video here: photographs that scikit-image ships (``skimage.data.astronaut()``,
Eileen Collins) pasted onto a background, moving and scaling, encoded as MELD-like ``.mp4``
clips with PyAV (MPEG-4 video, and an AAC track of espeak-ng speech when espeak-ng is there).

Layouts (``scenes``), 320x240 at 10 frames/s:

- ``moving``: one face drifting right and growing (about 90 -> 130 px), every frame;
- ``gap``: the same with a frame of background only in the middle;
- ``pair``: the large face and, from the second frame on, a smaller mirrored copy (about 55 px) at
  the other side, so that two faces are detected and the large one must be chosen;
- ``empty``: background only, no face.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audio_fixtures import ESPEAK

SKIMAGE_MISSING = "needs scikit-image (its sample photographs): pip install 'redifu[video]'"
WIDTH, HEIGHT, RATE = 320, 240, 10
FACE_BOX = (165, 45, 285, 190)  # (x1, y1, x2, y2) of the astronaut's head in skimage's 512x512 photograph


def mtcnn_missing() -> str | None:
    """Why the detector cannot run here, or ``None``."""
    try:
        from redifu.features.faces import mtcnn_weights_dir

        folder = mtcnn_weights_dir()
    except ImportError as error:
        return str(error)
    if not (folder / "onet.pt").is_file():
        return f"{folder}: MTCNN weights missing (pip install --no-deps facenet-pytorch==2.6.0)"
    return None


def needs_faces() -> None:
    """Skip, saying why, without scikit-image, PyAV or the MTCNN weights."""
    pytest.importorskip("skimage", reason=SKIMAGE_MISSING)
    pytest.importorskip("av", reason="needs PyAV: pip install 'redifu[video]'")
    reason = mtcnn_missing()
    if reason is not None:
        pytest.skip(reason)


def face_patch() -> np.ndarray:
    """The astronaut's head, ``(145, 120, 3)`` ``uint8``."""
    from skimage import data

    x1, y1, x2, y2 = FACE_BOX
    return data.astronaut()[y1:y2, x1:x2]


def _background(index: int) -> np.ndarray:
    rng = np.random.default_rng(index)  # the noise makes clips of one layout differ by seed
    rows = np.linspace(60, 140, HEIGHT, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(rows, (HEIGHT, WIDTH, 3)).copy()
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image, 0, 255)


def _paste(image: np.ndarray, patch: np.ndarray, x: int, y: int, height: int) -> tuple[int, int, int, int]:
    from skimage.transform import resize

    width = int(round(patch.shape[1] * height / patch.shape[0]))
    scaled = resize(patch, (height, width), preserve_range=True, anti_aliasing=True)
    image[y:y + height, x:x + width] = scaled[: HEIGHT - y, : WIDTH - x]
    return x, y, x + width, y + height


def scene(kind: str, frames: int = 20, *, seed: int = 0) -> tuple[np.ndarray, list[list[tuple[int, int, int, int]]]]:
    """Frames ``(T, H, W, 3)`` ``uint8`` of a layout and, per frame, the pasted face boxes (largest
    first); ``seed`` changes the background noise (distinct files for the content-hash cache)."""
    patch = face_patch()
    images, boxes = [], []
    for index in range(frames):
        image = _background(index + 1000 * seed)
        placed = []
        if kind != "empty" and not (kind == "gap" and index == frames // 2):
            progress = index / max(frames - 1, 1)
            placed.append(_paste(image, patch, int(20 + 100 * progress), int(30 + 10 * progress),
                                 int(110 + 40 * progress)))
            if kind == "pair" and index > 0:
                placed.append(_paste(image, patch[:, ::-1], 250, 150, 68))
        elif kind not in ("empty", "gap"):
            raise ValueError(kind)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        boxes.append(placed)
    return np.stack(images), boxes


def write_clip(target: Path, frames: np.ndarray, *, speech: Path | None = None) -> Path:
    """Encode ``frames`` as MPEG-4 video at :data:`RATE` frames/s in an ``.mp4``, with ``speech``
    (a WAV file) as its AAC audio track."""
    av = pytest.importorskip("av", reason="needs PyAV: pip install 'redifu[video]'")
    with av.open(str(target), "w", format="mp4") as container:
        picture = container.add_stream("mpeg4", rate=RATE)
        picture.width, picture.height, picture.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        picture.bit_rate = 2_000_000
        sound = None
        if speech is not None:
            import soundfile

            signal, rate = soundfile.read(speech, dtype="float32")
            sound = container.add_stream("aac", rate=rate)
            sound.layout = "mono"
            for first in range(0, signal.shape[0], 1024):
                chunk = np.ascontiguousarray(signal[None, first:first + 1024])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, first
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in picture.encode(frame):
                container.mux(packet)
        for packet in picture.encode(None):
            container.mux(packet)
    return target


def speech_or_none(folder: Path, text: str) -> Path | None:
    """espeak-ng speech for an audio track, or ``None`` without espeak-ng (video-only clips)."""
    if ESPEAK is None:
        return None
    from audio_fixtures import speak

    return speak(folder / f"speech-{abs(hash(text)) % 10**8}.wav", text)
