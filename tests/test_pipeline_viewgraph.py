"""The mapping step's view-graph check: robust rotation averaging finds pairs that contradict the rest."""
import h5py
import numpy as np
import pytest

from roma_sfm.pipelines import mapping, viewgraph
from roma_sfm.pipelines.h5io import write_features, write_index_matches


def random_rotations(rng: np.random.Generator, n: int, max_angle: float = 180.0) -> np.ndarray:
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.radians(rng.uniform(0, max_angle, n))
    K = np.zeros((n, 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    K -= np.transpose(K, (0, 2, 1))
    return np.eye(3) + np.sin(angle)[:, None, None] * K + (1 - np.cos(angle))[:, None, None] * K @ K


def test_rotation_angle_of_known_rotations():
    rng = np.random.default_rng(0)
    R = random_rotations(rng, 5)
    assert np.allclose(R @ np.transpose(R, (0, 2, 1)), np.eye(3), atol=1e-12)
    assert viewgraph.rotation_angle(np.eye(3)) == pytest.approx(0.0)
    c, s = np.cos(np.radians(40)), np.sin(np.radians(40))
    assert viewgraph.rotation_angle(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])) == pytest.approx(40.0)


def _graph(rng, n=12, noise_deg=2.0, num_wrong=8, flip=False):
    """A ring with chords (each image paired with its 3 next ones), noisy relative rotations, and
    ``num_wrong`` pairs replaced by a wrong rotation (a 150-180 deg turn if ``flip``: the
    other-wall case; else random)."""
    R = random_rotations(rng, n)
    edges = np.array([(i, (i + k) % n) for i in range(n) for k in (1, 2, 3)])
    rel = R[edges[:, 1]] @ np.transpose(R[edges[:, 0]], (0, 2, 1))
    rel = random_rotations(rng, len(edges), noise_deg) @ rel
    wrong = rng.choice(len(edges), num_wrong, replace=False)
    if flip:
        turn = random_rotations(rng, num_wrong, 30.0) @ np.diag([-1.0, 1.0, -1.0])  # ~180 deg about y
        rel[wrong] = turn @ rel[wrong]
    else:
        rel[wrong] = random_rotations(rng, num_wrong)
    weights = np.full(len(edges), 1000.0)
    weights[wrong] = 500.0
    return R, edges, rel, weights, wrong


@pytest.mark.parametrize("flip", [False, True])
def test_wrong_pairs_stand_out_and_right_pairs_fit(flip):
    rng = np.random.default_rng(1 + flip)
    R_true, edges, rel, weights, wrong = _graph(rng, flip=flip)
    R, res = viewgraph.average_rotations(len(R_true), edges, rel, weights)
    right = np.setdiff1d(np.arange(len(edges)), wrong)
    flagged = res > 30.0
    assert flagged[wrong].sum() >= len(wrong) - 1  # a random "wrong" rotation may land close to the right one
    assert not flagged[right].any() and np.median(res[right]) < 4.0
    # the averaged rotations are the true ones up to one global rotation
    G = np.transpose(R_true, (0, 2, 1)) @ R
    assert viewgraph.rotation_angle(G[1:] @ np.transpose(G[:1], (0, 2, 1))).max() < 5.0


def test_a_bridge_is_never_an_outlier_and_components_are_independent():
    rng = np.random.default_rng(3)
    R = random_rotations(rng, 10)
    # a triangle 0-1-2, a bridge 2-3, a triangle 3-4-5, a lone pair 5-6 (another bridge), a second
    # component 7-8, and image 9 in no pair
    edges = np.array([(0, 1), (1, 2), (0, 2), (2, 3), (3, 4), (4, 5), (3, 5), (5, 6), (7, 8)])
    rel = R[edges[:, 1]] @ np.transpose(R[edges[:, 0]], (0, 2, 1))
    rel[3] = random_rotations(rng, 1)[0] @ rel[3]  # the bridge is wrong, but nothing contradicts it
    R_avg, res = viewgraph.average_rotations(10, edges, rel, np.ones(len(edges)))
    assert R_avg.shape == (10, 3, 3) and res.max() < 1e-3  # degrees: arccos resolution near 0
    _, none = viewgraph.average_rotations(3, np.zeros((0, 2)), np.zeros((0, 3, 3)), np.zeros(0))
    assert none.shape == (0,)


def _project(K, R, t, X):
    x = (X @ R.T + t) @ K.T
    return x[:, :2] / x[:, 2:]


def _look_at(centre, target):
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])  # rows: camera axes in the world
    return R, -R @ centre


