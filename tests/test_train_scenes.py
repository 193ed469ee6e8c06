"""Rendered 3-D training scenes: the GT warp is the scene's geometry, occlusion is unmatchable."""
import math

import cv2
import numpy as np
import pytest

from roma_sfm.train.scenes import (Rect, SceneConfig, ScenePairs, camera_pair, covisible_warp, intrinsics, look_at,
                                   make_world, render_pair, shade, trace)

SIZE = (96, 128)  # (H, W)


def smooth_texture(seed=0, h=120, w=160):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def two_cameras(baseline=1.0, roll=0.0, f_B=100.0):
    K_A, K_B = intrinsics(100.0, SIZE[1], SIZE[0]), intrinsics(f_B, SIZE[1], SIZE[0])
    target = np.array([0.0, 0.0, 0.0])
    R_A, t_A = look_at(np.array([0.0, -5.0, 0.5]), target)
    R_B, t_B = look_at(np.array([baseline, -5.0, 0.8]), target, math.radians(roll))
    return (K_A, R_A, t_A), (K_B, R_B, t_B)


def wall(texture=0):  # a 6 x 4 vertical rect in the plane y = 0, centred on the origin
    return Rect(np.array([-3.0, 0.0, -2.0]), np.array([6.0, 0.0, 0.0]), np.array([0.0, 0.0, 4.0]), texture)


def plane_homography(cam_A, cam_B):
    """A->B homography of the plane y = 0 from 4 projected world points (independent of the renderer)."""
    pts = np.array([[-1.0, 0, -1], [1.0, 0, -1], [1.0, 0, 1], [-1.0, 0, 1]])
    proj = []
    for K, R, t in (cam_A, cam_B):
        x = (pts @ R.T + t) @ K.T
        proj.append((x[:, :2] / x[:, 2:]).astype(np.float32))
    return cv2.getPerspectiveTransform(proj[0], proj[1])


@pytest.mark.parametrize("roll,f_B,aspect_B", [(0.0, 100.0, 1.0), (30.0, 250.0, 1.0), (10.0, 150.0, 0.6)])
def test_warp_of_a_plane_is_its_homography(roll, f_B, aspect_B):
    cam_A, cam_B = two_cameras(roll=roll, f_B=f_B)
    cam_B[0][1, 1] *= aspect_B  # a stretched view: fy != fx
    rects = [wall()]
    vA, vB = trace(*cam_A, SIZE, rects), trace(*cam_B, SIZE, rects)
    warp, mask = covisible_warp(vA, vB)
    assert 0.05 < mask.mean() < 1.0
    H = plane_homography(cam_A, cam_B)
    ys, xs = np.nonzero(mask)
    centres = np.stack((xs + 0.5, ys + 0.5), -1).astype(np.float64)  # COLMAP pixel centres
    expected = cv2.perspectiveTransform(centres[None], H)[0]
    got = np.stack(((warp[ys, xs, 0] + 1) * SIZE[1] / 2, (warp[ys, xs, 1] + 1) * SIZE[0] / 2), -1)
    assert np.abs(got - expected).max() < 1e-2
    # every masked A pixel lands inside B; pixels that leave B are unmatchable
    assert (got >= 0).all() and (got[:, 0] <= SIZE[1]).all() and (got[:, 1] <= SIZE[0]).all()


def test_occluded_points_are_unmatchable():
    cam_A, cam_B = two_cameras(baseline=2.5)
    occluder = Rect(np.array([-0.4, -2.0, -0.6]), np.array([0.8, 0.0, 0.0]), np.array([0.0, 0.0, 1.2]), 1)
    rects = [wall(), occluder]
    vA, vB = trace(*cam_A, SIZE, rects), trace(*cam_B, SIZE, rects)
    warp, mask = covisible_warp(vA, vB)
    wall_A = vA.ids == 0
    # where a wall pixel of A lands on the occluder in B, it must be masked, and vice versa
    u = np.floor((warp[..., 0] + 1) * SIZE[1] / 2).astype(int).clip(0, SIZE[1] - 1)
    v = np.floor((warp[..., 1] + 1) * SIZE[0] / 2).astype(int).clip(0, SIZE[0] - 1)
    hidden = wall_A & (vB.ids[v, u] == 1)
    assert hidden.sum() > 20, "the test geometry must hide part of the wall in B"
    assert not mask[hidden].any()
    assert mask[wall_A & ~hidden & (np.abs(warp) < 0.98).all(-1)].mean() > 0.95
    # both faces are seen: the occluder itself is matchable where it is in view in both
    assert mask[vA.ids == 1].mean() > 0.5


