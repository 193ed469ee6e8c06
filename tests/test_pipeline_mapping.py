"""End to end on the project's own sample scene with the SIFT matcher: every image registered."""
import json
import shutil
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from roma_sfm.pipelines import evaluate, mapping, principal_points, reconstruct, tracks
from roma_sfm.pipelines import h5io

SCENE = Path(__file__).resolve().parents[1] / "sample_scenes" / "corner"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("corner")
    report = reconstruct.main(SCENE / "images", out, matcher="sift", progress=False, num_threads=1)
    return out, report


def test_sample_scene_registers_all(run):
    out, report = run
    assert report["status"] == "ok", report["message"]
    assert report["images_registered"] == 8 and report["images_unregistered"] == []
    ev = report["evaluation"]  # poses_gt.txt next to images/ is found automatically
    assert ev["registered"] == 8 and ev["auc@5"] > 80, ev
    assert report["mean_reprojection_error"] < 1.0 and report["mean_track_length"] > 2.5
    # SIFT matches are verified with COLMAP's threshold, and the report says which
    assert report["verification"]["ransac_max_error"] == mapping.DEFAULTS["ransac_max_error"] == 4.0
    assert report["verification"]["calibration_max_error"] == mapping.DEFAULTS["calibration_max_error"] == 1.0
    assert set(report["times"]) >= {"pairs", "match", "tracks", "mapping", "total"}


def test_outputs_written(run):
    out, report = run
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["images_registered"] == 8 and "pycolmap" in on_disk["versions"]
    # report.json is written last: every step's time, and a total that includes the export
    steps = ("scan", "pairs", "match", "tracks", "mapping", "export")
    assert set(steps) <= set(on_disk["times"]), on_disk["times"]
    assert on_disk["times"]["total"] >= sum(on_disk["times"][k] for k in steps)
    for f in ("cameras.bin", "images.bin", "points3D.bin", "cameras.txt", "images.txt", "points3D.txt"):
        assert (out / "sparse" / "0" / f).is_file(), f
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert rec.num_reg_images() == 8
    assert (out / "points.ply").stat().st_size > 0 and (out / "preview.png").is_file()
    assert len(list((out / "matches").glob("*.png"))) >= 1
    # EXIF 35 mm focal of the sample scene was used as the prior (GT 443.76 px)
    cam = next(iter(rec.cameras.values()))
    assert abs(cam.mean_focal_length() - 443.76) < 0.05 * 443.76


def test_principal_point_of_the_shared_camera_is_refined_and_reported(run):
    """SIFT matches: the camera of all 8 images gets its principal point refined; the sample scene's
    lies at the centre (GT), so it must stay within a pixel of it, and report.json says where it is."""
    out, report = run
    assert report["config"]["principal_point"] == "refine" and "principal_points" not in report
    assert report["config"]["principal_point_min_images"] == principal_points.DEFAULTS["min_images"] > 0
    (row,) = report["cameras"]
    cam = pycolmap.Reconstruction(str(out / "sparse" / "0")).cameras[row["camera_id"]]
    dx, dy = row["principal_point_offset"]
    assert (dx, dy) == pytest.approx((cam.principal_point_x - 240.0, cam.principal_point_y - 180.0))
    assert 0 < max(abs(dx), abs(dy)) < 1.0


def test_no_undefined_two_view_geometries(run):
    out, _ = run
    with pycolmap.Database.open(out / "sfm" / "database.db") as db:
        tvgs = db.read_two_view_geometries()
        configs = [int(t.config) for t in (tvgs[1] if isinstance(tvgs, tuple) else [v for _, v in tvgs])]
    assert configs and int(pycolmap.TwoViewGeometryConfiguration.UNDEFINED) not in configs


def test_evaluate_is_perfect_on_ground_truth():
    gt = evaluate.read_poses_gt(SCENE / "poses_gt.txt")
    # relative poses equal to the GT up to scale have zero error
    errs = []
    names = sorted(gt)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = gt[names[i]], gt[names[j]]
            Rg = b.R @ a.R.T
            tg = b.t - Rg @ a.t
            errs.append(max(evaluate.relative_pose_error(Rg, tg, Rg, 3 * tg)))
    assert max(errs) < 1e-4  # degrees; arccos near 1 is imprecise
    assert evaluate.pose_auc([0.0] * 5, [5])[0] == pytest.approx(100.0)
    assert evaluate.pose_auc([np.inf] * 5, [5])[0] == 0.0
    assert evaluate.evaluate_reconstruction(None, SCENE / "poses_gt.txt")["auc@10"] == 0.0


