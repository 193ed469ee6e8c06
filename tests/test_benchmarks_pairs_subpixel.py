"""benchmarks/retrieval.py and benchmarks/subpixel.py: covisibility ground truth and recall bookkeeping
on constructed inputs, the README tables, and (when ../shared/data is present) the GT model of the
smallest Strecha scene."""
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from bench_loader import load as load_benchmark

from roma_sfm.pipelines import pairs as P
from synthetic import make_homography_scene



retrieval = load_benchmark("retrieval")
subpixel = load_benchmark("subpixel")
SCENE = retrieval.DATA / "scenes" / "strecha-Herz-Jesus-P8"
needs_scene = pytest.mark.skipif(not (SCENE / "poses_gt.txt").is_file(),
                                 reason=f"shared evaluation data not found at {SCENE}")


def test_covisibility_counts_and_threshold():
    # points seen by: a,b,c (x2), a,b, c,d (x3), d alone, b twice in one track (counted once)
    vis = [["a", "b", "c"], ["c", "b", "a"], ["a", "b"], ["c", "d"], ["d", "c"], ["c", "d"], ["d"], ["b", "b", "a"]]
    counts = retrieval.covisibility_counts(vis)
    assert counts == Counter({("a", "b"): 4, ("a", "c"): 2, ("b", "c"): 2, ("c", "d"): 3})
    assert retrieval.covisible_pairs(counts, 3) == {("a", "b"), ("c", "d")}
    assert retrieval.covisible_pairs(counts, 2) == {("a", "b"), ("a", "c"), ("b", "c"), ("c", "d")}
    assert retrieval.covisible_pairs(counts, 5) == set()


def _tiny_reconstruction() -> pycolmap.Reconstruction:
    """3 images; point 1 seen by images 1, 2, 3, point 2 by 1 and 3, point 3 by 2 only."""
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=100, height=80, camera_id=1,
                                                    params=[50, 50, 50, 40]))
    for i in (1, 2, 3):
        image = pycolmap.Image(name=f"im{i}.jpg", keypoints=np.array([[10.0, 10.0], [20.0, 20.0]]),
                               camera_id=1, image_id=i)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), [0.1 * i, 0, 0]))
    for obs in ([(1, 0), (2, 0), (3, 0)], [(1, 1), (3, 1)], [(2, 1)]):
        track = pycolmap.Track()
        for image_id, idx in obs:
            track.add_element(image_id, idx)
        rec.add_point3D(np.array([0.0, 0.0, 5.0]), track)
    return rec


def test_point_visibility_of_a_reconstruction():
    vis = retrieval.point_visibility(_tiny_reconstruction())
    assert sorted(sorted(v) for v in vis) == [["im1.jpg", "im2.jpg", "im3.jpg"], ["im1.jpg", "im3.jpg"], ["im2.jpg"]]
    counts = retrieval.covisibility_counts(vis)
    assert retrieval.covisible_pairs(counts, 2) == {("im1.jpg", "im3.jpg")}
    assert counts[("im1.jpg", "im2.jpg")] == 1 and counts[("im2.jpg", "im3.jpg")] == 1


def test_colmap_camera_shifts_the_principal_point_by_half_a_pixel():
    K = np.array([[600.0, 0, 383.5], [0, 610.0, 255.5], [0, 0, 1]])
    cam = retrieval.colmap_camera(K, 768, 512, 7)
    X = np.array([[0.3, -0.2, 2.0]])
    x_int = (K @ X[0])[:2] / X[0, 2]  # pixel centres at integers
    assert np.allclose(cam.img_from_cam(X)[0], x_int + 0.5)
    assert cam.camera_id == 7 and cam.has_prior_focal_length


def test_recall_bookkeeping_and_oracle():
    names = ["a", "b", "c", "d"]
    counts = Counter({("a", "b"): 100, ("a", "c"): 60, ("b", "c"): 10, ("c", "d"): 70})
    assert retrieval.oracle_pairs(names, counts, 1) == [("a", "b"), ("c", "d")]
    assert set(retrieval.oracle_pairs(names, counts, 3)) == set(P.pairs_exhaustive(names))
    gt = {"loose": retrieval.covisible_pairs(counts, 50), "strict": retrieval.covisible_pairs(counts, 80)}
    assert retrieval.recall_hits([("b", "a"), ("b", "d")], gt["loose"]) == 1  # order within a pair ignored
    # descriptors: a ~ b, c ~ d
    desc = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    res = retrieval.score_methods(names, desc, counts, gt, top_k=(1, 20), min_images_for_20=5)
    assert set(res) == {"top-1", "oracle-1", "sequential"}  # top-20 needs more images
    assert res["top-1"] == {"pairs": 2, "hits": {"loose": 2, "strict": 1}}  # (a, b), (c, d)
    assert res["oracle-1"]["hits"] == {"loose": 2, "strict": 1}
    assert res["sequential"] == {"pairs": 6, "hits": {"loose": 3, "strict": 1}}  # window 5: every pair
    assert P.retrieval_recall(P.pairs_retrieval(names, desc, 1), gt["loose"]) == 2 / 3


def _result(name, images, gt, methods):
    return retrieval.SceneResult(name, images, gt, methods)


