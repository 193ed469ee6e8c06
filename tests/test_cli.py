"""The CLI is installed as `roma-sfm` and its commands answer."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest
from typer.testing import CliRunner

from roma_sfm.cli.main import app


def test_help_lists_commands():
    out = CliRunner().invoke(app, ["--help"])
    assert out.exit_code == 0 and "models" in out.output


def test_models_lists_every_preset():
    out = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    for name in ("roma-outdoor", "roma-indoor", "roma-tiny"):
        assert name in out.output


def test_console_script_runs():
    # the entry point module, as the installed script calls it
    r = subprocess.run([sys.executable, "-c", "from roma_sfm.cli.main import app; app()", "--version"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "roma-sfm" in r.stdout


def test_cli_and_pipelines_are_not_top_level():
    import importlib.util

    import roma_sfm.cli
    import roma_sfm.pipelines

    assert roma_sfm.cli.__name__ == "roma_sfm.cli"
    # `cli` / `pipelines` importable only from a source checkout's cwd, never from site-packages
    for name in ("cli", "pipelines"):
        spec = importlib.util.find_spec(name)
        assert spec is None or "site-packages" not in str(spec.origin)


# ------------------------------------------------------------------------------------------------
# reconstruction commands on the sample scene (SIFT: no weights needed; ~10 s per reconstruction)
# ------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "sample_scenes" / "corner"
IMAGES = SCENE / "images"
ENV = {"COLUMNS": "200"}
COMMANDS = ("reconstruct", "pairs", "match", "map", "export", "eval", "viz")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture(scope="module")
def recon(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "corner"
    res = invoke("reconstruct", IMAGES, "-o", out, "--matcher", "sift", "--num-threads", 1)
    return out, res


def test_reconstruct_sample_scene_with_sift(recon):
    out, res = recon
    assert res.exit_code == 0, res.output
    assert "registered 8 of 8 images" in res.output and "AUC@3/5/10" in res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "ok" and rep["images_given"] == 8 and rep["images_registered"] == 8
    assert rep["config"]["matcher"] == "sift" and rep["evaluation"]["auc@5"] > 90
    assert rep["config"]["calibrate"] == "compare" and rep["calibration"]["used"] in ("view graph", "start values")
    assert 0 < rep["calibration"]["support"]["view graph"] <= rep["calibration"]["matches"]
    (first,) = rep["calibration"]["restarts"]  # the model explains enough: mapped once
    assert first["seed"] == 0 and first["images"] == 8 and "mapping tries" not in res.output
    for f in ("cameras", "images", "points3D"):
        assert (out / "sparse" / "0" / f"{f}.bin").is_file() and (out / "sparse" / "0" / f"{f}.txt").is_file()
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert rec.num_reg_images() == 8 and rec.num_points3D() == rep["points"] > 500
    header = (out / "points.ply").read_bytes()[:300].decode("ascii", "replace")
    assert header.startswith("ply") and f"element vertex {rep['points']}" in header
    assert (out / "preview.png").is_file()


def test_steps_chained_reproduce_the_model(recon, tmp_path):
    out = tmp_path / "steps"
    res = invoke("pairs", IMAGES, "-o", out / "pairs.txt", "--mode", "exhaustive")
    assert res.exit_code == 0, res.output
    assert len((out / "pairs.txt").read_text().splitlines()) == 28
    res = invoke("match", IMAGES, "--pairs", out / "pairs.txt", "-o", out / "matches.h5", "--matcher", "sift")
    assert res.exit_code == 0, res.output
    with h5py.File(out / "matches.h5", "r") as f:
        assert f.attrs["matcher"].startswith("sift") and len(f["0000.jpg"]) == 7
        g = f["0000.jpg/0001.jpg"]
        assert g["keypoints0"].dtype == np.float32 and g["keypoints0"].shape[1] == 2 and len(g["scores"]) > 100
    res = invoke("map", IMAGES, "--matches", out / "matches.h5", "-o", out, "--num-threads", 1, "--calibrate", "always")
    assert res.exit_code == 0, res.output
    assert (out / "features.h5").is_file() and (out / "sfm" / "database.db").is_file()
    assert pycolmap.Reconstruction(str(out / "sparse" / "0")).num_reg_images() == 8
    res = invoke("export", IMAGES, "-o", out)
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    ref = json.loads((recon[0] / "report.json").read_text())
    assert rep["status"] == "ok" and rep["images_registered"] == 8 and (out / "points.ply").is_file()
    assert "Plotly.newPlot" in (out / "report.html").read_text(encoding="utf-8")  # export writes the page too
    assert abs(rep["points"] - ref["points"]) <= 0.1 * ref["points"]
    assert rep["evaluation"]["auc@5"] > 90


def test_reconstruct_restarts_are_reported(recon, tmp_path, monkeypatch):
    """--restarts N: while no model explains RESTART_BELOW of the matches (here: never, by patching it
    above 1), N mappings with seeds 0..N-1, each in report.json and in the summary."""
    from roma_sfm.pipelines import mapping

    monkeypatch.setattr(mapping, "RESTART_BELOW", 2.0)
    out = tmp_path / "restarts"
    out.mkdir()
    (out / "matches.h5").write_bytes((recon[0] / "matches.h5").read_bytes())  # resumed: no matching
    res = invoke("reconstruct", IMAGES, "-o", out, "--matcher", "sift", "--num-threads", 1, "--restarts", 2)
    assert res.exit_code == 0, res.output
    tries = json.loads((out / "report.json").read_text())["calibration"]["restarts"]
    assert [t["seed"] for t in tries] == [0, 1] and all(t["images"] == 8 for t in tries)
    assert "mapping tries" in res.output and "seed 1: 8 images" in res.output


@pytest.mark.parametrize("mode", ["centre", "sift"])
def test_map_principal_point_option(recon, tmp_path, mode):
    res = invoke("map", IMAGES, "--matches", recon[0] / "matches.h5", "-o", tmp_path, "--num-threads", 1,
                 "--principal-point", mode)
    assert res.exit_code == 0, res.output
    (cam,) = pycolmap.Reconstruction(str(tmp_path / "sparse" / "0")).cameras.values()
    at_centre = (cam.principal_point_x, cam.principal_point_y) == (240.0, 180.0)
    assert at_centre == (mode == "centre")
    assert ("principal points from SIFT" in res.output) == (mode == "sift")
    assert (tmp_path / "principal_points" / "principal_points.json").is_file() == (mode == "sift")
    bad = invoke("map", IMAGES, "--matches", recon[0] / "matches.h5", "-o", tmp_path, "--principal-point", "middle")
    assert bad.exit_code == 2


def test_eval_model_and_matches(recon, tmp_path):
    out, _ = recon
    res = invoke("eval", "--model", out, "--poses-gt", SCENE / "poses_gt.txt", "--json", tmp_path / "ev.json")
    assert res.exit_code == 0, res.output
    assert "AUC@3 deg" in res.output and "8 of 8 GT images" in res.output
    ev = json.loads((tmp_path / "ev.json").read_text())["reconstruction"]
    assert ev["registered"] == 8 and ev["auc@3"] > 90
    # GT pairs (38-field format) from the scene's GT cameras; paths as a data root would name them
    from roma_sfm.pipelines.evaluate import read_poses_gt

    cams = read_poses_gt(SCENE / "poses_gt.txt")
    lines = []
    for a, b in (("0000.jpg", "0001.jpg"), ("0002.jpg", "0004.jpg"), ("0005.jpg", "0006.jpg")):
        R = cams[b].R @ cams[a].R.T
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, cams[b].t - R @ cams[a].t
        vals = [0, 0, *cams[a].K.ravel(), *cams[b].K.ravel(), *T.ravel()]
        lines.append(f"corner/images/{a} corner/images/{b} " + " ".join(f"{v:.12g}" for v in vals))
    (tmp_path / "pairs_gt.txt").write_text("\n".join(lines) + "\n")
    res = invoke("eval", "--matches", out / "matches.h5", "--pairs-gt", tmp_path / "pairs_gt.txt",
                 "--json", tmp_path / "ev.json")
    assert res.exit_code == 0, res.output
    assert "AUC@20 deg" in res.output
    ev = json.loads((tmp_path / "ev.json").read_text())["matches"]
    assert ev["pairs"] == 3 and ev["missing"] == 0 and ev["auc@20"] > 50


def test_reconstruct_empty_folder_fails_with_exit_1(tmp_path, monkeypatch):
    import roma_sfm.weights

    # no shipped weights: the default matcher falls back to SIFT with a notice
    monkeypatch.setattr(roma_sfm.weights, "default_checkpoint", lambda: tmp_path / "absent.safetensors")
    (tmp_path / "empty").mkdir()
    res = invoke("reconstruct", tmp_path / "empty", "-o", tmp_path / "out")
    assert res.exit_code == 1
    assert "matching with SIFT" in res.output and "error: no readable image" in res.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["status"] == "failed" and "no readable image" in rep["message"]


def test_usage_errors_exit_2(tmp_path):
    assert invoke("reconstruct", tmp_path / "missing").exit_code == 2
    assert invoke("reconstruct", IMAGES, "-o", tmp_path, "--pairs", "nope").exit_code == 2
    assert invoke("reconstruct", IMAGES, "-o", tmp_path, "--matcher", "nope").exit_code == 2
    assert invoke("match", IMAGES, "-o", tmp_path / "m.h5", "--matcher", "sift-opencv",
                  "--resolution", "500").exit_code == 2
    assert invoke("eval").exit_code == 2
    assert invoke("eval", "--model", tmp_path).exit_code == 2
    assert invoke("reconstruct", IMAGES, "-o", tmp_path, "--fallback", "sift").exit_code == 2
    assert invoke("reconstruct", IMAGES, "-o", tmp_path, "--matcher", "roma", "--fallback", "roma").exit_code == 2
    assert not any(tmp_path.iterdir())  # nothing ran


def test_match_with_a_roma_checkpoint_and_resolution(tmp_path):
    import torch

    from conftest import micro_config
    from roma_sfm import save_checkpoint
    from roma_sfm.models.roma import RoMa

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "micro.safetensors", RoMa(micro_config()).eval())
    (tmp_path / "pairs.txt").write_text("0000.jpg 0001.jpg\n0001.jpg 0002.jpg\n")
    res = invoke("match", IMAGES, "--pairs", tmp_path / "pairs.txt", "-o", tmp_path / "matches.h5",
                 "--matcher", ckpt, "--resolution", "56x70", "--num-samples", 200, "--device", "cpu")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "matches.h5", "r") as f:
        assert f.attrs["matcher"] == "micro"
        g = f["0001.jpg/0002.jpg"]
        assert len(g["scores"]) == 200 and tuple(g.attrs["size0"]) == (480, 360)


def test_reconstruct_with_a_fallback_checkpoint(tmp_path):
    import torch

    from conftest import micro_config
    from roma_sfm import save_checkpoint
    from roma_sfm.models.roma import RoMa

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "micro.safetensors", RoMa(micro_config()).eval())
    res = invoke("reconstruct", IMAGES, "-o", tmp_path / "out", "--fallback", ckpt, "--resolution", "56x70",
                 "--device", "cpu", "--num-threads", 1)
    assert res.exit_code == 0, res.output
    assert "fallback: micro" in res.output and "--resolution applies" not in res.output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["config"]["matcher"] == "sift" and rep["config"]["fallback"] == "micro"
    assert rep["fallback"]["matcher"] == "micro" and rep["fallback"]["pairs"] == 0  # SIFT verifies every pair


def test_resolution_coarse_and_fine_pass(tmp_path):
    import torch

    from conftest import micro_config
    from roma_sfm import save_checkpoint
    from roma_sfm.models.roma import RoMa

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "micro.safetensors", RoMa(micro_config()).eval())
    (tmp_path / "pairs.txt").write_text("0000.jpg 0001.jpg\n")
    for spec, want in (("56x70:84x112", [84, 112]), ("56x70:none", None), ("56x70", None)):  # micro: no 2nd pass
        out = tmp_path / f"{spec.replace(':', '_')}.h5"
        res = invoke("match", IMAGES, "--pairs", tmp_path / "pairs.txt", "-o", out, "--matcher", ckpt,
                     "--resolution", spec, "--num-samples", 50, "--device", "cpu")
        assert res.exit_code == 0, res.output
        with h5py.File(out, "r") as f:
            sig = json.loads(f.attrs["matcher_signature"])
        assert sig["coarse_res"] == [56, 70] and sig["upsample_res"] == want, (spec, sig)
    for bad in ("56:", "56:85", "56:none:3", "x:84"):
        assert invoke("match", IMAGES, "--pairs", tmp_path / "pairs.txt", "-o", tmp_path / "bad.h5",
                      "--matcher", ckpt, "--resolution", bad).exit_code == 2, bad


@pytest.mark.parametrize("option, cases, bad", [
    # --zoom: the RoMa matcher's covisible re-match ratio (another zoom means other matches); a
    # ratio of 1 or below (but not 0) is a usage error
    ("--zoom", ((None, "preset"), ("0", 0.0), ("2.5", 2.5)), "0.8"),
    # --precision: bf16 autocasts also on the CPU, where the default is float32
    ("--precision", ((None, "fp32"), ("fp32", "fp32"), ("bf16", "bf16")), "fp8"),
])
def test_matcher_option_is_signed_into_the_matches(tmp_path, option, cases, bad):
    """A RoMa option of `match` changes the matches, so it is part of their signature; a bad value
    is a usage error that names the option and writes nothing."""
    import torch

    from conftest import micro_config
    from roma_sfm import save_checkpoint
    from roma_sfm.models.roma import RoMa
    from roma_sfm.presets import ZOOM

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "micro.safetensors", RoMa(micro_config()).eval())
    (tmp_path / "pairs.txt").write_text("0000.jpg 0001.jpg\n")
    key = option.lstrip("-")
    for value, want in cases:
        out = tmp_path / f"{value}.h5"
        res = invoke("match", IMAGES, "--pairs", tmp_path / "pairs.txt", "-o", out, "--matcher", ckpt,
                     "--num-samples", 50, "--device", "cpu", *((option, value) if value else ()))
        assert res.exit_code == 0, res.output
        with h5py.File(out, "r") as f:
            assert json.loads(f.attrs["matcher_signature"])[key] == (ZOOM if want == "preset" else want), value
    res = invoke("match", IMAGES, "--pairs", tmp_path / "pairs.txt", "-o", tmp_path / "bad.h5",
                 "--matcher", ckpt, option, bad)
    assert res.exit_code == 2 and option in res.output and not (tmp_path / "bad.h5").exists()


def test_photometric_refinement_is_on_by_default_and_signed_into_the_matches(tmp_path):
    """`match --no-photometric` keeps the raw warp's matches, and the signature says which."""
    import torch

    from conftest import micro_config
    from roma_sfm import save_checkpoint
    from roma_sfm.models.roma import RoMa

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "micro.safetensors", RoMa(micro_config()).eval())
    (tmp_path / "pairs.txt").write_text("0000.jpg 0001.jpg\n")
    found = {}
    for flag in ((), ("--no-photometric",), ("--photometric",)):
        out = tmp_path / f"{len(flag) and flag[0]}.h5"
        res = invoke("match", IMAGES, "--pairs", tmp_path / "pairs.txt", "-o", out, "--matcher", ckpt,
                     "--num-samples", 50, "--device", "cpu", *flag)
        assert res.exit_code == 0, res.output
        with h5py.File(out, "r") as f:
            found[flag] = json.loads(f.attrs["matcher_signature"])["photometric"]
    assert found == {(): True, ("--no-photometric",): False, ("--photometric",): True}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    res = invoke(command, "--help")
    assert res.exit_code == 0 and "Usage" in res.output and "--" in res.output


def test_pairs_command_takes_the_matcher_its_pairs_are_for(tmp_path):
    """`pairs --matcher`: auto's limit follows its kind (8 images: every pair for both); a name that is
    no matcher is a usage error."""
    for m in ("sift", "roma"):
        res = invoke("pairs", IMAGES, "-o", tmp_path / m / "pairs.txt", "--matcher", m)
        assert res.exit_code == 0, res.output
        assert len((tmp_path / m / "pairs.txt").read_text().splitlines()) == 28
    res = invoke("pairs", IMAGES, "-o", tmp_path / "x.txt", "--matcher", "nonsense")
    assert res.exit_code == 2 and "nonsense" in res.output