def test_incremental_mapper_option(run, tmp_path):
    out, report = run
    assert report["config"]["mapper"] == mapping.DEFAULTS["mapper"] == "global"
    res = mapping.main(tmp_path / "sfm", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                       mapper="incremental", num_threads=1)
    assert res.reconstruction is not None and res.reconstruction.num_reg_images() >= 6


def test_global_mapper_calibrates_focals_with_exif_as_start(run, tmp_path, monkeypatch):
    """Before the global mapper the view graph calibrates every focal: EXIF focals are only start
    values then (none is a prior when the calibration runs), but the report keeps them as given."""
    out, _ = run
    if not hasattr(pycolmap, "calibrate_view_graph"):
        pytest.skip("pycolmap without calibrate_view_graph")
    seen = []  # cameras with a focal prior when the view graph is calibrated
    real = pycolmap.calibrate_view_graph

    def spy(database, options):
        with pycolmap.Database.open(database) as db:
            seen.append(sum(c.has_prior_focal_length for c in db.read_all_cameras()))
        return real(database, options)

    monkeypatch.setattr(pycolmap, "calibrate_view_graph", spy)
    res = mapping.main(tmp_path / "sfm", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                       camera_mode="per_image", num_threads=1)
    assert len(res.focal_priors) == 8 and all(p for _, p in res.focal_priors.values()) and seen == [0]
    assert res.reconstruction is not None and res.reconstruction.num_reg_images() >= 6
    res = mapping.main(tmp_path / "sfm2", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                       camera_mode="per_image", num_threads=1, calibrate="never")
    assert len(seen) == 1  # calibrate="never": the mapper gets the EXIF priors as they are
    with pytest.raises(ValueError, match="calibrate must be one of"):
        mapping.main(tmp_path / "sfm3", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                     calibrate="yes")


def _focals(database):
    with pycolmap.Database.open(database) as db:
        return sorted(round(c.mean_focal_length(), 3) for c in db.read_all_cameras())


@pytest.mark.parametrize("start_wins", [False, True])
def test_calibration_compare_maps_twice_and_keeps_the_chosen_start(run, tmp_path, monkeypatch, start_wins):
    """calibrate="compare": one global mapping from the view-graph focals, one from the start values
    when the first leaves enough matches unexplained; the database, models and report are those of
    the candidate kept."""
    out, _ = run
    starts = []
    real = pycolmap.global_mapping

    def spy(database, images, path, opts):
        starts.append(_focals(database))
        return real(database, images, path, opts)

    monkeypatch.setattr(pycolmap, "global_mapping", spy)
    monkeypatch.setattr(mapping, "prefer_start_values", lambda *args: start_wins)
    monkeypatch.setattr(mapping, "COMPARE_BELOW", 2.0)  # compare even when the calibrated model explains all
    priors = mapping.main(tmp_path / "never", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                          camera_mode="per_image", num_threads=1, calibrate="never").focal_priors
    exif = sorted(round(f, 3) for f, _ in priors.values())
    starts.clear()
    res = mapping.main(tmp_path / "sfm", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                       camera_mode="per_image", num_threads=1, calibrate="compare")
    assert len(starts) == 2 and starts[1] == exif and starts[0] != exif  # calibrated first, then the start
    assert res.calibration["used"] == ("start values" if start_wins else "view graph")
    assert set(res.calibration["support"]) == {"view graph", "start values"}
    assert all(0.5 * res.calibration["matches"] < n <= res.calibration["matches"]
               for n in res.calibration["support"].values())
    assert 0.5 * res.calibration["matches"] < res.calibration["two-view"] <= res.calibration["matches"]
    assert _focals(tmp_path / "sfm" / "database.db") == starts[1 if start_wins else 0]
    assert sorted(p.name for p in (tmp_path / "sfm").iterdir()) == ["database.db", "models"]
    assert res.reconstruction.num_reg_images() >= 6
    if start_wins:
        return
    starts.clear()
    monkeypatch.setattr(mapping, "COMPARE_BELOW", 0.5)  # the calibrated model explains more: no second mapping
    res = mapping.main(tmp_path / "sfm2", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                       camera_mode="per_image", num_threads=1, calibrate="compare")
    assert len(starts) == 1 and res.calibration["used"] == "view graph"
    assert list(res.calibration["support"]) == ["view graph"]


