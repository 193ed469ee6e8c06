"""Training data: synthetic pairs and depth-based GT warps, checked geometrically."""
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from roma_sfm.train.data import (DepthPairs, MixedPairs, SynthConfig, SyntheticPairs, check_training_path,
                                 make_synthetic_pair, warp_from_depth)

GEOMETRY_ONLY = SynthConfig(occluders=(0, 0), photometric=False, tps_prob=1.0)
TILTED = replace(GEOMETRY_ONLY, tilt_prob=1.0, tilt=4.0)


def coordinate_image(h: int, w: int) -> np.ndarray:
    """Float 'photo' whose channels are its own pixel coordinates (x, y, 0): resampling it with
    (bi)linear interpolation reproduces the sampled coordinates exactly."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack((xs, ys, np.zeros_like(xs)), -1)


def sample_at_warp(im_B: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """Bilinear sampling of (H,W,C) im_B at normalised warp (H,W,2), torch grid_sample convention."""
    t = torch.from_numpy(np.ascontiguousarray(im_B.transpose(2, 0, 1)))[None].float()
    out = F.grid_sample(t, torch.from_numpy(warp)[None].float(), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("seed,cfg", [(0, GEOMETRY_ONLY), (1, GEOMETRY_ONLY), (2, GEOMETRY_ONLY),
                                      (3, GEOMETRY_ONLY), (4, TILTED), (5, TILTED)])
def test_synthetic_warp_points_at_the_same_photo_location(seed, cfg):
    h0, w0 = 300, 420
    photo = coordinate_image(h0, w0)
    s = make_synthetic_pair(photo, np.random.default_rng(seed), (112, 168), cfg)
    m = s["mask"]
    assert 0.25 <= m.mean() <= 1.0
    a = s["im_A"][..., :2]  # photo coordinates seen by each A pixel
    b = sample_at_warp(s["im_B"], s["warp"])[..., :2]  # ... and by B at the GT warp
    # stay away from the photo border, where the anti-aliasing blur reflects the ramp
    inner = m & (a[..., 0] > 8) & (a[..., 0] < w0 - 9) & (a[..., 1] > 8) & (a[..., 1] < h0 - 9)
    # and from B's border, where grid_sample pads with zeros
    inner &= (np.abs(s["warp"]) < 1 - 4 / 112).all(-1)
    assert inner.mean() > 0.15
    err = np.abs(a - b)[inner].max()
    assert err < 0.05, err  # photo pixels
    # a 1-px shift of the warp is clearly visible: the check has teeth
    shifted = s["warp"] + np.array([2 / 168, 0], np.float32)
    b2 = sample_at_warp(s["im_B"], shifted)[..., :2]
    assert np.median(np.abs(a - b2)[inner]) > 0.3


def _anisotropy(warp: np.ndarray, mask: np.ndarray) -> float:
    """Median ratio of the singular values of the A -> B warp's Jacobian over covisible pixels."""
    h, w = mask.shape
    px = (warp + 1) * np.array([w, h]) / 2
    J = np.stack([np.stack(np.gradient(px[..., k], axis=(1, 0)), -1) for k in range(2)], -2)  # (h,w,2,2)
    sv = np.linalg.svd(J[mask], compute_uv=False)
    return float(np.median(sv[:, 0] / sv[:, 1]))


def test_tilt_stretches_b_anisotropically():
    """An affine view's tilt t (ASIFT) shows as a Jacobian with singular values t : 1."""
    plain = replace(GEOMETRY_ONLY, tps_prob=0.0, perspective=0.0)
    photo = coordinate_image(300, 420)

    def anisotropy(cfg, seed):
        s = make_synthetic_pair(photo, np.random.default_rng(seed), (112, 168), cfg)
        return _anisotropy(s["warp"], s["mask"])

    flat = [anisotropy(plain, i) for i in range(6)]
    tilted = [anisotropy(replace(plain, tilt_prob=1.0, tilt=4.0), i) for i in range(6)]
    assert max(abs(a - 1) for a in flat) < 0.02, flat
    assert all(1.0 <= a <= 4.05 for a in tilted) and max(tilted) > 1.8, tilted


