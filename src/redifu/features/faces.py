"""Face detection with five landmarks: MTCNN, written here from its paper, with the weights that
ship inside the ``facenet-pytorch`` wheel.

MTCNN (Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE Signal Processing Letters 2016) runs three small networks in a
cascade over an image pyramid:

1. **P-Net** (proposal network), fully convolutional over every pyramid level: a 12x12 window
   every 2 pixels gets a face probability and a box regression. Windows above ``thresholds[0]``
   become candidate boxes, merged by non-maximum suppression (NMS) per level and across levels.
2. **R-Net** (refinement) re-scores each candidate, cropped and resized to 24x24, and regresses
   its box again; NMS.
3. **O-Net** (output) does the same at 48x48 and also regresses five landmarks (the eye
   centres, the nose tip, the mouth corners); NMS by the overlap over the smaller box ("min").

Boxes are made square before each crop; pixels are scaled as ``(v - 127.5) / 128``.

Weights: facenet-pytorch (MIT licence) ships the networks' weights as plain state dicts
(``facenet_pytorch/data/{pnet,rnet,onet}.pt``, converted from the original MTCNN release). Its
Python code cannot be used here: the package imports torchvision at import time and pins
``torch<2.3``, while redifu runs on current torch, and PyPI's torchvision does not load beside
every torch build. So it is installed with ``pip install --no-deps facenet-pytorch==2.6.0``,
its package is never imported (the files are found with :func:`importlib.util.find_spec`, which
does not run it), and the files are read with ``torch.load(weights_only=True)`` (tensors only, no
code) after their SHA-256 is checked against :data:`MTCNN_WEIGHTS`. The layers below are sized
from the paper's figure and those files.

Everything runs in torch (NMS included), on batches of frames of one size.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from redifu.files import file_sha256

logger = logging.getLogger(__name__)

__all__ = ["FaceDetection", "FaceDetector", "MTCNN_WEIGHTS", "MTCNN_PACKAGE", "ONet", "PNet", "RNet",
           "box_iou", "mtcnn_weights_dir", "nms", "sample_affine"]

MTCNN_PACKAGE = "facenet-pytorch==2.6.0"
"""The wheel whose ``data/`` folder holds the MTCNN weights (identical in 2.5.3 and 2.6.0)."""

MTCNN_WEIGHTS: dict[str, str] = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
"""SHA-256 of each network's state dict file: a file with another hash is refused."""

INSTALL_HINT = (f"pip install 'redifu[video]' && pip install --no-deps {MTCNN_PACKAGE} "
                f"(--no-deps: only its weight files are used; its own dependencies would replace torch)")


def mtcnn_weights_dir() -> Path:
    """The installed ``facenet_pytorch/data`` folder, found without importing the package.

    Raises:
        ImportError: facenet-pytorch is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec("facenet_pytorch")  # a top-level name: finds, does not import
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"face detection needs the MTCNN weights of facenet-pytorch: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _load_weights(directory: Path, name: str) -> dict[str, Tensor]:
    path = directory / f"{name}.pt"
    if not path.is_file():
        raise ImportError(f"{path}: MTCNN weights not found: {INSTALL_HINT}")
    digest = file_sha256(path)
    if digest != MTCNN_WEIGHTS[name]:
        raise ValueError(f"{path}: SHA-256 {digest} is not the pinned {MTCNN_WEIGHTS[name]} of {MTCNN_PACKAGE}'s "
                         f"{name} weights; reinstall: {INSTALL_HINT}")
    return torch.load(path, map_location="cpu", weights_only=True)


# -- the three networks ------------------------------------------------------------------------


class PNet(nn.Module):
    """MTCNN's proposal network: fully convolutional, one 12x12 window per output cell (stride 2).

    Shapes:
        - x: ``(B, 3, H, W)`` scaled pixels -> probabilities ``(B, 2, H', W')`` (channel 1: face)
          and box offsets ``(B, 4, H', W')``, ``H' = (H - 2) // 2 - 4`` (about).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def reset_parameters(self) -> None:
        for module in self.children():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x).softmax(1), self.conv4_2(x)


