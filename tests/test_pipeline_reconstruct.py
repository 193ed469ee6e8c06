"""reconstruct.main bookkeeping: report.json times, matcher config, stale outputs, default cell size."""
import json

import cv2
import h5py
import pytest

from roma_sfm.pipelines import match, reconstruct
from synthetic import LabelledSift, random_texture

STEPS = ("scan", "pairs", "match", "tracks", "mapping", "export")


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    """Three images that do not overlap: matching works, verification fails (a cheap failed run)."""
    d = tmp_path_factory.mktemp("textures")
    for i in range(3):
        cv2.imwrite(str(d / f"{i}.png"), random_texture(240, 320, seed=100 + i))
    return d


def _run(images, out, matcher="sift", **kw):
    return reconstruct.main(images, out, matcher=matcher, progress=False, num_threads=1, **kw)


def test_report_json_times_include_export(textures, tmp_path):
    rep = _run(textures, tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["status"] == "failed" and "overlap" in on_disk["message"]
    times = on_disk["times"]
    assert set(STEPS) <= set(times), times
    assert times["total"] >= sum(times[k] for k in STEPS) > 0
    assert on_disk["times"] == rep["times"]


def test_report_json_times_of_an_early_failure(tmp_path):
    (tmp_path / "imgs").mkdir()
    _run(tmp_path / "imgs", tmp_path / "out")
    times = json.loads((tmp_path / "out" / "report.json").read_text())["times"]
    assert "export" in times and times["total"] >= times["scan"] + times["export"]


class FakeRoma:
    """A loaded matcher object as ``roma_sfm.load_matcher`` returns (only what the report reads)."""

    name, coarse_res, upsample_res, symmetric = "roma-fake", (56, 70), None, False

    def match(self, a, b):
        raise AssertionError("not reached: the image folder is empty")


def test_matcher_object_in_report_config(tmp_path):
    (tmp_path / "imgs").mkdir()
    rep = _run(tmp_path / "imgs", tmp_path / "out", matcher=FakeRoma())
    cfg = json.loads((tmp_path / "out" / "report.json").read_text())["config"]
    assert cfg["matcher"] == "roma-fake" and cfg["coarse_res"] == [56, 70]
    assert cfg["upsample_res"] is None and cfg["symmetric"] is False
    assert rep["config"]["matcher"] == "roma-fake"
    assert _run(tmp_path / "imgs", tmp_path / "out2", matcher="sift")["config"]["matcher"] == "sift"


def test_failed_rerun_leaves_no_stale_outputs(textures, tmp_path):
    out = tmp_path / "out"
    _run(textures, out)
    # what a successful earlier run into this folder left behind
    stale = [out / "sparse" / "0" / "cameras.bin", out / "points.ply", out / "preview.png",
             out / "sfm" / "models" / "3" / "images.bin", out / "matches" / "old__pair.png"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"stale")
    rep = _run(textures, out)
    assert rep["status"] == "failed" and json.loads((out / "report.json").read_text())["status"] == "failed"
    left = [str(p.relative_to(out)) for p in stale if p.exists()]
    assert not left, left
    assert not (out / "sparse" / "0").exists() and not (out / "sfm" / "models" / "3").exists()
    # matches.h5 is resumable and stays
    assert rep["match"]["pairs_resumed"] == 3 and rep["match"]["pairs_matched"] == 0


def test_stale_outputs_never_inside_the_image_folder(tmp_path):
    (tmp_path / "preview.png").write_bytes(b"a user image")
    removed = reconstruct.clear_stale_outputs(tmp_path, images=tmp_path)
    assert (tmp_path / "preview.png").exists() and removed == []


def test_default_cell_size_follows_the_matches_file(textures, tmp_path):
    rep = _run(textures, tmp_path, matcher=LabelledSift("sparse", "wrapped-sift"))
    assert rep["match"]["kind"] == "sparse" and rep["config"]["cell_size"] == 2.0
    with h5py.File(tmp_path / "matches.h5", "r") as f:
        assert f.attrs["kind"] == "sparse" and f.attrs["matcher"] == "wrapped-sift"


def test_pair_gate_is_reported_and_explains_an_empty_result(tmp_path):
    from synthetic import HomographyMatcher, make_homography_scene

    Hs = make_homography_scene(tmp_path / "imgs", num_images=3, size=(240, 180), seed=2)
    fake = HomographyMatcher(Hs, (240, 180))  # dense, every certainty 1
    rep = _run(tmp_path / "imgs", tmp_path / "a", matcher=fake, num_samples=2000, min_pair_score=0.5)
    assert rep["config"]["min_pair_score"] == 0.5 and rep["tracks"]["pairs_rejected"] == []
    rep = _run(tmp_path / "imgs", tmp_path / "b", matcher=fake, num_samples=2000, min_pair_score=1.5)
    assert rep["status"] == "failed" and "left out" in rep["message"] and "overlap" in rep["message"]
    assert sorted(tuple(p[:2]) for p in rep["tracks"]["pairs_rejected"]) == [
        ("000.png", "001.png"), ("000.png", "002.png"), ("001.png", "002.png")]
    default = _run(tmp_path / "imgs", tmp_path / "c", matcher="sift")  # sift: the sparse conf, gate off
    assert default["config"]["min_pair_score"] == 0.0