@pytest.fixture(scope="module")
def two_walls(tmp_path_factory):
    """Six cameras in a row looking at one textured wall (a ground-truth track per point) and one
    look-alike pair: image 0 also 'matches' image 4 through a copy of the wall turned by 60 deg
    about its vertical axis (another wall that looks the same): a valid two-view geometry whose
    rotation is 60 deg off the one of the other pairs."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("walls")
    W, H, f = 640, 480, 600.0
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    centre = np.array([0.0, 0.0, 10.0])
    X = centre + np.c_[rng.uniform(-3, 3, 400), rng.uniform(-2, 2, 400), rng.uniform(-1, 1, 400)]
    cams = [_look_at(np.array([0.6 * i - 1.5, 0.0, 0.0]), centre) for i in range(6)]
    names = [f"{i}.png" for i in range(6)]
    kps = {n: _project(K, R, t, X) for n, (R, t) in zip(names, cams)}
    a = np.radians(60.0)
    Ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    fake = _project(K, *cams[4], (X - centre) @ Ry.T + centre)
    ok = (fake[:, 0] > 0) & (fake[:, 0] < W) & (fake[:, 1] > 0) & (fake[:, 1] < H)
    n_real = len(X)
    kps[names[4]] = np.concatenate([kps[names[4]], fake])
    matches = {}
    for i in range(6):
        for j in range(i + 1, 6):
            idx = np.arange(n_real)
            matches[(names[i], names[j])] = (np.stack([idx, idx], 1).astype(np.int32), np.ones(n_real, np.float32))
    look = np.flatnonzero(ok)
    matches[(names[0], names[4])] = (np.stack([look, n_real + look], 1).astype(np.int32),
                                     np.ones(len(look), np.float32))
    kps = {n: (k + 0.5).astype(np.float32) for n, k in kps.items()}  # COLMAP convention
    features, matches_idx = folder / "features.h5", folder / "matches_idx.h5"
    with h5py.File(features, "w") as fh:
        write_features(fh, kps, {n: np.ones(len(k), np.float32) for n, k in kps.items()},
                        {n: (W, H) for n in names}, 1.0, "none", "walls")
    with h5py.File(matches_idx, "w") as fh:
        write_index_matches(fh, kps, matches, "walls")
    return folder, features, matches_idx, len(look)


def test_import_matches_leaves_out_the_look_alike_pair(two_walls, tmp_path):
    folder, features, matches_idx, n_look = two_walls
    assert n_look > 100  # the look-alike pair is strong: it passes verification on its own
    ids = mapping.create_database(tmp_path / "off.db", folder, features)
    off = mapping.import_matches(tmp_path / "off.db", ids, matches_idx, max_rotation_error=0)
    mapping.create_database(tmp_path / "on.db", folder, features)
    on = mapping.import_matches(tmp_path / "on.db", ids, matches_idx)
    assert off.num_verified == 15 and off.rotation_outliers == []
    assert [(a, b) for a, b, _ in on.rotation_outliers] == [("0.png", "4.png")]
    assert 45.0 < on.rotation_outliers[0][2] < 75.0 and on.num_verified == 14
    with mapping.pycolmap.Database.open(tmp_path / "on.db") as db:
        assert db.num_verified_image_pairs() == 14
        assert len(db.read_matches(ids["0.png"], ids["4.png"])) == n_look  # its raw matches stay


def test_relative_rotation_from_e_and_f():
    rng = np.random.default_rng(5)
    W, H, f = 640, 480, 600.0
    cam = mapping.pycolmap.Camera.create_from_model_name(0, "PINHOLE", f, W, H)
    K = cam.calibration_matrix()
    centre = np.array([0.0, 0.0, 10.0])
    X = centre + rng.uniform(-2, 2, (200, 3))
    R0, t0 = _look_at(np.array([-2.0, 0.0, 0.0]), centre)
    R1, t1 = _look_at(np.array([2.0, 0.5, 1.0]), centre)
    p0, p1 = _project(K, R0, t0, X) + 0.5, _project(K, R1, t1, X) + 0.5  # COLMAP pixels
    R, t = R1 @ R0.T, t1 - R1 @ R0.T @ t0
    E = np.cross(np.eye(3), t) @ R  # [t]x R
    C = mapping.pycolmap.TwoViewGeometryConfiguration
    tvg = mapping.pycolmap.TwoViewGeometry()
    tvg.config, tvg.E = C.CALIBRATED, E
    got = mapping.relative_rotation(tvg, cam, cam, p0, p1)
    assert viewgraph.rotation_angle(got @ R.T) < 1e-3
    tvg.config, tvg.F = C.UNCALIBRATED, np.linalg.inv(K).T @ E @ np.linalg.inv(K)
    assert viewgraph.rotation_angle(mapping.relative_rotation(tvg, cam, cam, p0, p1) @ R.T) < 1e-3
    tvg.config = C.PANORAMIC  # a pure rotation has no E to decompose
    assert mapping.relative_rotation(tvg, cam, cam, p0, p1) is None


def test_check_with_calibrated_focals_leaves_out_the_look_alike_pair(two_walls, tmp_path):
    """The check after a view-graph calibration of the focals (the start value here is 1.2 x 640 px,
    the truth 600): the look-alike pair loses its geometry, the right pairs keep theirs, and the
    database's cameras keep their start values (the calibration ran on a copy)."""
    folder, features, matches_idx, n_look = two_walls
    db_path = tmp_path / "check.db"
    ids = mapping.create_database(db_path, folder, features)
    mapping.drop_focal_priors(db_path)
    stats = mapping.import_matches(db_path, ids, matches_idx, max_rotation_error=0)
    assert stats.num_verified == 15 and stats.rotation_outliers == []
    with mapping.pycolmap.Database.open(db_path) as db:
        start = {c.camera_id: c.focal_length for c in db.read_all_cameras()}
    mapping.check_rotations_calibrated(db_path, ids, stats, max_error=30.0)
    assert [(a, b) for a, b, _ in stats.rotation_outliers] == [("0.png", "4.png")]
    assert stats.num_verified == 14 and ("0.png", "4.png") not in stats.verified_pairs
    with mapping.pycolmap.Database.open(db_path) as db:
        assert db.num_verified_image_pairs() == 14
        assert not db.exists_two_view_geometry(ids["0.png"], ids["4.png"])
        assert len(db.read_matches(ids["0.png"], ids["4.png"])) == n_look  # its raw matches stay
        assert {c.camera_id: c.focal_length for c in db.read_all_cameras()} == start
    assert not list(tmp_path.glob("*.check"))


def test_mapping_refuses_an_unknown_check_focals(two_walls, tmp_path):
    folder, features, matches_idx, _ = two_walls
    with pytest.raises(ValueError, match="check_focals"):
        mapping.main(tmp_path / "sfm", folder, features, matches_idx, check_focals="exif")