def test_pooled_rows_and_table(tmp_path):
    r1 = _result("s1", 8, {"loose": 20, "strict": 10},
                 {"top-5": {"pairs": 20, "hits": {"loose": 10, "strict": 8}},
                  "oracle-5": {"pairs": 20, "hits": {"loose": 15, "strict": 10}},
                  "sequential": {"pairs": 25, "hits": {"loose": 18, "strict": 9}}})
    r2 = _result("s2", 25, {"loose": 100, "strict": 0},
                 {"top-5": {"pairs": 70, "hits": {"loose": 50, "strict": 0}},
                  "oracle-5": {"pairs": 70, "hits": {"loose": 61, "strict": 0}},
                  "top-20": {"pairs": 250, "hits": {"loose": 99, "strict": 0}},
                  "oracle-20": {"pairs": 250, "hits": {"loose": 100, "strict": 0}},
                  "sequential": {"pairs": 130, "hits": {"loose": 40, "strict": 0}}})
    all_ = retrieval.pooled([r1, r2])
    assert all_.images == 33 and all_.gt == {"loose": 120, "strict": 10}
    assert "top-20" not in all_.methods  # not in every scene: not pooled
    assert all_.methods["top-5"] == {"pairs": 90, "hits": {"loose": 60, "strict": 8}}
    table = retrieval.format_table([r1, r2], 50, 500, 8192, 1, "python benchmarks/retrieval.py")
    lines = table.splitlines()
    loose, strict = lines.index(""), lines.index("", lines.index("") + 1)
    assert lines[0].startswith("| GT: >= 50 shared points | images | GT pairs (of all) | retrieval top-5 |")
    assert lines[2:loose] == ["| s1 | 8 | 20 of 28 | 50 % (oracle 75 %), 20 | - | - | 90 %, 25 |",
                              "| s2 | 25 | 100 of 300 | 50 % (oracle 61 %), 70 | - | 99 % (oracle 100 %), 250 | 40 %, 130 |",
                              "| **all** | 33 | 120 of 328 | 50 % (oracle 63 %), 90 | - | - | 48 %, 155 |"]
    assert lines[loose + 1].startswith("| GT: >= 500 shared points |")
    assert lines[loose + 3:strict] == ["| s1 | 8 | 10 of 28 | 80 % (oracle 100 %), 20 | - | - | 90 %, 25 |",
                                       "| s2 | 25 | 0 of 300 | - (oracle -), 70 | - | - (oracle -), 250 | -, 130 |",
                                       "| **all** | 33 | 10 of 328 | 80 % (oracle 100 %), 90 | - | - | 90 %, 155 |"]
    assert "`python benchmarks/retrieval.py`" in table
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n\n<!-- retrieval-table -->\nold\n<!-- /retrieval-table -->\n\nrest\n")
    retrieval.write_table("retrieval-table", table, readme)
    text = readme.read_text()
    assert "old" not in text and "| **all** |" in text and text.endswith("\n\nrest\n")


def test_retrieval_as_the_pairs_step_does(tmp_path):
    """global_descriptors once + pairs_retrieval per k = pairs.main(mode='retrieval', num_matched=k)."""
    make_homography_scene(tmp_path / "images", num_images=5, size=(160, 120), seed=3)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    desc = P.global_descriptors([tmp_path / "images" / n for n in names])
    for k in (1, 2):
        via_main = P.main(tmp_path / "images", tmp_path / "pairs.txt", mode="retrieval", num_matched=k)
        assert P.pairs_retrieval(names, desc, k) == via_main


def test_command_line():
    ap = retrieval.argparse.ArgumentParser()
    ap.add_argument("--scenes", nargs="+", default=["a", "b"])
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--readme", type=Path, default=None)
    cl = retrieval.command_line
    assert cl("retrieval.py", ap, ap.parse_args([])) == "python benchmarks/retrieval.py"
    assert (cl("retrieval.py", ap, ap.parse_args(["--scenes", "b", "--readme", "README.md"]))
            == "python benchmarks/retrieval.py --scenes b --readme README.md")


def test_subpixel_raw_error_is_rayleigh():
    mean, median = subpixel.raw_error(0.3)
    rng = np.random.default_rng(0)
    r = np.linalg.norm(rng.normal(0, 0.3, (200000, 2)), axis=1)
    assert abs(r.mean() - mean) < 2e-3 and abs(np.median(r) - median) < 2e-3
    assert subpixel.raw_error(0.0) == (0.0, 0.0)
    assert math.isclose(mean, 0.3 * math.sqrt(math.pi / 2))


def test_subpixel_table_and_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    out = subpixel.main(["--cell-sizes", "8", "--noise", "0", "--seeds", "0", "1", "--num-samples", "4000",
                         "--readme", str(readme)])
    (cell, noise, res), = out["rows"]
    assert (cell, noise) == (8.0, 0.0)
    assert res["flow"]["mean"] < 0.5 * res["none"]["mean"]  # the refinement recovers most of the loss
    assert res["mean"]["mean"] <= 1.05 * res["none"]["mean"]
    assert res["none"]["spread"] >= 0 and res["flow"]["num"] > 0
    text = readme.read_text()
    assert "<!-- subpixel-table -->" in text and "<!-- /subpixel-table -->" in text
    assert "| 8 | 0 | 0.00 / 0.00 |" in text
    assert f"--readme {readme}" in text and "--seeds 0 1" in text


@needs_scene
def test_reference_model_on_a_real_scene(tmp_path):
    """GT cameras fixed: SIFT points triangulate with sub-pixel reprojection error (the +0.5 shift and
    the world-to-camera convention are right) and neighbouring views are covisible."""
    pycolmap.logging.minloglevel = 2
    rec, names = retrieval.reference_model(SCENE / "images", SCENE / "poses_gt.txt", tmp_path, max_features=1024)
    assert len(names) == 8 and rec.num_reg_images() == 8
    assert rec.num_points3D() > 300
    assert rec.compute_mean_reprojection_error() < 1.0
    gt = retrieval.covisible_pairs(retrieval.covisibility_counts(retrieval.point_visibility(rec)), 50)
    assert all((a, b) in gt for a, b in zip(names, names[1:]))