def test_restarts_map_again_while_the_model_explains_too_little(run, tmp_path, monkeypatch):
    """A model that explains less than RESTART_BELOW of the two-view support is mapped again with the
    next seed, up to ``restarts`` tries; the kept candidate registers the most images, then has the
    most support, and its models are the ones written and returned. A model that explains enough
    is mapped once."""
    out, _ = run
    real, seeds, by_model = pycolmap.global_mapping, [], {}
    support = {0: 10, 1: 30, 2: 50}  # of a two-view support of 100: all too little

    def spy(database, images, path, opts):
        models = real(database, images, path, opts)
        seeds.append(opts.random_seed)
        if opts.random_seed == 2:  # most support, but one image fewer: must lose
            for rec in models.values():
                rec.deregister_frame(next(iter(rec.reg_frame_ids())))
        by_model.update({id(rec): opts.random_seed for rec in models.values()})
        return models

    monkeypatch.setattr(pycolmap, "global_mapping", spy)
    monkeypatch.setattr(mapping, "epipolar_support", lambda rec, pairs, kps, err=1.0: support[by_model[id(rec)]])
    monkeypatch.setattr(mapping, "two_view_support", lambda database, err=1.0: 100)
    kw = dict(num_threads=1, calibrate="always", restarts=3)
    res = mapping.main(tmp_path / "sfm", SCENE / "images", out / "features.h5", out / "matches_idx.h5", **kw)
    assert seeds == [0, 1, 2]
    assert by_model[id(res.reconstruction)] == 1
    tried = res.calibration["restarts"]
    assert [t["seed"] for t in tried] == [0, 1, 2] and [t["support"] for t in tried] == [10, 30, 50]
    assert tried[2]["images"] == tried[1]["images"] - 1 and res.calibration["two-view"] == 100
    assert sorted(p.name for p in (tmp_path / "sfm").iterdir()) == ["database.db", "models"]
    written = pycolmap.Reconstruction(tmp_path / "sfm" / "models" / "0")
    assert written.num_points3D() == res.reconstruction.num_points3D()
    assert written.num_reg_images() == res.reconstruction.num_reg_images() == tried[1]["images"]
    seeds.clear()
    support[0] = int(100 * mapping.RESTART_BELOW)  # enough: no second try
    res = mapping.main(tmp_path / "sfm2", SCENE / "images", out / "features.h5", out / "matches_idx.h5", **kw)
    assert seeds == [0] and len(res.calibration["restarts"]) == 1


def test_calibration_re_estimates_poses_at_the_given_error(run, tmp_path, monkeypatch):
    """calibration_max_error reaches the view-graph calibration's relative-pose RANSAC, per try."""
    out, _ = run
    real, seen = pycolmap.calibrate_view_graph, []

    def spy(database, options):
        seen.append((options.relpose_max_error, options.random_seed))
        return real(database, options)

    monkeypatch.setattr(pycolmap, "calibrate_view_graph", spy)
    monkeypatch.setattr(mapping, "RESTART_BELOW", 2.0)  # every try runs
    res = mapping.main(tmp_path / "sfm", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                       num_threads=1, calibrate="always", restarts=2, calibration_max_error=0.5)
    assert seen == [(0.5, 0), (0.5, 1)] and res.reconstruction.num_reg_images() == 8
    seen.clear()
    mapping.main(tmp_path / "sfm2", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                 num_threads=1, calibrate="always", restarts=1)
    assert seen == [(mapping.DEFAULTS["calibration_max_error"], 0)]


def test_start_values_need_more_images_or_clearly_more_support(run):
    """prefer_start_values: more registered images win; at equal counts the start values need
    START_VALUES_MARGIN x the support; ties keep the calibrated model."""
    out, _ = run
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    fewer = pycolmap.Reconstruction(rec)
    fewer.deregister_frame(next(iter(fewer.reg_frame_ids())))
    m = mapping.START_VALUES_MARGIN
    support = {id(rec): 1000, id(fewer): 10**6}
    assert not mapping.prefer_start_values([rec], [fewer], lambda r: support[id(r)])  # fewer images
    assert mapping.prefer_start_values([fewer], [rec], lambda r: support[id(r)])
    other = pycolmap.Reconstruction(rec)
    for value, wins in ((1000, False), (int(1000 * m), False), (int(1000 * m) + 2, True)):
        support[id(other)] = value
        assert mapping.prefer_start_values([rec], [other], lambda r: support[id(r)]) is wins
    assert mapping.prefer_start_values([], [rec], len) and not mapping.prefer_start_values([rec], [], len)


