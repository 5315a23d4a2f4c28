"""Face descriptors: what a face crop becomes, per frame, before pooling over the utterance.

Every face is first *aligned*: the similarity transform (rotation, uniform scale, shift) that
maps its five MTCNN landmarks closest, in least squares, to :data:`FACE_TEMPLATE` (a frontal
face's proportions, as fractions of the crop side) is estimated, and the crop is sampled
through it, so the eyes, nose and mouth land on the same pixels in every crop whatever the
face's position, size and roll in the frame.

Descriptors (:class:`FaceDescriptor`, recorded as the visual extractor with their settings):

- ``hog-landmarks`` (:class:`HogLandmarkDescriptor`, built in, no weights to download):
  histograms of oriented gradients (Dalal and Triggs, CVPR 2005; ``skimage.feature.hog``) of the
  aligned grey crop, plus :func:`face_geometry`, the landmark geometry the alignment leaves
  (mouth width and opening, eye-to-mouth distance against the template, head roll, a yaw and a
  pitch proxy, face size and position, detection score). What it can carry: coarse shape and
  edges of the face (mouth open or stretched, brows and eyelid edges, wrinkles at the eyes and
  nose) and head pose and movement. It was fitted on no emotion data: it is a generic
  description, far weaker than features of a network trained on facial expressions (the
  DenseNet/3D-CNN features published with MELD and IEMOCAP), and sensitive to lighting,
  glasses, beards and blur.
- ``torchscript`` (:class:`TorchScriptDescriptor`): any image model the user has, saved with
  ``torch.jit.save``, run on aligned RGB crops in batches; its output per crop is the
  descriptor. **Loading a TorchScript file runs the code saved in it** (``torch.jit.load`` is
  not a data-only format), so it is only done when the caller says it trusts the file
  (``trust=True``; ``--trust-torchscript`` on the command line), and the file's SHA-256 is
  recorded so that prediction later uses the very same file.

timm architectures are not offered: timm imports torchvision at import time, and PyPI's
torchvision does not load beside every torch build (redifu's torch 2.13 among them); a timm
model the user can load can be exported to TorchScript and used as above.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import torch

from redifu.files import file_sha256

logger = logging.getLogger(__name__)

__all__ = ["DESCRIPTORS", "descriptor_from_spec", "FACE_TEMPLATE", "GEOMETRY_SIZE", "FaceDescriptor", "HogLandmarkDescriptor",
           "TorchScriptDescriptor", "build_descriptor", "face_geometry", "similarity_transform"]

_EXTRA_HINT = "pip install 'redifu[video]'"

FACE_TEMPLATE = np.array([[0.34, 0.40], [0.66, 0.40], [0.50, 0.57], [0.37, 0.75], [0.63, 0.75]], dtype=np.float64)
"""Where the aligned crop puts the five landmarks (left eye, right eye, nose, left and right
mouth corner), as ``(x, y)`` fractions of the crop side."""

GEOMETRY_SIZE = 17
"""Values of :func:`face_geometry` per face."""


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity ``x' = s R x + t`` taking ``source`` points to ``target``.

    Solved as a linear problem in ``(a, b, tx, ty)`` with ``x' = a x - b y + tx``,
    ``y' = b x + a y + ty`` (so ``s = |(a, b)|``, the rotation angle ``atan2(b, a)``).

    Shapes:
        - source, target: ``(K, 2)``, ``K >= 2`` -> ``(2, 3)`` matrix.
    """
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    x, y = source[:, 0], source[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])  # (2K, 4)
    values = np.concatenate([target[:, 0], target[:, 1]])  # (2K,)
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, values, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def face_geometry(landmarks: np.ndarray, to_crop: np.ndarray, box: np.ndarray, score: float,
                  frame_size: tuple[int, int]) -> np.ndarray:
    """What the landmarks say beyond the alignment, ``(GEOMETRY_SIZE,)`` ``float32``:

    the 10 coordinates of the landmarks in the aligned crop minus the template's (fractions of
    the crop: mouth opening and width, eye-to-mouth distance), the roll angle (radians), a yaw
    proxy (nose offset from the eyes' midpoint over the eye distance) and a pitch proxy (nose
    height between eyes and mouth), the log of the face's size over the frame height, the box
    centre as fractions of the frame, and the detection score.

    Args:
        landmarks: ``(5, 2)`` in frame pixels.
        to_crop: ``(2, 3)`` similarity from frame pixels to crop fractions.
        box: ``(4,)`` the face box in frame pixels.
        score: Detection probability.
        frame_size: ``(height, width)``.
    """
    points = landmarks @ to_crop[:, :2].T + to_crop[:, 2]  # (5, 2) in crop fractions
    residual = (points - FACE_TEMPLATE).reshape(-1)  # (10,)
    a, b = to_crop[0, 0], to_crop[1, 0]
    roll = math.atan2(-b, a)  # the face's own rotation is the inverse of the aligning one
    eyes = (landmarks[0] + landmarks[1]) / 2
    mouth = (landmarks[3] + landmarks[4]) / 2
    eye_distance = max(float(np.linalg.norm(landmarks[1] - landmarks[0])), 1e-6)
    axis = (landmarks[1] - landmarks[0]) / eye_distance
    yaw = float(np.dot(landmarks[2] - eyes, axis)) / eye_distance
    height = max(float(np.linalg.norm(mouth - eyes)), 1e-6)
    pitch = float(np.linalg.norm(landmarks[2] - eyes)) / height
    frame_height, frame_width = frame_size
    size = math.log(max(float(box[3] - box[1]), 1.0) / frame_height)
    centre = ((box[0] + box[2]) / 2 / frame_width, (box[1] + box[3]) / 2 / frame_height)
    return np.concatenate([residual, [roll, yaw, pitch, size, *centre, score]]).astype(np.float32)