def test_occluded_pixels_are_masked():
    h0, w0 = 300, 420
    photo = coordinate_image(h0, w0)
    cfg = replace(GEOMETRY_ONLY, occluders=(3, 3), occluder_size=(0.2, 0.35))
    masked_some = 0
    for seed in range(3):
        clean = make_synthetic_pair(photo, np.random.default_rng(seed), (112, 112), GEOMETRY_ONLY)
        s = make_synthetic_pair(photo, np.random.default_rng(seed), (112, 112), cfg)
        # same rng stream up to the occluders: same geometry, strictly fewer valid pixels
        np.testing.assert_array_equal(s["warp"], clean["warp"])
        assert (s["mask"] <= clean["mask"]).all()
        masked_some += int((clean["mask"] & ~s["mask"]).sum())
        # every pixel still valid sees the same photo point in A and B (no occluder leaked in)
        a = s["im_A"][..., :2]
        b = sample_at_warp(s["im_B"], s["warp"])[..., :2]
        inner = s["mask"] & (np.abs(s["warp"]) < 1 - 4 / 112).all(-1)
        inner &= (a[..., 0] > 8) & (a[..., 0] < w0 - 9) & (a[..., 1] > 8) & (a[..., 1] < h0 - 9)
        assert np.abs(a - b)[inner].max() < 0.05
    assert masked_some > 100


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = cv2.resize(small, (240, 180), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(d / f"im{i}.png"), img)
    return d


def test_synthetic_dataset_is_deterministic_and_shaped(photo_dir):
    ds = SyntheticPairs(photo_dir, size=(56, 112), seed=5, length=10)
    a, b = ds[3], SyntheticPairs(photo_dir, size=(56, 112), seed=5, length=10, cache=False)[3]
    assert a["im_A"].shape == (3, 56, 112) and a["warp"].shape == (56, 112, 2) and a["mask"].shape == (56, 112)
    assert a["im_A"].dtype == torch.float32 and a["mask"].dtype == torch.float32
    for k in a:
        assert torch.equal(a[k], b[k])
    # sample i is seeded by seed + i: (seed 5, index 3) == (seed 6, index 2), != (seed 5, index 4)
    c = SyntheticPairs(photo_dir, size=(56, 112), seed=6, length=10)[2]
    assert torch.equal(a["im_B"], c["im_B"])
    assert not torch.equal(a["im_B"], ds[4]["im_B"])
    assert 0.0 < float(a["mask"].mean()) <= 1.0


def test_evaluation_folders_are_refused(tmp_path):
    for d in ("train/x", "scenes/s1", "homography", "pairs", "demo/lund"):
        (tmp_path / d).mkdir(parents=True)
    check_training_path(tmp_path / "train" / "x")
    for bad in ("scenes/s1", "homography", "demo/lund"):
        with pytest.raises(ValueError, match="evaluation"):
            check_training_path(tmp_path / bad)


# ---------------------------------------------------------------------------------------------
# depth


def rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])}[axis]


