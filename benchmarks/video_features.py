"""Visual features from raw video: speed of each stage, and how often faces are found.

On clips rendered like the tests' (``tests/video_fixtures.py``: scikit-image's astronaut photograph
moving and scaling over a background, a clip with a second smaller face, one with a frame
without a face, one without any face), enlarged ``--scale`` times (2: 640x480, about the size of
MELD's 1280x720 clips after redifu's default ``max_side=640``), or on your own clips (``--clips DIR``,
every ``.mp4``/``.mkv``/... in it):

* detection: MTCNN frames/s on the frames the pipeline samples, in batches of ``--batch`` frames,
  and the fraction of sampled frames with a detected face (and, on rendered clips, with the
  pasted face found: the detector's recall there);
* descriptors: aligned faces/s of each descriptor (the built-in ``hog-landmarks``, and a
  TorchScript model: a small CNN with random weights, for its cost only, at 112x112 crops);
* pipeline: utterances/s of ``VisualFeatureExtractor.extract_file`` with an empty cache
  (decode + sample at ``--fps`` + detect + track + align + describe + pool), and the share of
  utterances with no face.

    python benchmarks/video_features.py                  # rendered clips, 2 threads
    python benchmarks/video_features.py --clips MELD.Raw/dev_splits_complete --utterances 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from redifu.features.descriptors import GEOMETRY_SIZE, HogLandmarkDescriptor, TorchScriptDescriptor  # noqa: E402
from redifu.features.faces import FaceDetector, sample_affine  # noqa: E402
from redifu.features.video import VIDEO_SUFFIXES, VisualFeatureExtractor, read_frames  # noqa: E402

LAYOUTS = ("moving", "pair", "gap", "empty")


def render_clips(folder: Path, *, count: int, frames: int, scale: int) -> tuple[list[Path], dict[Path, list]]:
    """``count`` clips cycling through the test layouts, and the pasted face boxes per frame of each."""
    sys.path.insert(0, str(ROOT / "tests"))
    from video_fixtures import RATE, scene, write_clip

    clips, truth = [], {}
    for index in range(count):
        layout = LAYOUTS[index % len(LAYOUTS)]
        images, boxes = scene(layout, frames=frames, seed=index)  # distinct files: no cache hits
        if scale > 1:
            images = images.repeat(scale, axis=1).repeat(scale, axis=2)  # (T, H s, W s, 3)
            boxes = [[tuple(v * scale for v in box) for box in frame] for frame in boxes]
        path = write_clip(folder / f"{index:03d}-{layout}.mp4", images)
        clips.append(path)
        truth[path] = (boxes, RATE)
    return clips, truth


class _SmallFaceNet(torch.nn.Module):
    """A ResNet-stem-sized CNN (random weights): what a small face model costs per crop."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = 3
        for out in (32, 64, 128, 256):
            layers += [torch.nn.Conv2d(width, out, 3, stride=2, padding=1), torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
            width = out
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3))  # (B, 256)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def measure(clips: Sequence[Path], truth: dict, *, fps: float, batch: int, workdir: Path) -> dict[str, Any]:
    detector = FaceDetector()
    sampled = []  # (clip, frames, times)
    for clip in clips:
        frames, times = read_frames(clip, fps=fps)
        sampled.append((clip, frames, times))
    total = sum(len(frames) for _, frames, _ in sampled)

    detector.detect(sampled[0][1][:1])  # warm-up
    started = time.perf_counter()
    detections = []
    for _, frames, _ in sampled:
        for first in range(0, len(frames), batch):
            detections.extend(detector.detect(frames[first:first + batch]))
    detect_seconds = time.perf_counter() - started
    with_face = sum(bool(d) for d in detections)
    recall = None
    if truth:
        found = expected = 0
        position = 0
        for clip, frames, times in sampled:
            boxes, rate = truth[clip]
            for at in times:
                pasted = boxes[min(int(round(at * rate)), len(boxes) - 1)]
                got = detections[position]
                position += 1
                for box in pasted:
                    expected += 1
                    found += any(_iou(d.box, box) > 0.5 for d in got)
        recall = found / max(expected, 1)

    # Descriptors on the aligned faces of every detection.
    faces = [(frames, index, face) for (_, frames, _), start in zip(sampled, np.cumsum([0] + [len(f) for _, f, _ in sampled]))
             for index in range(len(frames)) for face in detections[start + index]]
    descriptors = {"hog-landmarks": HogLandmarkDescriptor()}
    script = workdir / "small-face-net.pt"
    torch.jit.save(torch.jit.script(_SmallFaceNet().eval()), str(script))
    descriptors["torchscript (small CNN, 112 px)"] = TorchScriptDescriptor(script, trust=True)
    rates = {}
    from redifu.features.descriptors import FACE_TEMPLATE, similarity_transform

    for name, descriptor in descriptors.items():
        size = descriptor.crop_size
        started = time.perf_counter()
        count = 0
        for frames, index, face in faces:
            matrix = similarity_transform(face.landmarks, FACE_TEMPLATE)
            inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2] @ np.diag([1 / size, 1 / size, 1])
            crop = sample_affine(torch.from_numpy(frames[index:index + 1]).float(), torch.tensor([0]),
                                 torch.from_numpy(inverse[None]), size)
            descriptor.describe(crop, np.zeros((1, GEOMETRY_SIZE), np.float32))
            count += 1
        seconds = time.perf_counter() - started
        rates[name] = {"faces": count, "faces_per_s": count / seconds if seconds else None,
                       "dimension": 3 * descriptor.dimension + 1}

    extractor = VisualFeatureExtractor(fps=fps, cache_dir=workdir / "cache", detector=detector, batch_frames=batch)
    started = time.perf_counter()
    missing = sum(extractor.extract_file(clip) is None for clip in clips)
    pipeline_seconds = time.perf_counter() - started
    return {
        "machine": bc.machine(), "clips": len(clips), "frame_size": list(sampled[0][1].shape[1:3]),
        "settings": {"fps": fps, "batch_frames": batch, **{k: v for k, v in extractor.settings.items()
                                                             if k in ("max_frames", "max_side", "detector")}},
        "detection": {"frames": total, "frames_per_s": total / detect_seconds, "with_face": with_face / total,
                      "pasted_faces_found": recall},
        "descriptors": rates,
        "pipeline": {"utterances": len(clips), "utterances_per_s": len(clips) / pipeline_seconds,
                     "seconds": pipeline_seconds, "no_face": missing / len(clips)},
    }


