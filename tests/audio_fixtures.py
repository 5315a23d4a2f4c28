"""Real audio made here: speech rendered with espeak-ng, and MELD-like ``.mp4`` clips encoded
with PyAV (an AAC audio track beside a small MPEG-4 video track, as in MELD's clips)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ESPEAK = shutil.which("espeak-ng")
ESPEAK_MISSING = "espeak-ng not installed (apt-get install -y espeak-ng)"
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason=ESPEAK_MISSING)


def speak(path: Path, text: str, *, voice: str | None = None) -> Path:
    """Render ``text`` to a WAV file (22.05 kHz mono) with espeak-ng."""
    if ESPEAK is None:
        pytest.skip(ESPEAK_MISSING)
    command = [ESPEAK, "-w", str(path)] + (["-v", voice] if voice else []) + [text]
    subprocess.run(command, check=True, capture_output=True)
    return path


def encode_mp4(wav: Path, target: Path, *, stereo: bool = True, video: bool = True, audio: bool = True) -> Path:
    """Re-encode ``wav`` as AAC in an ``.mp4``/``.m4a`` (suffix decides), with a tiny video track.

    ``stereo`` puts the speech on the left channel and half of it on the right, so that a
    reader that forgets to mix down gives other features. ``audio=False`` writes a video-only file.
    """
    av = pytest.importorskip("av", reason="needs PyAV: pip install 'redifu[audio]'")
    import soundfile

    signal, rate = soundfile.read(wav, dtype="float32")  # (S,)
    channels = np.stack([signal, 0.5 * signal]) if stereo else signal[None, :]  # (C, S)
    layout = "stereo" if stereo else "mono"
    seconds = signal.shape[0] / rate
    with av.open(str(target), "w", format="mp4") as container:
        picture = None
        if video:
            picture = container.add_stream("mpeg4", rate=10)
            picture.width = picture.height = 32
            picture.pix_fmt = "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=rate)
            sound.layout = layout
            for first in range(0, channels.shape[1], 1024):
                chunk = np.ascontiguousarray(channels[:, first:first + 1024])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                frame.sample_rate, frame.pts = rate, first
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
        if picture is not None:
            for index in range(int(seconds * 10) + 1):
                image = np.full((32, 32, 3), (index * 7) % 255, dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                for packet in picture.encode(frame):
                    container.mux(packet)
            for packet in picture.encode(None):
                container.mux(packet)
    return target
