"""Faces in video: MTCNN on scikit-image's photographs, tracking the speaker's face in rendered
clips, aligned descriptors, pooling, the cache, the missing-face treatment and `features extract`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from video_fixtures import FACE_BOX, needs_faces, scene, write_clip

pytest.importorskip("skimage", reason="needs scikit-image (its sample photographs): pip install 'redifu[video]'")

from redifu.errors import DataError  # noqa: E402
from redifu.features.descriptors import (  # noqa: E402
    FACE_TEMPLATE,
    GEOMETRY_SIZE,
    HogLandmarkDescriptor,
    TorchScriptDescriptor,
    build_descriptor,
    similarity_transform,
)
from redifu.features.faces import ONet, PNet, RNet, box_iou, nms, sample_affine  # noqa: E402
from redifu.features.video import FaceTrack, choose_track, track_faces  # noqa: E402


def _iou(a, b) -> float:
    pair = torch.tensor(np.asarray([a, b], dtype=np.float32))
    return float(box_iou(pair[:1], pair[1:])[0, 0])


# -- geometry and the networks (no weights needed) -----------------------------------------------


@pytest.mark.parametrize("mode", ["union", "min"])
def test_nms_matches_a_brute_force_greedy_pass(mode):
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(60, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 10 + torch.rand(60, 2, generator=generator) * 30], 1)
    scores = torch.rand(60, generator=generator)
    groups = torch.randint(0, 3, (60,), generator=generator)
    kept = nms(boxes, scores, 0.4, groups=groups, mode=mode).tolist()
    expected, alive = [], sorted(range(60), key=lambda i: -float(scores[i]))
    while alive:
        best = alive.pop(0)
        expected.append(best)
        survivors = []
        for other in alive:
            a, b = boxes[best], boxes[other]
            inter = (min(a[2], b[2]) - max(a[0], b[0])).clamp(min=0) * (min(a[3], b[3]) - max(a[1], b[1])).clamp(min=0)
            area = lambda box: float((box[2] - box[0]) * (box[3] - box[1]))  # noqa: E731
            overlap = inter / (area(a) + area(b) - inter) if mode == "union" else inter / min(area(a), area(b))
            if groups[best] != groups[other] or overlap <= 0.4:
                survivors.append(other)
        alive = survivors
    assert kept == expected
    assert len(kept) < 60  # something was suppressed: the test can fail


def test_similarity_transform_recovers_rotation_scale_and_shift():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = FACE_TEMPLATE * 100
    target = source @ (scale * rotation).T + shift
    matrix = similarity_transform(source, target)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_sample_affine_reads_the_box_it_is_given():
    image = torch.arange(40 * 50, dtype=torch.float32).reshape(1, 40, 50, 1)  # value = 50 y + x
    maps = torch.tensor([[[1.0, 0.0, 10.0], [0.0, 1.0, 5.0]]])  # identity scale, shifted by (10, 5)
    crop = sample_affine(image, torch.tensor([0]), maps, 8, supersample=1)  # (1, 1, 8, 8)
    expected = torch.arange(8)[None, :] + 10 + 50 * (torch.arange(8)[:, None] + 5)
    torch.testing.assert_close(crop[0, 0], expected.float())
    outside = sample_affine(image, torch.tensor([0]), torch.tensor([[[1.0, 0, 100.0], [0, 1.0, 100.0]]]), 4)
    assert float(outside.abs().max()) == 0.0  # zero outside the frame


@pytest.mark.parametrize(("net", "size", "outputs"), [(PNet, 12, 2), (RNet, 24, 2), (ONet, 48, 3)])
def test_networks_shapes_and_finite_init(net, size, outputs):
    model = net()
    model.reset_parameters()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    result = model(torch.randn(2, 3, size, size))
    assert len(result) == outputs
    torch.testing.assert_close(result[0].sum(1), torch.ones(2) if net is not PNet else torch.ones(2, 1, 1))
    sum(r.sum() for r in result).backward()


def test_tracking_picks_the_largest_steady_face_and_splits_at_a_cut():
    class Face:
        def __init__(self, x, side):
            self.box = np.array([x, 10, x + side, 10 + side], dtype=np.float32)
            self.area = side * side

    big = [Face(20 + 4 * i, 60) for i in range(4)]
    small = [Face(200, 30) for _ in range(6)]
    after_cut = [Face(120, 70), Face(122, 70)]  # another shot: larger, but seen in two frames only
    frames = [[small[i], big[i]] for i in range(4)] + [[small[4], after_cut[0]], [small[5], after_cut[1]]]
    tracks = track_faces(frames, iou=0.3)
    assert len(tracks) == 3
    chosen = choose_track(tracks)
    assert chosen.faces == {0: 1, 1: 1, 2: 1, 3: 1}
    assert choose_track([]) is None and isinstance(chosen, FaceTrack)


def test_descriptor_options_are_validated():
    with pytest.raises(ValueError, match="cell"):
        HogLandmarkDescriptor(crop_size=64, cell=10)
    with pytest.raises(ValueError, match="face descriptor 'sift'"):
        build_descriptor({"descriptor": "sift"})
    assert HogLandmarkDescriptor().dimension == 3 * 3 * 4 * 9 + GEOMETRY_SIZE


class _TinyFaceNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))  # (B, 6)


def test_torchscript_descriptor_needs_trust_and_the_recorded_file(tmp_path):
    path = tmp_path / "face.pt"
    torch.jit.save(torch.jit.script(_TinyFaceNet()), str(path))
    with pytest.raises(ValueError, match="runs the code saved in it"):
        TorchScriptDescriptor(path)
    descriptor = TorchScriptDescriptor(path, trust=True, crop_size=32)
    assert descriptor.dimension == 6 and descriptor.name.startswith("torchscript:")
    crops = torch.rand(5, 3, 32, 32) * 255
    out = descriptor.describe(crops, np.zeros((5, GEOMETRY_SIZE), np.float32))
    assert out.shape == (5, 6)
    np.testing.assert_allclose(out[2], descriptor.describe(crops[2:3], np.zeros((1, GEOMETRY_SIZE)))[0], rtol=1e-5)
    rebuilt = build_descriptor(descriptor.settings, trust_torchscript=True)
    assert rebuilt.name == descriptor.name
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten())), str(path))
    with pytest.raises(ValueError, match="is not the recorded"):
        build_descriptor(descriptor.settings, trust_torchscript=True)


# -- detection on real faces ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector():
    needs_faces()
    from redifu.features.faces import FaceDetector

    return FaceDetector()


def test_mtcnn_finds_the_astronauts_face_and_its_landmarks(detector):
    from skimage import data

    [faces] = detector.detect(data.astronaut())
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.95 and _iou(face.box, FACE_BOX) > 0.4
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    x1, y1, x2, y2 = face.box
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks)
    # Batched frames give the same detections as one frame at a time.
    coffee = np.zeros_like(data.astronaut())
    coffee[:400] = data.coffee()[:, :512]
    [again, none] = detector.detect(np.stack([data.astronaut(), coffee]))
    np.testing.assert_allclose(again[0].box, face.box, atol=1e-3)
    assert none == []  # a cup of coffee has no face


def test_weights_with_another_hash_are_refused(tmp_path):
    needs_faces()
    from redifu.features.faces import FaceDetector, mtcnn_weights_dir

    for name in ("pnet", "rnet", "onet"):
        (tmp_path / f"{name}.pt").write_bytes((mtcnn_weights_dir() / f"{name}.pt").read_bytes())
    (tmp_path / "rnet.pt").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="rnet.pt: SHA-256 .* is not the pinned"):
        FaceDetector(weights_dir=tmp_path)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    needs_faces()
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for kind in ("moving", "gap", "pair", "empty"):
        frames, boxes = scene(kind)
        made[kind] = write_clip(folder / f"{kind}.mp4", frames)
        made[kind + "-boxes"] = boxes
    return made


@pytest.fixture
def extractor(tmp_path, detector):
    from redifu.features.video import VisualFeatureExtractor

    return VisualFeatureExtractor(detector=detector, cache_dir=tmp_path / "cache", fps=10.0)


def test_detection_finds_the_face_in_every_frame_that_has_one(extractor, clips):
    faces = extractor.analyse(clips["gap"])
    boxes = clips["gap-boxes"]
    assert faces.frames == 20  # 10 frames/s of a 2 s clip
    for frame, (found, pasted) in enumerate(zip(faces.detections, boxes)):
        assert len(found) == len(pasted), frame
        if pasted:
            assert _iou(found[0].box, pasted[0]) > 0.5, frame
    assert faces.face_frames == 19 and 10 not in faces.track.faces  # the track goes on past the empty frame
    assert faces.features[-1] == pytest.approx(19 / 20)  # coverage


def test_the_chosen_face_is_the_large_tracked_one(extractor, clips):
    faces = extractor.analyse(clips["pair"])
    boxes = clips["pair-boxes"]
    assert sum(len(d) == 2 for d in faces.detections) >= 18  # both faces seen
    for frame, index in faces.track.faces.items():
        assert _iou(faces.detections[frame][index].box, boxes[frame][0]) > 0.5
    assert faces.face_frames == 20
    alone = extractor.analyse(clips["moving"])
    assert not np.allclose(alone.features, faces.features)  # a different clip, not a constant


def test_features_have_the_declared_size_and_are_cached(extractor, clips):
    info = extractor.info
    assert info.name == "hog-landmarks" and info.dimension == 3 * 341 + 1
    assert info.settings["fps"] == 10.0 and info.settings["detector"]["detector"] == "mtcnn"
    features = extractor.extract_file(clips["moving"])
    assert features.shape == (info.dimension,) and features.dtype == np.float32 and np.isfinite(features).all()
    assert extractor.extractions == 1
    again = extractor.extract_file(clips["moving"])
    assert extractor.extractions == 1  # from the cache
    np.testing.assert_array_equal(features, again)
    segment = extractor.extract_file(clips["moving"], 0.0, 1.0)
    assert extractor.extractions == 2 and not np.allclose(segment, features)


def test_a_clip_without_a_face_gives_no_vector_even_from_the_cache(extractor, clips):
    assert extractor.extract_file(clips["empty"]) is None
    assert extractor.extract_file(clips["empty"]) is None
    assert extractor.extractions == 1 and extractor.missing == 2


def test_unreadable_video_fails_in_one_line(extractor, clips, tmp_path):
    with pytest.raises(DataError, match="video file not found") as error:
        extractor.extract_file(tmp_path / "nothing.mp4")
    assert "\n" not in str(error.value)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="broken.mp4: cannot read the video file"):
        extractor.extract_file(broken)
    with pytest.raises(DataError, match="segment end"):
        extractor.extract_file(clips["moving"], 1.5, 1.0)


# -- rows: features extract, the missing flag and the extractor check ------------------------------


def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_features_extract_writes_visual_vectors_and_flags_faceless_rows(clips, tmp_path, capsys):
    from redifu.cli import main
    from redifu.predict.rows import read_conversations

    source = _rows(tmp_path / "in.jsonl", [
        {"dialogue_id": "d", "utterance": 0, "speaker": "A", "text": "hi", "video_path": str(clips["moving"])},
        {"dialogue_id": "d", "utterance": 1, "speaker": "B", "text": "yo", "video_path": str(clips["empty"])},
        {"dialogue_id": "d", "utterance": 2, "speaker": "A", "text": "so", "video_path": str(clips["pair"]),
         "start": 0.5, "end": 1.5}])
    output = tmp_path / "out.jsonl"
    assert main(["features", "extract", str(source), "--output", str(output), "--modalities", "visual",
                 "--cache-dir", str(tmp_path / "cache"), "--video-fps", "2"]) == 0
    assert "no face found in 1 utterances" in capsys.readouterr().err
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows[0]["visual_extractor"] == "hog-landmarks" and rows[0]["visual_npy"].endswith("d_0_visual.npy")
    assert rows[1]["visual_missing"] == "no face found" and "visual_npy" not in rows[1]
    assert rows[2]["start"] == 0.5 and rows[2]["end"] == 1.5 and rows[2]["video_path"].endswith("pair.mp4")
    assert np.load(tmp_path / rows[0]["visual_npy"]).shape == (1024,)
    [dialogue] = list(read_conversations(output))
    assert dialogue[1].missing == {"visual": "no face found"} and "visual" not in dialogue[1].features
    # A model's reader puts its training mean in place of the missing vector.
    mean = np.full(1024, 0.25, np.float32)
    [dialogue] = list(read_conversations(output, feature_dims={"text": 4, "visual": 1024},
                                         extractors={"visual": {"name": "hog-landmarks"}},
                                         missing_fill={"visual": mean}))
    np.testing.assert_array_equal(dialogue[1].features["visual"], mean)


def test_a_model_trained_on_one_descriptor_refuses_another(clips, tmp_path):
    from redifu.predict.compatibility import visual_extractor_for
    from redifu.predict.rows import read_conversations

    vector = tmp_path / "v.npy"
    np.save(vector, np.zeros(1024, np.float32))
    source = _rows(tmp_path / "in.jsonl", [{"dialogue_id": "d", "utterance": 0, "speaker": "A", "text": "hi",
                                            "visual_npy": "v.npy", "visual_extractor": "hog-landmarks"}])
    recorded = {"name": "torchscript:0123456789abcdef", "dimension": 1024,
                "settings": {"descriptor": "torchscript", "path": str(tmp_path / "gone.pt")}}
    with pytest.raises(DataError, match="field 'visual_extractor': features from 'hog-landmarks', but the model "
                                        "was trained on visual features from 'torchscript:0123456789abcdef'"):
        list(read_conversations(source, feature_dims={"text": 4, "visual": 1024}, extractors={"visual": recorded}))
    with pytest.raises(ValueError, match="runs the code saved in it"):
        visual_extractor_for({**recorded, "settings": {**recorded["settings"], "path": str(vector)}})
    reported = {"name": "DenseNet (MELD authors)", "verified": False, "settings": {}}
    with pytest.raises(ValueError, match="which redifu cannot compute"):
        visual_extractor_for(reported)
    video = _rows(tmp_path / "video.jsonl", [{"dialogue_id": "d", "utterance": 0, "speaker": "A", "text": "hi",
                                              "video_path": str(clips["moving"])}])
    with pytest.raises(DataError, match="field 'video_path': the model was trained on visual features from "
                                        "'DenseNet"):
        list(read_conversations(video, feature_dims={"text": 4, "visual": 1024}, extractors={"visual": reported}))


def test_video_path_rows_with_start_and_end_use_the_recorded_extractor(extractor, clips, tmp_path):
    """One video file per dialogue, each utterance a segment: the reader rebuilds the recorded
    extractor (its sampling, detector and descriptor settings) and describes each segment."""
    from dataclasses import asdict

    from redifu.predict.rows import read_conversations

    recorded = asdict(extractor.info)
    source = _rows(tmp_path / "in.jsonl", [
        {"dialogue_id": "d", "utterance": 0, "speaker": "A", "text": "hi", "video_path": str(clips["gap"]),
         "start": 0.0, "end": 0.8},
        {"dialogue_id": "d", "utterance": 1, "speaker": "B", "text": "yo", "video_path": str(clips["gap"]),
         "start": "00:00:00,800", "end": "00:00:02,000"}])
    [dialogue] = list(read_conversations(source, feature_dims={"text": 4, "visual": recorded["dimension"]},
                                         extractors={"visual": recorded}, missing_fill={"visual": np.zeros(1024)}))
    fresh = extractor.__class__(detector=extractor.detector, cache_dir=tmp_path / "fresh", fps=10.0)
    np.testing.assert_allclose(dialogue[0].features["visual"], fresh.extract_file(clips["gap"], 0.0, 0.8), rtol=1e-6)
    np.testing.assert_allclose(dialogue[1].features["visual"], fresh.extract_file(clips["gap"], 0.8, 2.0), rtol=1e-6)
    assert dialogue[0].extractors["visual"] == "hog-landmarks"
    assert dialogue[1].features["visual"][-1] == pytest.approx(11 / 12)  # 12 frames, the empty one among them