def report(result: dict[str, Any], *, threads: int) -> str:
    detection, pipeline = result["detection"], result["pipeline"]
    settings = result["settings"]
    lines = [bc.machine_line(result["machine"]),
             f"settings: {result['clips']} clips, frames {result['frame_size'][1]}x{result['frame_size'][0]} after "
             f"max_side={settings['max_side']}, {settings['fps']:g} frames/s sampled (at most {settings['max_frames']}), "
             f"detector batches of {settings['batch_frames']} frames, MTCNN min_face={settings['detector']['min_face']:g}, "
             f"{threads} threads", ""]
    recall = detection["pasted_faces_found"]
    lines.append(bc.table(["stage", "rate", "notes"], [
        ["detection (MTCNN)", f"{detection['frames_per_s']:.1f} frames/s",
         f"{detection['frames']} sampled frames, {100 * detection['with_face']:.0f}% with a detected face"
         + (f", {100 * recall:.0f}% of the pasted faces found" if recall is not None else "")],
        *[[f"descriptor {name}", f"{r['faces_per_s']:.0f} faces/s", f"{r['faces']} aligned faces, {r['dimension']}-d pooled"]
          for name, r in result["descriptors"].items()],
        ["whole pipeline (hog-landmarks)", f"{pipeline['utterances_per_s']:.2f} utterances/s",
         f"{pipeline['utterances']} clips, empty cache, {100 * pipeline['no_face']:.0f}% without a face"],
    ]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, help="a folder of your own video clips (default: rendered test clips)")
    parser.add_argument("--utterances", type=int, default=24, help="clips to use (default 24)")
    parser.add_argument("--frames", type=int, default=30, help="frames per rendered clip at 10 frames/s (default 30)")
    parser.add_argument("--scale", type=int, default=2, help="rendered clips are 320x240 times this (default 2)")
    parser.add_argument("--fps", type=float, default=3.0, help="frames sampled per second (default 3)")
    parser.add_argument("--batch", type=int, default=8, help="frames per detector batch (default 8)")
    parser.add_argument("--quick", action="store_true", help="4 small clips (the smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.utterances, args.frames, args.scale = 4, 10, 1
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(temporary)
        if args.clips is not None:
            clips = sorted(p for p in args.clips.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)[:args.utterances]
            if not clips:
                parser.error(f"--clips {args.clips}: no video files")
            truth = {}
        else:
            clips, truth = render_clips(workdir, count=args.utterances, frames=args.frames, scale=args.scale)
        result = measure(clips, truth, fps=args.fps, batch=args.batch, workdir=workdir)
    return bc.finish(args, result, report(result, threads=args.threads))


if __name__ == "__main__":
    sys.exit(main())