class RNet(nn.Module):
    """MTCNN's refinement network on 24x24 crops.

    Shapes:
        - x: ``(B, 3, 24, 24)`` -> probabilities ``(B, 2)``, box offsets ``(B, 4)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    reset_parameters = PNet.reset_parameters

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))  # (B, 64, 3, 3)
        # The converted dense weights expect the map flattened width-first: (B, W, H, C).
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))  # (B, 128)
        return self.dense5_1(x).softmax(1), self.dense5_2(x)


class ONet(nn.Module):
    """MTCNN's output network on 48x48 crops, with the five landmarks.

    Shapes:
        - x: ``(B, 3, 48, 48)`` -> probabilities ``(B, 2)``, box offsets ``(B, 4)``, landmarks
          ``(B, 10)`` (five x then five y, as fractions of the crop's width and height).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    reset_parameters = PNet.reset_parameters

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))  # (B, 128, 3, 3)
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))  # (B, 256), width-first as in RNet
        return self.dense6_1(x).softmax(1), self.dense6_2(x), self.dense6_3(x)


# -- geometry in torch -------------------------------------------------------------------------


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every box of ``a`` with every box of ``b``.

    Shapes:
        - a: ``(N, 4)``, b: ``(M, 4)`` as ``(x1, y1, x2, y2)`` -> ``(N, M)``.
    """
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    low = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(-1)  # (N, M)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def nms(boxes: Tensor, scores: Tensor, threshold: float, *, groups: Tensor | None = None,
        mode: str = "union") -> Tensor:
    """Greedy non-maximum suppression: keep the best box, drop those overlapping it by more than
    ``threshold``, repeat. Boxes of different ``groups`` (frames) never suppress each other.

    Args:
        boxes: ``(N, 4)`` boxes ``(x1, y1, x2, y2)``.
        scores: ``(N,)``.
        threshold: Overlap above which a box is dropped.
        groups: ``(N,)`` integer group per box; ``None``: one group.
        mode: ``"union"`` (IoU) or ``"min"`` (intersection over the smaller box).

    Returns:
        Indices of the kept boxes, best first, ``(K,)`` ``int64``.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"mode must be 'union' or 'min', got {mode!r}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    if groups is not None:  # shift each group far from the others: one pass handles all
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (groups.to(boxes.dtype) * span)[:, None]
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        if rest.numel() == 0:
            break
        low = torch.maximum(boxes[best, :2], boxes[rest, :2])
        high = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = (high - low).clamp(min=0).prod(-1)
        if mode == "union":
            overlap = inter / (areas[best] + areas[rest] - inter).clamp(min=1e-9)
        else:
            overlap = inter / torch.minimum(areas[best], areas[rest]).clamp(min=1e-9)
        order = rest[overlap <= threshold]
    return torch.stack(keep)


def _square(boxes: Tensor) -> Tensor:
    """Boxes grown to squares of their longer side, about the same centre. ``(N, 4) -> (N, 4)``."""
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def _regress(boxes: Tensor, offsets: Tensor) -> Tensor:
    """Move each corner by its offset, in units of the box's width and height. ``(N, 4)``."""
    size = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)  # (N, 4)
    return boxes + offsets * size


def sample_affine(images: Tensor, index: Tensor, matrices: Tensor, size: int, *, supersample: int = 4) -> Tensor:
    """Crops of ``size x size`` pixels from ``images`` through affine maps, zero outside the image.

    Crop pixel ``(u, v)`` (its centre at ``u + 0.5``) is read at image point ``M @ (u, v, 1)``
    (pixel centres at integer coordinates), bilinearly, on a grid ``supersample`` times finer,
    averaged back to ``size`` (so shrinking a large face does not alias).

    Args:
        images: ``(F, H, W, C)`` float images.
        index: ``(N,)`` which image each crop comes from.
        matrices: ``(N, 2, 3)`` maps from crop pixel coordinates to image coordinates.
        size: Crop side in pixels.
        supersample: Sub-samples per pixel side.

    Returns:
        ``(N, C, size, size)`` crops.
    """
    n = index.shape[0]
    _, height, width, channels = images.shape
    if n == 0:
        return images.new_zeros((0, channels, size, size))
    fine = size * supersample
    t = (torch.arange(fine, dtype=images.dtype) + 0.5) / supersample  # (S,) crop coordinates
    u, v = t[None, :].expand(fine, fine), t[:, None].expand(fine, fine)  # (S, S): column, row
    m = matrices.to(images.dtype)
    x = m[:, 0, 0, None, None] * u + m[:, 0, 1, None, None] * v + m[:, 0, 2, None, None] - 0.5  # (N, S, S)
    y = m[:, 1, 0, None, None] * u + m[:, 1, 1, None, None] * v + m[:, 1, 2, None, None] - 0.5
    # Points outside the frame read a zero border (one pixel before, two after): clamped onto it, both
    # taps of a point outside land in it, or on an edge pixel with weight 0.
    x, y = x.clamp(-1.0, float(width)), y.clamp(-1.0, float(height))
    x0, y0 = x.floor(), y.floor()
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]  # (N, S, S, 1)
    used, frame = torch.unique(index, return_inverse=True)
    padded = nn.functional.pad(images[used], (0, 0, 1, 2, 1, 2))  # (U, H + 3, W + 3, C)
    stride = width + 3
    flat = padded.reshape(-1, channels)  # (U (H + 3) (W + 3), C)
    base = frame[:, None, None] * (height + 3) * stride + (y0.long() + 1) * stride + (x0.long() + 1)  # (N, S, S)

    def tap(offset: int) -> Tensor:
        return flat[base + offset]  # (N, S, S, C)

    crop = ((1 - wy) * ((1 - wx) * tap(0) + wx * tap(1))
            + wy * ((1 - wx) * tap(stride) + wx * tap(stride + 1)))  # (N, S, S, C)
    crop = crop.permute(0, 3, 1, 2)  # (N, C, S, S)
    if supersample > 1:
        crop = nn.functional.avg_pool2d(crop, supersample)  # (N, C, size, size)
    return crop