def test_epipolar_support_counts_the_matches_a_model_explains(run):
    """The mapped model explains nearly all verified inlier matches; turning one camera by a few
    degrees loses that camera's pairs."""
    out, _ = run
    rec = pycolmap.Reconstruction(out / "sparse" / "0")
    pairs, kps = mapping.verified_inliers(out / "sfm" / "database.db")
    total = sum(len(m) for _, _, m in pairs)
    good = mapping.epipolar_support(rec, pairs, kps, max_error=2.0)
    assert 0.8 * total < good <= total
    assert mapping.epipolar_support(rec, pairs, kps, max_error=0.25) < good  # a tighter error counts fewer
    image = rec.images[next(iter(rec.reg_image_ids()))]
    turn = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.0, 0.05, 0.0, 1.0]) / np.linalg.norm([0, 0.05, 0, 1])),
                            np.zeros(3))  # ~6 deg about y
    rec.frames[image.frame_id].set_cam_from_world(image.camera_id, turn * image.cam_from_world())
    bad = mapping.epipolar_support(rec, pairs, kps, max_error=2.0)
    own = sum(len(m) for a, b, m in pairs if image.name in (a, b))
    assert bad <= good - 0.5 * own


def test_global_mapper_without_exif_estimates_the_focals(run, tmp_path, monkeypatch):
    """No EXIF and a start focal 40 % off: the calibrated global mapper still gets the poses."""
    out, _ = run
    real_exif = mapping.camera_from_exif
    monkeypatch.setattr(mapping, "camera_from_exif", lambda p, s: (real_exif(p, s)[0] * 1.4, False))
    res = mapping.main(tmp_path / "sfm", SCENE / "images", out / "features.h5", out / "matches_idx.h5", num_threads=1)
    assert all(not p for _, p in res.focal_priors.values())  # the priors as they were before calibration
    ev = evaluate.evaluate_reconstruction(res.reconstruction, SCENE / "poses_gt.txt")
    assert ev["registered"] == 8 and ev["auc@5"] > 70, ev
    gt = float((SCENE / "poses_gt.txt").read_text().split()[1])
    focal = res.reconstruction.cameras[1].mean_focal_length()
    assert abs(focal / gt - 1) < 0.05, (focal, gt)


def test_mapper_options_reach_pycolmap(run, tmp_path, monkeypatch):
    """The dense conf's overrides (nested ones too) are set on the options the mapper gets."""
    out, _ = run
    seen = {}
    real = pycolmap.incremental_mapping

    def spy(database, images, path, opts):
        seen.update(local=opts.ba_local_max_refinements, redundant=opts.mapper.ba_global_ignore_redundant_points3D)
        return real(database, images, path, opts)

    monkeypatch.setattr(pycolmap, "incremental_mapping", spy)
    res = mapping.main(tmp_path / "sfm", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                       num_threads=1, mapper="incremental", options=mapping.mapper_options["dense"])
    assert seen == {"local": 1, "redundant": True} and res.reconstruction.num_reg_images() == 8
    with pytest.raises(ValueError, match="no option 'mapper.no_such_thing'"):
        mapping.set_options(pycolmap.IncrementalPipelineOptions(), {"mapper.no_such_thing": 1})


def _tvgs(database):
    with pycolmap.Database.open(database) as db:
        ids = {im.image_id: im.name for im in db.read_all_images()}
        pids, tvgs = db.read_two_view_geometries()
        out = {}
        for pid, t in zip(pids, tvgs):
            a, b = pycolmap.pair_id_to_image_pair(pid)
            out[(ids[a], ids[b])] = (int(t.config), np.asarray(t.inlier_matches).tolist())
    return out


def _record_ransac(monkeypatch, what):
    """What ``what(args)`` gives for each call of pycolmap.estimate_two_view_geometry made by mapping."""
    seen = []
    real = pycolmap.estimate_two_view_geometry

    def spy(*args):
        seen.append(what(args))
        return real(*args)

    monkeypatch.setattr(mapping.pycolmap, "estimate_two_view_geometry", spy)
    return seen


