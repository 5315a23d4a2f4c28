"""The video feature benchmark runs end to end on rendered clips and reports every stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from video_fixtures import needs_faces

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.integration
def test_quick_video_benchmark_measures_every_stage(tmp_path, capsys):
    needs_faces()
    import video_features

    out = tmp_path / "video.json"
    assert video_features.main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for stage in ("detection (MTCNN)", "descriptor hog-landmarks", "descriptor torchscript", "whole pipeline"):
        assert stage in text
    result = json.loads(out.read_text())
    assert result["clips"] == 4 and result["detection"]["frames"] > 0
    assert result["detection"]["frames_per_s"] > 0 and result["pipeline"]["utterances_per_s"] > 0
    # The quick clips cycle through moving, pair, gap, empty: one in four has no face at all.
    assert result["pipeline"]["no_face"] == pytest.approx(0.25)
    assert 0.5 < result["detection"]["with_face"] < 1.0 and result["detection"]["pasted_faces_found"] > 0.9
    assert result["descriptors"]["hog-landmarks"]["dimension"] == 1024