def _crop_boxes(images: Tensor, index: Tensor, boxes: Tensor, size: int) -> Tensor:
    """``size x size`` crops of ``boxes``, each supersampled as finely as its box needs (1 to 4
    sub-samples per pixel side: a box of side ``k * size`` needs ``k``). ``(N, C, size, size)``."""
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    factor = (side / size).ceil().clamp(1, 4).long()
    crops = images.new_zeros((boxes.shape[0], images.shape[-1], size, size))
    maps = _box_maps(boxes, size)
    for k in factor.unique().tolist():
        chosen = factor == k
        crops[chosen] = sample_affine(images, index[chosen], maps[chosen], size, supersample=int(k))
    return crops


def _box_maps(boxes: Tensor, size: int) -> Tensor:
    """Affine maps from a ``size`` crop to each box. ``(N, 4) -> (N, 2, 3)``."""
    maps = boxes.new_zeros((boxes.shape[0], 2, 3))
    maps[:, 0, 0] = (boxes[:, 2] - boxes[:, 0]) / size
    maps[:, 1, 1] = (boxes[:, 3] - boxes[:, 1]) / size
    maps[:, 0, 2], maps[:, 1, 2] = boxes[:, 0], boxes[:, 1]
    return maps


# -- the detector ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceDetection:
    """One detected face.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels of the frame it was found in.
        score: O-Net's face probability.
        landmarks: ``(5, 2)`` points ``(x, y)``: left eye, right eye, nose, left and right mouth
            corner (left and right as seen in the image).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


class FaceDetector:
    """MTCNN over batches of RGB frames (see the module docstring).

    Args:
        min_face: Smallest face side searched for, in pixels (the pyramid's first scale is
            ``12 / min_face``). Default 40.
        scale_factor: Ratio between pyramid levels. Default 0.709 (the paper's).
        thresholds: Face probability each stage requires. Default ``(0.6, 0.7, 0.7)``.
        nms_thresholds: Overlap above which each stage's NMS drops a box (P-Net within a
            level; P-Net across levels; R-Net; O-Net uses ``"min"`` overlap). Default
            ``(0.5, 0.7, 0.7, 0.7)``.
        weights_dir: Folder holding ``pnet.pt``, ``rnet.pt``, ``onet.pt``; default
            :func:`mtcnn_weights_dir`.

    Shapes:
        detect: ``F`` frames ``(H, W, 3)`` ``uint8`` of one size in, one list of detections per
        frame out (best first).
    """

    def __init__(
        self,
        *,
        min_face: float = 40.0,
        scale_factor: float = 0.709,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        nms_thresholds: Sequence[float] = (0.5, 0.7, 0.7, 0.7),
        weights_dir: str | Path | None = None,
    ) -> None:
        if min_face < 12:
            raise ValueError(f"min_face must be >= 12 pixels (P-Net's window), got {min_face}")
        if not 0.1 < scale_factor < 1:
            raise ValueError(f"scale_factor must be in (0.1, 1), got {scale_factor}")
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities, got {list(thresholds)}")
        if len(nms_thresholds) != 4 or not all(0 < t <= 1 for t in nms_thresholds):
            raise ValueError(f"nms_thresholds must be four overlaps in (0, 1], got {list(nms_thresholds)}")
        self.min_face = float(min_face)
        self.scale_factor = float(scale_factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.nms_thresholds = tuple(float(t) for t in nms_thresholds)
        directory = Path(weights_dir) if weights_dir is not None else mtcnn_weights_dir()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            net.load_state_dict(_load_weights(directory, name), strict=True)
            net.eval()

    @property
    def settings(self) -> dict:
        """Options that change the detections (recorded with the visual extractor)."""
        return {"detector": "mtcnn", "min_face": self.min_face, "scale_factor": self.scale_factor,
                "thresholds": list(self.thresholds), "nms_thresholds": list(self.nms_thresholds)}

    @property
    def version(self) -> str:
        return f"mtcnn {MTCNN_PACKAGE} sha256:{MTCNN_WEIGHTS['onet'][:12]}"

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid: ``12 / min_face`` times ``scale_factor ** k`` while the image stays >= 12 px."""
        scale = 12.0 / self.min_face
        side = min(height, width) * scale
        scales = []
        while side >= 12:
            scales.append(scale)
            scale *= self.scale_factor
            side *= self.scale_factor
        return scales

    @torch.inference_mode()
    def detect(self, frames: Sequence[np.ndarray] | np.ndarray) -> list[list[FaceDetection]]:
        """Faces in each frame (all of one size), best first."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (F, H, W, 3) RGB, got shape {frames.shape}")
        count, height, width, _ = frames.shape
        images = torch.from_numpy(np.ascontiguousarray(frames)).float()  # (F, H, W, 3)
        scaled = (images - 127.5) / 128.0
        batch = scaled.permute(0, 3, 1, 2)  # (F, 3, H, W)

        # Stage 1: P-Net over the pyramid.
        proposals, scores, owners = [], [], []
        for scale in self.scales(height, width):
            size = (max(int(math.ceil(height * scale)), 12), max(int(math.ceil(width * scale)), 12))
            level = nn.functional.interpolate(batch, size=size, mode="area")  # (F, 3, h, w)
            probability, offsets = self.pnet(level)  # (F, 2, h', w'), (F, 4, h', w')
            frame, row, column = torch.nonzero(probability[:, 1] > self.thresholds[0], as_tuple=True)
            if frame.numel() == 0:
                continue
            found = probability[frame, 1, row, column]
            windows = torch.stack([column * 2, row * 2, column * 2 + 12, row * 2 + 12], 1).float() / scale
            windows = _regress(windows, offsets[frame, :, row, column])
            keep = nms(windows, found, self.nms_thresholds[0], groups=frame)
            proposals.append(windows[keep])
            scores.append(found[keep])
            owners.append(frame[keep])
        if not proposals:
            return [[] for _ in range(count)]
        boxes, found, frame = torch.cat(proposals), torch.cat(scores), torch.cat(owners)
        keep = nms(boxes, found, self.nms_thresholds[1], groups=frame)
        boxes, frame = _square(boxes[keep]), frame[keep]

        # Stage 2: R-Net on 24x24 crops.
        crops = _crop_boxes(scaled, frame, boxes, 24)
        probability, offsets = self.rnet(crops)
        passed = probability[:, 1] > self.thresholds[1]
        boxes, found, frame = _regress(boxes[passed], offsets[passed]), probability[passed, 1], frame[passed]
        keep = nms(boxes, found, self.nms_thresholds[2], groups=frame)
        boxes, frame = _square(boxes[keep]), frame[keep]

        # Stage 3: O-Net on 48x48 crops, with the landmarks.
        crops = _crop_boxes(scaled, frame, boxes, 48)
        probability, offsets, points = self.onet(crops)
        passed = probability[:, 1] > self.thresholds[2]
        boxes, offsets, points = boxes[passed], offsets[passed], points[passed]
        found, frame = probability[passed, 1], frame[passed]
        side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)  # (N, 2)
        landmarks = boxes[:, None, :2] + torch.stack([points[:, :5], points[:, 5:]], 2) * side[:, None, :]  # (N, 5, 2)
        boxes = _regress(boxes, offsets)
        keep = nms(boxes, found, self.nms_thresholds[3], groups=frame, mode="min")

        detections: list[list[FaceDetection]] = [[] for _ in range(count)]
        for i in keep.tolist():  # best first
            detections[int(frame[i])].append(FaceDetection(
                box=boxes[i].numpy().astype(np.float32), score=float(found[i]),
                landmarks=landmarks[i].numpy().astype(np.float32)))
        return detections