def test_pairs_below_min_inliers_skip_ransac(run, tmp_path, monkeypatch):
    """A pair with fewer matches than min_num_inliers cannot pass: RANSAC is not run for it."""
    out, _ = run
    idx = h5io.read_index_matches(out / "matches_idx.h5")
    counts = sorted(len(v) for v in idx.values())
    threshold = counts[len(counts) // 2]  # half of the pairs are below it
    calls = _record_ransac(monkeypatch, lambda args: len(args[4]))
    ids = mapping.create_database(tmp_path / "db.db", SCENE / "images", out / "features.h5")
    st = mapping.import_matches(tmp_path / "db.db", ids, out / "matches_idx.h5", min_num_inliers=threshold,
                                ransac_max_trials=0)
    assert len(calls) == sum(c >= threshold for c in counts) < len(counts)
    assert min(calls) >= threshold
    assert st.num_pairs == len(counts) and st.configs.get("DEGENERATE", 0) >= sum(c < threshold for c in counts)
    assert all(len(m) >= threshold for _, m in _tvgs(tmp_path / "db.db").values())


def test_verification_threshold_is_px_or_a_share_of_the_longer_side(run, tmp_path, monkeypatch):
    """Each pair's RANSAC threshold is ransac_max_error px, or ransac_max_error_ratio x the pair's longer
    image side where that is more; dense matches get the tighter kind's options."""
    out, _ = run
    thresholds = _record_ransac(monkeypatch, lambda args: args[5].ransac.max_error)
    inliers = {}
    for label, kw in {"sparse": mapping.verification_options["sparse"], "dense": mapping.verification_options["dense"],
                      "ratio": {"ransac_max_error": 1.5, "ransac_max_error_ratio": 0.01}}.items():
        thresholds.clear()
        db = tmp_path / f"{label}.db"
        ids = mapping.create_database(db, SCENE / "images", out / "features.h5")
        ransac = {k: v for k, v in kw.items() if k.startswith("ransac_")}  # the rest is the calibration's
        mapping.import_matches(db, ids, out / "matches_idx.h5", max_rotation_error=0, **ransac)
        inliers[label] = sum(len(m) for _, m in _tvgs(db).values())
        longer = 480  # the sample scene's images are 480 x 360
        expected = max(kw.get("ransac_max_error", mapping.DEFAULTS["ransac_max_error"]),
                       kw.get("ransac_max_error_ratio", 0.0) * longer)
        assert thresholds and all(t == pytest.approx(expected) for t in thresholds), (label, set(thresholds))
    assert mapping.verification_options["dense"]["ransac_max_error"] < mapping.DEFAULTS["ransac_max_error"]
    assert inliers["dense"] < inliers["sparse"] and inliers["ratio"] > inliers["dense"], inliers


def test_ransac_trial_cap_changes_only_low_ratio_pairs(run, tmp_path, monkeypatch):
    """Every pair's RANSAC gets the trial cap; a pair whose inlier ratio stops RANSAC before the cap
    ends exactly as with COLMAP's own cap, and the cap loses no verified pair here."""
    out, _ = run

    def verify(name, cap):
        db = tmp_path / name
        ids = mapping.create_database(db, SCENE / "images", out / "features.h5")
        st = mapping.import_matches(db, ids, out / "matches_idx.h5", ransac_max_trials=cap, max_rotation_error=0)
        return st, _tvgs(db)

    full, full_tvgs = verify("full.db", 0)
    trials = _record_ransac(monkeypatch, lambda args: args[5].ransac.max_num_trials)
    capped, capped_tvgs = verify("capped.db", 200)
    assert trials and set(trials) == {200}
    assert capped.num_verified == full.num_verified
    n = h5io.read_index_matches(out / "matches_idx.h5")
    same = 0
    for pair, (config, inliers) in full_tvgs.items():
        if len(inliers) >= 0.8 * len(n.get(pair, n.get(pair[::-1], []))):  # RANSAC stops after ~20 trials at this ratio
            assert capped_tvgs[pair] == (config, inliers)
            same += 1
    assert same > 0


def test_verification_threads_give_the_same_geometries(run, tmp_path):
    out, _ = run
    res = []
    for threads in (1, 2):
        db = tmp_path / f"db{threads}.db"
        ids = mapping.create_database(db, SCENE / "images", out / "features.h5")
        st = mapping.import_matches(db, ids, out / "matches_idx.h5", num_threads=threads)
        res.append((st.num_verified, st.configs, _tvgs(db)))
    assert res[0][0] > 0 and res[0] == res[1]


def test_models_of_an_earlier_run_are_removed(run, tmp_path):
    out, _ = run
    stale = tmp_path / "sfm" / "models" / "7"
    stale.mkdir(parents=True)
    (stale / "images.bin").write_bytes(b"stale")
    res = mapping.main(tmp_path / "sfm", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                       min_num_inliers=10**6, num_threads=1)  # nothing verifies: no model
    assert res.reconstruction is None and not stale.exists() and (tmp_path / "sfm" / "models").is_dir()


def test_two_view_support_counts_what_each_pair_explains(run, tmp_path):
    """Each pair's own geometry explains nearly all of its verified inliers at a few px, fewer at a
    tighter error; moving one image's keypoints breaks its pairs' geometries."""
    out, _ = run
    db = out / "sfm" / "database.db"
    pairs, _ = mapping.verified_inliers(db)
    total = sum(len(m) for _, _, m in pairs)
    loose = mapping.two_view_support(db, max_error=4.0)
    assert 0.9 * total < loose <= total
    assert mapping.two_view_support(db, max_error=0.25) < mapping.two_view_support(db, max_error=1.0) <= loose
    moved = tmp_path / "moved.db"
    shutil.copy(db, moved)
    with pycolmap.Database.open(moved) as d:
        image = d.read_all_images()[0]
        kp = d.read_keypoints(image.image_id)
        kp[:, :2] = kp[:, :2] + np.random.default_rng(0).normal(0, 20, (len(kp), 2))
        d.update_keypoints(image.image_id, kp)
    own = sum(len(m) for a, b, m in pairs if image.name in (a, b))
    assert mapping.two_view_support(moved, max_error=4.0) <= loose - 0.8 * own


def _ring_reconstruction(true_pp=(326.0, 236.0), shared=True, n_images=8, seed=0):
    """Images on a sphere patch around a point cloud, observed through a camera whose principal point is
    ``true_pp`` (640x480, f 500), stored with the principal point at the image centre (as mapped)."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1, 1, (300, 3)) * [2.0, 1.5, 1.0]
    rec = pycolmap.Reconstruction()
    for i in range(n_images if not shared else 1):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_RADIAL", width=640, height=480,
                                                        camera_id=i + 1, params=[500.0, 320.0, 240.0, 0.0]))
    obs = {j: [] for j in range(len(pts))}
    for i in range(n_images):  # yaw over 60 deg, pitch alternating: both axes of the point observable
        a, b = np.deg2rad(-30 + 60 * i / (n_images - 1)), np.deg2rad(20 if i % 2 else -20)
        yaw = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
        pitch = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        R, t = pitch @ yaw, np.array([0.0, 0.0, 6.0])
        cam = R @ pts.T + t[:, None]
        uv = (500.0 * cam[:2] / cam[2] + np.array(true_pp)[:, None]).T + rng.normal(0, 0.2, (len(pts), 2))
        image = pycolmap.Image(name=f"{i:03d}.jpg", keypoints=uv, camera_id=1 if shared else i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(R), t))
        for j in range(len(pts)):
            obs[j].append((i + 1, j))
    for j, elems in obs.items():
        track = pycolmap.Track()
        for image_id, idx in elems:
            track.add_element(image_id, idx)
        rec.add_point3D(pts[j], track)
    return rec


def test_principal_point_refined_for_shared_cameras_only():
    rec = _ring_reconstruction()
    refined, moved = mapping.refine_principal_points(rec, min_images=5)
    assert refined is not rec and set(moved) == {1}
    cam = refined.cameras[1]
    assert abs(cam.principal_point_x - 326.0) < 0.5 and abs(cam.principal_point_y - 236.0) < 0.5
    np.testing.assert_allclose(moved[1], (cam.principal_point_x - 320.0, cam.principal_point_y - 240.0))
    assert rec.cameras[1].principal_point_x == 320.0  # the input model is left as it was
    # too few images share the camera, or refinement is off: the model as mapped
    for min_images in (9, 0):
        same, moved = mapping.refine_principal_points(rec, min_images=min_images)
        assert same is rec and moved == {}
    # a camera per image: nothing qualifies
    single = _ring_reconstruction(shared=False)
    same, moved = mapping.refine_principal_points(single, min_images=5)
    assert same is single and moved == {}


def test_principal_point_far_from_the_centre_is_rejected():
    rec = _ring_reconstruction(true_pp=(326.0, 236.0))
    same, moved = mapping.refine_principal_points(rec, min_images=5, max_shift=0.005)  # 3.2 px at 640
    assert same is rec and moved == {}
