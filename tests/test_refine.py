"""Photometric refinement of sampled matches (roma_sfm.refine) and its place in the matcher."""
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from conftest import micro_config
from roma_sfm import MatchResult, random_matcher
from roma_sfm.refine import refine_matches, to_gray, warp_jacobian
from roma_sfm.pipelines.matchers import matcher_signature


def texture(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """A smooth random texture (uint8), rich enough for patches to lock onto."""
    rng = np.random.default_rng(seed)
    x = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    x = (x - x.min()) / (x.max() - x.min()) * 255
    return x.astype(np.uint8)


def affine_pair(M: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A and B = A warped by the 2x3 affine M (B px = M [A px; 1], OpenCV's integer-centre pixels)."""
    A = texture(seed=seed)
    B = cv2.warpAffine(A, M, (A.shape[1], A.shape[0]), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    return A, B


def colmap_map(M: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The affine M (integer-centre convention) applied to COLMAP-convention pixels."""
    return ((x - 0.5) @ M[:, :2].T + M[:, 2] + 0.5).astype(np.float32)


def points(n: int, margin: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform((margin, margin), (320 - margin, 240 - margin), (n, 2)).astype(np.float32)


@pytest.mark.parametrize("scale", [1.0, 1.4, 0.7])
def test_matches_a_pixel_or_two_off_come_back_to_the_true_position(scale):
    t = np.deg2rad(10)
    R = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    c = np.array([160.0, 120.0])
    M = np.c_[R, c - R @ c + (0.3, -0.2)]
    A, B = affine_pair(M)
    ka = points(300, 50)
    truth = colmap_map(M, ka)
    start = truth + np.random.default_rng(2).normal(0, 1.0, truth.shape).astype(np.float32)
    jac = warp_jacobian(lambda x: (colmap_map(M, x), None), ka)
    assert torch.allclose(jac, torch.as_tensor(R, dtype=torch.float32).expand(len(ka), 2, 2), atol=1e-4)
    out, shift = refine_matches(to_gray(A), to_gray(B), ka, start, jac)
    before = np.linalg.norm(start - truth, axis=1)
    after = np.linalg.norm(out - truth, axis=1)
    assert np.median(before) > 0.8
    assert np.median(after) < 0.1
    assert np.all(shift <= 4.0)


def test_refinement_ignores_exposure_and_contrast():
    M = np.array([[1.0, 0.0, 2.5], [0.0, 1.0, -1.5]])
    A, B = affine_pair(M, seed=3)
    B = np.clip(0.45 * B.astype(np.float32) + 90, 0, 255).astype(np.uint8)  # darker, flatter, brighter floor
    ka = points(200, 30)
    truth = colmap_map(M, ka)
    start = truth + np.float32(1.2)
    out, _ = refine_matches(to_gray(A), to_gray(B), ka, start, torch.eye(2).expand(len(ka), 2, 2))
    assert np.median(np.linalg.norm(out - truth, axis=1)) < 0.15


def test_flat_patches_and_runaway_matches_keep_their_position():
    A = texture()
    A[:, :100] = 128  # a flat band
    M = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ka = np.array([[50.0, 120.0], [200.0, 120.0]], np.float32)
    start = ka + np.float32(1.5)
    jac = torch.eye(2).expand(2, 2, 2)
    out, shift = refine_matches(to_gray(A), to_gray(A), ka, start, jac)
    assert np.array_equal(out[0], start[0]) and shift[0] == 0  # flat: not moved
    assert np.linalg.norm(out[1] - ka[1]) < 0.1  # textured: found
    out, shift = refine_matches(to_gray(A), to_gray(A), ka, start, jac, max_shift=1.0)
    assert np.array_equal(out, start) and np.all(shift == 0)  # the fit lies 2.1 px away: beyond max_shift


def test_to_gray_reads_any_bit_depth():
    rgb8 = np.full((4, 5, 3), 255, np.uint8)
    rgb16 = np.full((4, 5, 3), 65535, np.uint16)
    for x in (rgb8, rgb16, rgb8.astype(np.float32) / 255):
        g = to_gray(x)
        assert g.shape == (4, 5) and g.dtype == torch.float32
        assert torch.allclose(g, torch.ones(4, 5), atol=1e-5)


def test_the_matcher_hands_its_images_to_the_result_only_when_photometric():
    A = cv2.cvtColor(texture(seed=5), cv2.COLOR_GRAY2RGB)
    on = random_matcher(micro_config(), device="cpu", seed=1)
    off = random_matcher(micro_config(), device="cpu", seed=1, photometric=False)
    assert on.photometric and not off.photometric
    r_on, r_off = on.match(A, A), off.match(A, A)
    assert r_on.images is not None and r_on.images[0].shape == A.shape and r_off.images is None
    assert matcher_signature(on)["photometric"] is True and matcher_signature(off)["photometric"] is False


def test_sampling_refines_a_warp_that_is_off_when_the_images_come_with_it():
    d = np.array([3.0, -2.0])  # B = A moved by d px
    A = texture(seed=6)
    B = cv2.warpAffine(A, np.array([[1.0, 0.0, d[0]], [0.0, 1.0, d[1]]]), (320, 240), flags=cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REFLECT)
    h, w = 60, 80  # the warp's grid; its B ends are 1.3 px off the truth
    ys, xs = torch.meshgrid(-1 + (2 * torch.arange(h) + 1) / h, -1 + (2 * torch.arange(w) + 1) / w, indexing="ij")
    wrong = torch.tensor(d + 1.3)
    warp = torch.stack((xs, ys, xs + 2 * wrong[0] / 320, ys + 2 * wrong[1] / 240), dim=-1).float()
    cert = torch.ones(h, w)
    cert[:5], cert[-5:], cert[:, :5], cert[:, -5:] = 0, 0, 0, 0  # keep the samples off the borders
    rgb = lambda g: cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)
    raw = MatchResult(warp, cert, (320, 240), (320, 240))
    refined = replace(raw, images=(rgb(A), rgb(B)))
    ka0, kb0, _ = raw.sample(num=300, seed=0)
    ka1, kb1, _ = refined.sample(num=300, seed=0)
    assert np.array_equal(ka0, ka1)
    err0 = np.linalg.norm(kb0 - ka0 - d, axis=1)
    err1 = np.linalg.norm(kb1 - ka1 - d, axis=1)
    assert np.median(err0) == pytest.approx(1.3 * 2 ** 0.5, abs=1e-3)
    assert np.median(err1) < 0.1