def plane_depth(K: np.ndarray, n: np.ndarray, d: float, h: int, w: int) -> np.ndarray:
    """z-depth of the plane n.X = d seen by a camera (COLMAP pixel centres at i + 0.5)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    rays = np.stack((xs, ys, np.ones_like(xs)), -1) @ np.linalg.inv(K).T
    return (d / (rays @ n)).astype(np.float32)


def plane_scene(h=48, w=64, hB=60, wB=80):
    """A tilted plane seen by two cameras; returns depths, intrinsics, T_AtoB and the plane
    homography A->B (COLMAP pixels)."""
    K_A = np.array([[60.0, 0, w / 2], [0, 58.0, h / 2], [0, 0, 1]])
    K_B = np.array([[70.0, 0, wB / 2 + 1], [0, 72.0, hB / 2 - 2], [0, 0, 1]])
    n_A = np.array([0.0, 0.3, -1.0])
    n_A /= np.linalg.norm(n_A)
    d_A = -4.0  # plane n.X = d in camera A (n points back to the camera)
    R = rot("y", 8) @ rot("x", -4)
    t = np.array([-0.4, 0.1, 0.2])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    n_B = R @ n_A
    d_B = d_A + n_B @ t  # n_B.(R X + t) = n_A.X + n_B.t
    depth_A = plane_depth(K_A, n_A, d_A, h, w)
    depth_B = plane_depth(K_B, n_B, d_B, hB, wB)
    Hmat = K_B @ (R + np.outer(t, n_A) / d_A) @ np.linalg.inv(K_A)  # X_B = (R + t n^T / d) X_A
    return depth_A, depth_B, K_A, K_B, T, Hmat


def apply_h(Hmat: np.ndarray, h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    p = np.stack((xs, ys, np.ones_like(xs)), -1) @ Hmat.T
    return p[..., :2] / p[..., 2:]


def test_warp_from_depth_matches_plane_homography_and_masks_occlusion():
    h, w, hB, wB = 48, 64, 60, 80
    depth_A, depth_B, K_A, K_B, T, Hmat = plane_scene(h, w, hB, wB)
    assert (depth_A > 0).all() and (depth_B > 0).all()
    expected = apply_h(Hmat, h, w)  # COLMAP pixels in B
    expected_n = np.stack((2 * expected[..., 0] / wB - 1, 2 * expected[..., 1] / hB - 1), -1)
    inside = (np.abs(expected_n) < 1).all(-1)
    occluded_B = depth_B.copy()
    occluded_B[20:40, 30:55] = 1.0  # a box in front of the plane, seen only by B
    tt = lambda x: torch.from_numpy(np.asarray(x))[None].double()
    warp, mask = warp_from_depth(tt(depth_A), tt(occluded_B), tt(T), tt(K_A), tt(K_B))
    warp, mask = warp[0].numpy(), mask[0].numpy()
    assert np.abs(warp - expected_n)[inside].max() < 1e-4
    # where the plane point lands under the box the pixel is occluded; elsewhere inside: valid
    # (one pixel of margin: the bilinear depth lookup mixes the box in at its border)
    bx = expected[..., 0]
    by = expected[..., 1]
    under = (bx > 30 - 1) & (bx < 55 + 1) & (by > 20 - 1) & (by < 40 + 1)
    clear = inside & ~((bx > 30 - 2) & (bx < 55 + 2) & (by > 20 - 2) & (by < 40 + 2))
    clear &= (expected[..., 0] > 1) & (expected[..., 0] < wB - 1) & (expected[..., 1] > 1) & (expected[..., 1] < hB - 1)
    core = (bx > 31) & (bx < 54) & (by > 21) & (by < 39)
    assert core.sum() > 50 and not mask[core].any()
    assert mask[clear].all() and clear.sum() > 500
    assert not mask[~inside].any()
    assert not mask[under & ~clear].all()


def test_depth_pairs_dataset_reads_an_index(tmp_path):
    h, w, hB, wB = 48, 64, 60, 80
    depth_A, depth_B, K_A, K_B, T, Hmat = plane_scene(h, w, hB, wB)
    # images are stored at 2x the depth resolution: the index intrinsics are for the images
    S = np.diag([2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.png"), rng.integers(0, 255, (2 * h, 2 * w, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), rng.integers(0, 255, (2 * hB, 2 * wB, 3), dtype=np.uint8))
    np.save(tmp_path / "a.npy", depth_A)
    np.save(tmp_path / "b.npy", depth_B)
    fields = ["a.png", "b.png", "a.npy", "b.npy"] + [f"{v:.17g}" for v in
                                                     np.concatenate(((S @ K_A).ravel(), (S @ K_B).ravel(), T.ravel()))]
    (tmp_path / "index.txt").write_text("# test pair\n" + " ".join(fields) + "\n")
    H, W = 56, 112  # resized (anisotropically) for training
    ds = DepthPairs(tmp_path / "index.txt", size=(H, W))
    assert len(ds) == 1
    s = ds[0]
    assert s["im_A"].shape == (3, H, W) and s["warp"].shape == (H, W, 2)
    # A output pixel -> A depth-grid pixel is a pure scale (COLMAP convention); then the plane homography
    Hout = Hmat @ np.diag([w / W, h / H, 1.0])
    expected = apply_h(Hout, H, W)
    expected_n = np.stack((2 * expected[..., 0] / wB - 1, 2 * expected[..., 1] / hB - 1), -1)
    m = s["mask"].numpy() > 0
    assert m.mean() > 0.3
    assert np.abs(s["warp"].numpy() - expected_n)[m].max() < 1e-3


def test_mixed_pairs_draws_from_both(photo_dir, tmp_path):
    synth = SyntheticPairs(photo_dir, size=(56, 56), seed=0, length=40)

    class Fake(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"tag": torch.tensor(1)}

    mixed = MixedPairs(synth, Fake(), p_depth=0.5, seed=1)
    tags = ["tag" in mixed[i] for i in range(40)]
    assert 5 < sum(tags) < 35
    assert tags == ["tag" in mixed[i] for i in range(40)]  # deterministic


def test_negative_pairs_have_no_covisible_pixels(photo_dir):
    from roma_sfm.train.data import SynthConfig

    plain = SyntheticPairs(photo_dir, size=(56, 56), seed=3, length=20)
    off = SyntheticPairs(photo_dir, size=(56, 56), seed=3, length=20, cfg=SynthConfig(neg_prob=0.0))
    assert all(torch.equal(plain[i]["im_B"], off[i]["im_B"]) for i in range(3))  # neg_prob 0: same stream
    for same in (0.0, 1.0):
        neg = SyntheticPairs(photo_dir, size=(56, 56), seed=3, length=20,
                             cfg=SynthConfig(neg_prob=1.0, neg_same_photo=same))
        masks = [float(neg[i]["mask"].mean()) for i in range(12)]
        # another photo: nothing covisible; a far part of the same photo: at most a sliver
        assert max(masks) <= (0.0 if same == 0.0 else 0.02), masks
        assert not torch.equal(neg[0]["im_B"], plain[0]["im_B"])
        a, b = neg.pair(5), neg.pair(5)
        assert np.array_equal(a["im_B"], b["im_B"])  # deterministic
    mixed = SyntheticPairs(photo_dir, size=(56, 56), seed=3, length=200, cfg=SynthConfig(neg_prob=0.3))
    share = np.mean([float(mixed[i]["mask"].max()) == 0.0 for i in range(60)])
    assert 0.1 < share < 0.55, share


def test_far_view_keeps_b_on_the_photo():
    from roma_sfm.train.data import SynthConfig, far_view, in_photo

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    photo = cv2.resize(small, (480, 320), interpolation=cv2.INTER_CUBIC)
    cfg = far_view(SynthConfig())
    assert cfg.max_overlap <= 0.02 and cfg.min_B_in_photo > 0.5
    H = np.eye(3)
    assert in_photo(H, (100, 100), (320, 480)) == 1.0  # B = the photo's corner: inside
    H[:2, 2] = [-400, 0]  # photo x -> B x - 400: B's view starts at photo x = 400, 80 px remain
    assert 0.0 < in_photo(H, (100, 100), (320, 480)) < 1.0
    for seed in range(6):
        s = make_synthetic_pair(photo, np.random.default_rng(seed), (64, 64), cfg)
        assert s["mask"].mean() <= 0.02
