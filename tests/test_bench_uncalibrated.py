"""benchmarks/uncalibrated.py: exact GT intrinsics, EXIF written (or not) as intended, determinism."""
import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from bench_loader import load as load_benchmark
from PIL import Image

from roma_sfm.pipelines import evaluate
from roma_sfm.pipelines.mapping import camera_from_exif

uncal = load_benchmark("uncalibrated")
CORNER = Path(__file__).resolve().parents[1] / "sample_scenes" / "corner"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Three images of the sample scene (480x360, with an EXIF 35 mm focal) and their GT."""
    d = tmp_path_factory.mktemp("scene") / "corner"
    (d / "images").mkdir(parents=True)
    lines = (CORNER / "poses_gt.txt").read_text().splitlines()
    keep = [ln for ln in lines if ln.split() and not ln.startswith("#")][:3]
    for ln in keep:
        shutil.copy(CORNER / "images" / ln.split()[0], d / "images")
    (d / "poses_gt.txt").write_text("\n".join(keep) + "\n")
    return d


@pytest.fixture(scope="module")
def variants(scene, tmp_path_factory):
    return uncal.make_variants(scene, tmp_path_factory.mktemp("out"), uncal.VARIANTS, seed=3)


def _blob(size, center, sigma=3.0):
    W, H = size
    x, y = np.meshgrid(np.arange(W), np.arange(H))  # integer pixel centres
    g = np.exp(-((x - center[0]) ** 2 + (y - center[1]) ** 2) / (2 * sigma ** 2))
    return Image.fromarray(np.repeat((g * 250)[..., None], 3, -1).astype(np.uint8))


def _centroid(img):
    a = np.asarray(img, np.float64)[..., 0]
    a = np.where(a > 0.2 * a.max(), a, 0)
    y, x = np.mgrid[: a.shape[0], : a.shape[1]]
    return np.array([(a * x).sum() / a.sum(), (a * y).sum() / a.sum()])


@pytest.mark.parametrize("crop,size", [((13, 7, 90, 60), (150, 100)), ((20, 11, 100, 70), (53, 37))])
def test_map_point_follows_the_pixels(crop, size):
    """A blob's centre lands where map_point says, after Pillow's crop + resize (up and down)."""
    edit = uncal.ImageEdit(crop, size)
    p = np.array([61.3, 40.7])
    out = uncal.apply_edit(_blob((128, 96), p, sigma=4.0), edit)
    assert out.size == size
    assert np.abs(_centroid(out) - uncal.map_point(p[None], edit)[0]).max() < 0.05


def test_gt_intrinsics_project_points_exactly(scene, variants):
    """A 3-D point seen by the GT camera of the original lands, with the variant's GT, where
    map_point takes its original pixel."""
    gt0 = evaluate.read_poses_gt(scene / "poses_gt.txt")
    for v in uncal.VARIANTS:
        manifest = json.loads((variants[v] / "variant.json").read_text())
        gt1 = evaluate.read_poses_gt(variants[v] / "poses_gt.txt")
        assert set(gt1) == set(gt0)
        for name, cam0 in gt0.items():
            cam1 = gt1[name]
            np.testing.assert_allclose(cam1.R, cam0.R)
            np.testing.assert_allclose(cam1.t, cam0.t)
            X = cam0.R.T @ (np.array([[0.3, -0.2, 4.0], [-1.0, 0.5, 6.0]]).T - cam0.t[:, None])  # world points
            x0 = cam0.K @ (cam0.R @ X + cam0.t[:, None])
            x1 = cam1.K @ (cam1.R @ X + cam1.t[:, None])
            info = manifest["images"][name]
            edit = uncal.ImageEdit(tuple(info["crop"]), tuple(info["size"]))
            np.testing.assert_allclose((x1[:2] / x1[2]).T, uncal.map_point((x0[:2] / x0[2]).T, edit), atol=1e-5)
            with Image.open(variants[v] / "images" / name) as im:
                assert im.size == tuple(info["size"])


def test_crops_within_bounds(scene, variants):
    manifest = json.loads((variants["uncal"] / "variant.json").read_text())
    with Image.open(next((scene / "images").iterdir())) as im:
        W, H = im.size
    sizes = set()
    for info in manifest["images"].values():
        x0, y0, w, h = info["crop"]
        assert 0 <= x0 and x0 + w <= W and 0 <= y0 and y0 + h <= H
        assert uncal.CROP_AREA[0] - 0.02 <= w * h / (W * H) <= 1.0
        assert min(info["size"]) >= uncal.MIN_SIDE - 1
        sizes.add(tuple(info["size"]))
    assert len(sizes) == len(manifest["images"])  # every image its own size


def test_centred_and_offcentre_crops(scene, variants):
    """uncal / wrong-exif crop about the image centre; uncal-offcentre the same sizes anywhere."""
    with Image.open(next((scene / "images").iterdir())) as im:
        W, H = im.size
    man = {v: json.loads((variants[v] / "variant.json").read_text())["images"] for v in uncal.VARIANTS}
    for name, info in man["uncal"].items():
        x0, y0, w, h = info["crop"]
        assert abs(x0 + w / 2 - W / 2) <= 0.5 and abs(y0 + h / 2 - H / 2) <= 0.5
        assert man["wrong-exif"][name]["crop"] == info["crop"]
        assert man["uncal-offcentre"][name]["crop"][2:] == info["crop"][2:]
        assert man["uncal-offcentre"][name]["size"] == info["size"]
    assert any(man["uncal-offcentre"][n]["crop"] != man["uncal"][n]["crop"] for n in man["uncal"])


def test_uncal_has_no_exif(variants):
    for path in [*(variants["uncal"] / "images").iterdir(), *(variants["uncal-offcentre"] / "images").iterdir()]:
        with Image.open(path) as im:
            assert len(im.getexif()) == 0
            f, from_exif = camera_from_exif(path, im.size)
        assert not from_exif
        assert not pycolmap.infer_camera_from_image(path).has_prior_focal_length


def test_wrong_exif_focal_is_read_back(variants):
    manifest = json.loads((variants["wrong-exif"] / "variant.json").read_text())
    for name, info in manifest["images"].items():
        path = variants["wrong-exif"] / "images" / name
        with Image.open(path) as im:
            f, from_exif = camera_from_exif(path, im.size)
        assert from_exif and f == pytest.approx(info["exif_focal"], rel=1e-5)
        assert uncal.EXIF_ERROR[0] - 1e-3 <= f / np.mean(info["focal_gt"]) <= uncal.EXIF_ERROR[1] + 1e-3
        assert f / np.mean(info["focal_gt"]) == pytest.approx(info["exif_factor"], rel=1e-6)


def test_same_seed_same_variant(scene, variants, tmp_path):
    again = uncal.make_variant(scene, tmp_path, "wrong-exif", seed=3)
    assert (again / "variant.json").read_text().replace(str(tmp_path), "") == \
        (variants["wrong-exif"] / "variant.json").read_text().replace(str(variants["wrong-exif"].parent), "")
    other = uncal.draw_edits(["a", "b"], (480, 360), seed=4, key="corner")
    assert other != uncal.draw_edits(["a", "b"], (480, 360), seed=3, key="corner")