class FaceDescriptor(Protocol):
    """Turns aligned face crops into vectors.

    Attributes:
        name: Recorded as the visual extractor's name; features of another name are refused.
        version: Library versions and file fingerprints that define the output.
        settings: Options that change the output (recorded; rebuilt from by :func:`build_descriptor`).
        dimension: Values per face.
        crop_size: Side of the aligned crops it takes, in pixels.
    """

    name: str
    version: str
    settings: dict
    dimension: int
    crop_size: int

    def describe(self, crops: torch.Tensor, geometry: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S)`` RGB crops (0..255) and ``(N, GEOMETRY_SIZE)`` geometry -> ``(N, dimension)``."""
        ...


class HogLandmarkDescriptor:
    """HOG of the aligned grey crop plus the landmark geometry (see the module docstring).

    Args:
        crop_size: Aligned crop side in pixels. Default 64.
        cell: HOG cell side in pixels. Default 16.
        block: HOG block side in cells. Default 2.
        orientations: HOG orientation bins. Default 9.

    Shapes:
        describe: ``(N, 3, S, S)`` -> ``(N, D)``, ``D = hog size + GEOMETRY_SIZE`` (341 by default).
    """

    name = "hog-landmarks"

    def __init__(self, *, crop_size: int = 64, cell: int = 16, block: int = 2, orientations: int = 9) -> None:
        if crop_size < 16:
            raise ValueError(f"crop_size must be >= 16, got {crop_size}")
        if cell < 4 or crop_size % cell:
            raise ValueError(f"cell must be >= 4 and divide crop_size {crop_size}, got {cell}")
        cells = crop_size // cell
        if not 1 <= block <= cells:
            raise ValueError(f"block must be between 1 and crop_size / cell = {cells}, got {block}")
        if orientations < 2:
            raise ValueError(f"orientations must be >= 2, got {orientations}")
        try:
            import skimage
            from skimage.feature import hog
        except ImportError as error:
            raise ImportError(f"the hog-landmarks face descriptor needs scikit-image: {_EXTRA_HINT}") from error
        self._hog = hog
        self.crop_size, self.cell, self.block, self.orientations = int(crop_size), int(cell), int(block), int(orientations)
        blocks = cells - block + 1
        self.dimension = blocks * blocks * block * block * orientations + GEOMETRY_SIZE
        self.version = f"scikit-image=={skimage.__version__}"

    @property
    def settings(self) -> dict:
        return {"descriptor": self.name, "crop_size": self.crop_size, "cell": self.cell, "block": self.block,
                "orientations": self.orientations, "block_norm": "L2-Hys", "geometry": GEOMETRY_SIZE}

    def describe(self, crops: torch.Tensor, geometry: np.ndarray) -> np.ndarray:
        grey = (crops * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1) / 255.0  # (N, S, S)
        rows = []
        for image, shape in zip(grey.numpy(), geometry):
            histogram = self._hog(image, orientations=self.orientations, pixels_per_cell=(self.cell, self.cell),
                                  cells_per_block=(self.block, self.block), block_norm="L2-Hys",
                                  feature_vector=True)
            rows.append(np.concatenate([histogram, shape]))
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), self.dimension)


NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
"""Per-channel ``(mean, std)`` applied to crops in ``[0, 1]`` before a TorchScript model."""


class TorchScriptDescriptor:
    """The output of a user's TorchScript image model on aligned RGB crops.

    Args:
        path: A ``torch.jit.save`` file taking ``(B, 3, S, S)`` floats and returning ``(B, D)``
            (or ``(B, D, 1, 1)``).
        trust: Must be ``True``: loading TorchScript runs the code saved in the file, so only
            files you trust (your own) may be loaded.
        crop_size: ``S``. Default 112.
        normalization: ``"imagenet"`` (default), ``"unit"`` (``[0, 1]``) or ``"symmetric"``
            (``[-1, 1]``): what the model was trained on.
        batch_size: Crops per forward pass. Default 32.
        sha256: Expected SHA-256 of the file (a recorded one): another file is refused.

    Shapes:
        describe: ``(N, 3, S, S)`` -> ``(N, D)``.
    """

    def __init__(self, path: str | Path, *, trust: bool = False, crop_size: int = 112,
                 normalization: str = "imagenet", batch_size: int = 32, sha256: str | None = None) -> None:
        path = Path(path)
        if not trust:
            raise ValueError(f"{path}: loading a TorchScript file runs the code saved in it; pass trust=True "
                             f"(--trust-torchscript) only for a file you trust")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
        if crop_size < 16:
            raise ValueError(f"crop_size must be >= 16, got {crop_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not path.is_file():
            raise ValueError(f"{path}: TorchScript face model not found")
        digest = file_sha256(path)
        if sha256 is not None and digest != sha256:
            raise ValueError(f"{path}: SHA-256 {digest[:16]}... is not the recorded {sha256[:16]}...: another model")
        try:
            self.model = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{path}: not a TorchScript file ({reason})") from None
        self.path, self.sha256 = path.resolve(), digest
        self.crop_size, self.normalization, self.batch_size = int(crop_size), normalization, int(batch_size)
        self.name = f"torchscript:{digest[:16]}"
        self.version = f"torch=={torch.__version__} sha256:{digest}"
        probe = self._forward(torch.zeros(1, 3, self.crop_size, self.crop_size))
        self.dimension = int(probe.shape[1])

    @property
    def settings(self) -> dict:
        return {"descriptor": "torchscript", "path": str(self.path), "sha256": self.sha256,
                "crop_size": self.crop_size, "normalization": self.normalization}

    @torch.inference_mode()
    def _forward(self, crops: torch.Tensor) -> torch.Tensor:
        mean, std = (torch.tensor(v)[None, :, None, None] for v in NORMALIZATIONS[self.normalization])
        output = self.model((crops / 255.0 - mean) / std)
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"{self.path}: the model returned {type(output).__name__}, not a tensor")
        output = output.float().flatten(1)  # (B, D): (B, D, 1, 1) maps too
        if output.shape[0] != crops.shape[0]:
            raise ValueError(f"{self.path}: {output.shape[0]} outputs for {crops.shape[0]} crops")
        return output

    def describe(self, crops: torch.Tensor, geometry: np.ndarray) -> np.ndarray:
        parts = [self._forward(crops[i:i + self.batch_size]) for i in range(0, crops.shape[0], self.batch_size)]
        vectors = torch.cat(parts).numpy() if parts else np.zeros((0, self.dimension), np.float32)
        return vectors.astype(np.float32, copy=False)


DESCRIPTORS = ("hog-landmarks", "torchscript")


def build_descriptor(settings: Mapping[str, Any] | None = None, *, trust_torchscript: bool = False) -> FaceDescriptor:
    """A descriptor from its recorded (or chosen) settings; ``None``: the built-in ``hog-landmarks``.

    Raises:
        ValueError: unknown descriptor or settings, an untrusted TorchScript file, another file
            than the recorded one.
    """
    settings = dict(settings or {"descriptor": "hog-landmarks"})
    kind = settings.pop("descriptor", None)
    if kind == "hog-landmarks":
        settings.pop("block_norm", None), settings.pop("geometry", None)
        return HogLandmarkDescriptor(**settings)
    if kind == "torchscript":
        path = settings.pop("path", None)
        if path is None:
            raise ValueError("a torchscript descriptor needs its file ('path')")
        return TorchScriptDescriptor(path, trust=trust_torchscript, **settings)
    raise ValueError(f"face descriptor {kind!r}: redifu computes {', '.join(DESCRIPTORS)}")


def descriptor_from_spec(spec: str | None, *, trust_torchscript: bool = False) -> FaceDescriptor:
    """The descriptor a command line names: ``hog-landmarks`` (default) or ``torchscript:FILE``."""
    if spec in (None, "", "hog-landmarks"):
        return HogLandmarkDescriptor()
    kind, _, path = spec.partition(":")
    if kind == "torchscript" and path:
        return TorchScriptDescriptor(path, trust=trust_torchscript)
    raise ValueError(f"face descriptor {spec!r}: use hog-landmarks or torchscript:FILE")
