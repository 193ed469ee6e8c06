"""Checks on the real evaluation data in ../shared/data (skipped cleanly when it is absent)."""
from pathlib import Path

import pytest

from roma_sfm.pipelines import evaluate, match
from roma_sfm.pipelines import matchers

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
PAIRS = DATA / "pairs" / "strecha_gap3.txt"
SCENES = DATA / "scenes"

pytestmark = pytest.mark.skipif(not PAIRS.is_file() or not SCENES.is_dir(),
                                reason=f"shared evaluation data not found at {DATA.resolve()}")


def test_poses_gt_parse():
    for gt in sorted(SCENES.glob("*/poses_gt.txt")):
        cams = evaluate.read_poses_gt(gt)
        assert len(cams) >= 8
        for name, c in cams.items():
            assert (gt.parent / "images" / name).is_file()
            assert abs(abs(float(__import__("numpy").linalg.det(c.R))) - 1) < 1e-6


def test_sift_pose_auc_on_a_few_gt_pairs(tmp_path):
    """SIFT matches of 4 GT pairs scored like the README's baseline (E-matrix RANSAC at 0.5 px)."""
    lines = [l for l in PAIRS.read_text().splitlines() if l.startswith("strecha-fountain-P11")][:4]
    sub = tmp_path / "pairs.txt"
    sub.write_text("\n".join(lines) + "\n")
    m = matchers.SiftMatcher(max_features=4000)
    res = evaluate.evaluate_matches(lambda a, b: m.match(SCENES / a, SCENES / b).sample(100000), sub)
    assert res["pairs"] == 4 and res["auc@20"] > 60, res