def test_shaded_colours_agree_along_the_warp_under_the_same_light():
    cam_A, cam_B = two_cameras(baseline=1.5)
    rects = [wall()]
    pyr = [smooth_texture()]
    vA, vB = trace(*cam_A, SIZE, rects), trace(*cam_B, SIZE, rects)
    warp, mask = covisible_warp(vA, vB)
    rng = np.random.default_rng(0)
    light, rgb, sky = np.array([0.0, -0.6, 0.8]), np.ones(3, np.float32), np.zeros((*SIZE, 3), np.float32)
    imA = shade(vA, rects, [pyr], rng, light, rgb, 0.5, False, sky)
    imB = shade(vB, rects, [pyr], rng, light, rgb, 0.5, False, sky)
    mx = ((warp[..., 0] + 1) * SIZE[1] / 2 - 0.5).astype(np.float32)
    my = ((warp[..., 1] + 1) * SIZE[0] / 2 - 0.5).astype(np.float32)
    b_in_a = cv2.remap(imB, mx, my, cv2.INTER_LINEAR)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    err = np.abs(b_in_a[inner] - imA[inner]).mean()
    assert err < 4.0, err  # of 255: the same surface point has the same colour
    # and a wrong warp would not agree
    assert np.abs(np.roll(b_in_a, 6, axis=1)[inner] - imA[inner]).mean() > 2 * err


def test_scene_pairs_are_deterministic_and_covisible(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), smooth_texture(i))
    cfg = SceneConfig(neg_prob=0.0)
    ds = ScenePairs(tmp_path, (112, 112), seed=5, cfg=cfg)
    a, b = ds.pair(3), ds.pair(3)
    for k in ("im_A", "im_B", "warp", "mask"):
        assert np.array_equal(a[k], b[k])
    assert a["im_A"].shape == (112, 112, 3) and a["im_A"].dtype == np.uint8
    assert a["warp"].shape == (112, 112, 2) and a["mask"].dtype == bool
    assert not np.array_equal(ds.pair(4)["im_A"], a["im_A"])
    overlaps = [ds.pair(i)["mask"].mean() for i in range(6)]
    assert min(overlaps) >= cfg.min_overlap
    item = ds[0]
    assert item["im_A"].shape == (3, 112, 112) and item["mask"].shape == (112, 112)


def test_negative_pairs_have_little_overlap(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), smooth_texture(i))
    ds = ScenePairs(tmp_path, (112, 112), seed=0, cfg=SceneConfig(neg_prob=1.0))
    assert np.mean([ds.pair(i)["mask"].mean() for i in range(4)]) < 0.1


def test_render_pair_layouts(tmp_path):
    rng = np.random.default_rng(0)
    textures = [[smooth_texture(i)] for i in range(4)]
    for layout in SceneConfig().layouts:
        s = render_pair(rng, textures, (112, 112), SceneConfig(layouts=(layout,), neg_prob=0.0))
        assert s["mask"].mean() >= SceneConfig().min_overlap, layout
        assert s["im_A"].std() > 5 and s["im_B"].std() > 5, layout


def test_aspect_stretches_each_view_within_its_range():
    world = make_world(np.random.default_rng(0), "street", 4, SceneConfig())
    ratios = []
    for seed in range(8):
        for cfg, lo, hi in ((SceneConfig(), 1.0, 1.0), (SceneConfig(aspect=(0.5, 2.0)), 0.5, 2.0)):
            cams = camera_pair(np.random.default_rng(seed), world, SIZE, cfg, negative=False)
            for K, _, _ in cams:
                r = K[1, 1] / K[0, 0]
                assert lo - 1e-9 <= r <= hi + 1e-9
                if hi > lo:
                    ratios.append(r)
    assert min(ratios) < 0.9 and max(ratios) > 1.1  # both ways, not a constant
