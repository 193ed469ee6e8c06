"""Two scenes in one folder: every model exported (sparse/0, sparse/1, ...), each camera's focal
against its prior in report.json and in the summary."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image
from typer.testing import CliRunner

from roma_sfm.cli.main import app
from roma_sfm.pipelines import export, mapping

ROOT = Path(__file__).resolve().parents[1]
CORNER = ROOT / "sample_scenes" / "corner"


def _make_scene_module():
    spec = importlib.util.spec_from_file_location("make_scene", ROOT / "sample_scenes" / "make_scene.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory):
    """``a/``: 6 views of the sample scene (EXIF focal); ``b/``: 4 views of the same geometry with
    other textures and no EXIF, so nothing matches across the two; one reconstruct run of both."""
    root = tmp_path_factory.mktemp("two")
    (root / "images" / "a").mkdir(parents=True)
    (root / "images" / "b").mkdir()
    for p in sorted((CORNER / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, root / "images" / "a")
    ms = _make_scene_module()
    textures = [ms.procedural_texture(50 + s, size=512) for s in range(len(ms.scene_planes()))]
    K = np.array([[ms.FOCAL, 0, (ms.WIDTH - 1) / 2], [0, ms.FOCAL, (ms.HEIGHT - 1) / 2], [0, 0, 1]])
    for i, (R, t) in enumerate(ms.camera_poses(4)):
        Image.fromarray(ms.render(R, t, K, textures)).save(root / "images" / "b" / f"{i:04d}.jpg", quality=90)
    out = root / "out"
    # what an earlier run with more models left: removed when the run starts
    (out / "sparse" / "5").mkdir(parents=True)
    (out / "points_5.ply").write_text("stale")
    res = CliRunner().invoke(app, ["reconstruct", str(root / "images"), "-o", str(out), "--matcher", "sift",
                                   "--num-threads", "1"], env={"COLUMNS": "200"})
    return out, res, ms.FOCAL


def test_every_model_is_exported_largest_first(two_scenes):
    out, res, _ = two_scenes
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "ok" and "in 2 models" in rep["message"]
    models = rep["models"]
    assert [m["index"] for m in models] == [0, 1] and [m["images_registered"] for m in models] == [6, 4]
    assert {Path(n).parent.name for n in models[0]["registered"]} == {"a"}
    assert {Path(n).parent.name for n in models[1]["registered"]} == {"b"}
    assert rep["images_registered"] == 6 and rep["images_unregistered"] == []  # top level: the largest
    for m in models:
        rec = pycolmap.Reconstruction(m["path"])
        assert rec.num_reg_images() == m["images_registered"] and rec.num_points3D() == m["points"]
        header = Path(m["ply"]).read_bytes()[:300].decode("ascii", "replace")
        assert f"element vertex {m['points']}" in header
    assert Path(models[0]["ply"]).name == "points.ply" and Path(models[1]["ply"]).name == "points_1.ply"
    assert not (out / "sparse" / "5").exists() and not (out / "points_5.ply").exists()
    assert "model 1" in res.output and "6 + 4" in res.output


def test_focal_against_prior(two_scenes):
    out, res, focal_gt = two_scenes
    cams = json.loads((out / "report.json").read_text())["cameras"]
    by_model = {i: [c for c in cams if c["model_index"] == i] for i in (0, 1)}
    (a,) = by_model[0]  # one camera shared by the EXIF images of one size
    assert a["prior"] == "exif" and a["prior_focal"] == pytest.approx(focal_gt, rel=0.01)
    assert len(a["images"]) == 6 and a["ratio"] == pytest.approx(a["focal"] / a["prior_focal"])
    for c in by_model[1]:  # no EXIF: the default guess
        assert c["prior"] == "default"
        assert c["prior_focal"] == pytest.approx(mapping.DEFAULT_FOCAL_FACTOR * max(c["size"]))
        assert c["focal"] == pytest.approx(focal_gt, rel=0.1)
    assert "focal px: estimated / prior" in res.output and "exif" in res.output and "default" in res.output


def test_write_models_prunes_only_when_asked(two_scenes, tmp_path):
    out, _, _ = two_scenes
    recs = [pycolmap.Reconstruction(str(out / "sparse" / str(i))) for i in (0, 1)]
    rows = export.write_models(recs, tmp_path)
    assert [r["images_registered"] for r in rows] == [6, 4]
    export.write_models(recs[:1], tmp_path)
    assert (tmp_path / "sparse" / "1").is_dir() and (tmp_path / "points_1.ply").is_file()
    export.write_models(recs[:1], tmp_path, prune=True)
    assert not (tmp_path / "sparse" / "1").exists() and not (tmp_path / "points_1.ply").exists()
    assert (tmp_path / "sparse" / "0").is_dir() and (tmp_path / "points.ply").is_file()


def test_rank_models():
    class Fake:
        def __init__(self, n, p):
            self.n, self.p = n, p

        def num_reg_images(self):
            return self.n

        def num_points3D(self):
            return self.p

    ranked = mapping.rank_models([Fake(3, 10), Fake(5, 1), Fake(3, 20)])
    assert [(r.n, r.p) for r in ranked] == [(5, 1), (3, 20), (3, 10)]
