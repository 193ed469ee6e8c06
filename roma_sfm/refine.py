"""Photometric refinement of sampled matches: each match's end in B is moved to where a patch around
its start in A fits best.

Why: the refiners of a small matcher trained on a CPU place matches a fraction of a pixel to a few
pixels off, and two-view geometry and bundle adjustment feel every fraction. The dense warp already
says where each patch goes and how it deforms (its local affine map), so a few Gauss-Newton steps of
Lucas-Kanade on the original images recover the sub-pixel position, without training. Patches are
compared after zero-mean, unit-variance normalisation (so light and exposure changes do not bias
them), the image seen at the larger scale is blurred to the other's (so that both show the same
frequencies), and a match that would move farther than ``max_shift`` keeps its position: that is
no longer sub-pixel work but another match. Nor is a match across a zoom beyond ``max_scale``
refined: there one patch is a blurred enlargement of the other, and the fit got worse.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

confs = {
    "default": {
        "radius": 5,  # patch of (2 radius + 1)^2 samples, 1 px apart in the finer image
        "iters": 5,  # Gauss-Newton steps at most
        "tol": 0.02,  # px: a match whose step is smaller stops
        "max_shift": 4.0,  # px: a match that moves farther keeps its position
        "jacobian_step": 2.0,  # px in A: central differences of the warp for its local affine map
        "antialias": 0.6,  # blur (px) of the finer image per unit of sqrt(scale^2 - 1)
        "min_std": 0.001,  # intensity std below which a patch counts as flat (it is not moved)
        # a match whose local map scales lengths by more than this (or less than its inverse) is not
        # refined: across such zooms the two patches differ in blur, not only in position
        "max_scale": 2.5,
    },
}
DEFAULTS = confs["default"]


def to_gray(rgb: np.ndarray) -> torch.Tensor:
    """(H,W,3) or (H,W) image of any integer or float type -> (H,W) float32 luminance in [0,1]."""
    x = np.asarray(rgb)
    scale = float(np.iinfo(x.dtype).max) if np.issubdtype(x.dtype, np.integer) else 1.0
    x = x.astype(np.float32) / scale
    if x.ndim == 3:
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    return torch.from_numpy(np.ascontiguousarray(x))


def blurred(img: torch.Tensor, sigma: float) -> np.ndarray:
    """(H,W) -> (H,W) float32 array, Gaussian of std ``sigma`` px (none at 0), edges replicated (OpenCV)."""
    x = img.numpy()
    return cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE) if sigma > 0 else x


def with_gradients(img: np.ndarray) -> torch.Tensor:
    """(H,W) -> (3,H,W): the image, d/dx and d/dy (Sobel / 8, per pixel; edges replicated)."""
    d = [cv2.Sobel(img, cv2.CV_32F, dx, 1 - dx, ksize=3, scale=1 / 8, borderType=cv2.BORDER_REPLICATE)
         for dx in (1, 0)]
    return torch.from_numpy(np.stack([img, *d]))


def sample(img: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (C,H,W) at (...,2) pixel positions (COLMAP convention: pixel centres at
    +0.5) -> (C,...); edges replicated."""
    c, h, w = img.shape
    g = torch.stack((2 * xy[..., 0] / w - 1, 2 * xy[..., 1] / h - 1), dim=-1)
    out = F.grid_sample(img[None], g.reshape(1, 1, -1, 2), mode="bilinear", align_corners=False,
                        padding_mode="border")
    return out.reshape(c, *xy.shape[:-1])


def warp_jacobian(lookup: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], kpts_A: np.ndarray,
                  step: float = DEFAULTS["jacobian_step"]) -> torch.Tensor:
    """d x_B / d x_A (N,2,2) at kpts_A (N,2) px, by central differences of ``lookup`` (A px -> (B px, certainty),
    e.g. :meth:`roma_sfm.matcher.MatchResult.lookup`) ``step`` px apart."""
    ka = np.asarray(kpts_A, np.float32).reshape(-1, 2)
    cols = []
    for d in (np.array([step, 0.0], np.float32), np.array([0.0, step], np.float32)):
        cols.append((lookup(ka + d)[0] - lookup(ka - d)[0]) / (2 * step))
    return torch.from_numpy(np.stack(cols, axis=-1).astype(np.float32))


def _normalise(x: torch.Tensor, min_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (N,P) -> zero mean, unit variance, and each row's std (floored at ``min_std``)."""
    mu = x.mean(dim=1, keepdim=True)
    x = x - mu
    sd = x.square().mean(dim=1, keepdim=True).sqrt_().clamp_min_(min_std)
    return x / sd, sd


@torch.inference_mode()
def refine_matches(gray_A: torch.Tensor, gray_B: torch.Tensor, kpts_A: np.ndarray, kpts_B: np.ndarray,
                   jacobian: torch.Tensor, radius: int = DEFAULTS["radius"], iters: int = DEFAULTS["iters"],
                   tol: float = DEFAULTS["tol"], max_shift: float = DEFAULTS["max_shift"],
                   antialias: float = DEFAULTS["antialias"], min_std: float = DEFAULTS["min_std"],
                   max_scale: float = DEFAULTS["max_scale"]) -> tuple[np.ndarray, np.ndarray]:
    """Move each match's B end to where the patch around its A end fits (translation Lucas-Kanade).

    gray_A (Ha,Wa), gray_B (Hb,Wb) in [0,1]; kpts_A, kpts_B (N,2) px (COLMAP convention);
    jacobian (N,2,2) the local affine map A -> B (:func:`warp_jacobian`). The patch is sampled
    1 px apart in whichever image shows it larger and mapped into B by the Jacobian.
    Returns kpts_B (N,2) float32, refined, and each match's shift (N,) px (0 where it was kept:
    a flat patch, a local map beyond ``max_scale``, a fit farther than ``max_shift``).
    """
    ka = torch.as_tensor(np.asarray(kpts_A, np.float32)).reshape(-1, 2)
    kb = torch.as_tensor(np.asarray(kpts_B, np.float32)).reshape(-1, 2)
    n = len(ka)
    if n == 0:
        return kb.numpy().copy(), np.zeros(0, np.float32)
    jac = jacobian.float().reshape(n, 2, 2)
    det = (jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]).abs()
    regular = (det > max_scale ** -2) & (det < max_scale ** 2)  # a large zoom, or a collapsed warp
    if not bool(regular.any()):
        return kb.numpy().copy(), np.zeros(n, np.float32)
    det = det.clamp(max_scale ** -2, max_scale ** 2)
    scale = float(det[regular].sqrt().median())  # B's scale over A's, for the pair
    A = torch.from_numpy(blurred(gray_A, antialias * max(0.0, scale ** -2 - 1) ** 0.5))
    stack_B = with_gradients(blurred(gray_B, antialias * max(0.0, scale ** 2 - 1) ** 0.5))[None]
    o = torch.arange(-radius, radius + 1, dtype=torch.float32)
    oy, ox = torch.meshgrid(o, o, indexing="ij")
    grid = torch.stack((ox.reshape(-1), oy.reshape(-1)), dim=-1)  # (P,2)
    off_A = grid[None] * (1 / det.sqrt()).clamp(max=1.0)[:, None, None]  # 1 px apart in the finer image
    T, sd_T = _normalise(sample(A[None], ka[:, None] + off_A)[0], min_std)
    hb, wb = gray_B.shape
    to_unit = torch.tensor([2 / wb, 2 / hb])  # px -> grid_sample's coordinates (align_corners=False)
    off_B = torch.einsum("nij,npj->npi", jac, off_A) * to_unit  # (N,P,2)
    start = kb * to_unit - 1
    t = torch.zeros_like(kb)
    active = torch.nonzero((sd_T[:, 0] > min_std) & regular).reshape(-1)
    P = grid.shape[0]
    for _ in range(iters):
        if len(active) == 0:
            break
        g = off_B[active] + (start[active] + t[active] * to_unit)[:, None]
        S = F.grid_sample(stack_B, g[None], mode="bilinear", align_corners=False, padding_mode="border")[0]
        S = S.permute(1, 0, 2)  # (n,3,P): intensity, d/dx, d/dy
        # every sum the step needs, from three reductions: means, second moments, moments with T
        mu = S.mean(dim=2)  # (n,3)
        C = torch.bmm(S, S.transpose(1, 2)) / P - mu[:, :, None] * mu[:, None, :]  # (n,3,3) covariances
        ST = torch.bmm(S, T[active, :, None])[..., 0] / P  # (n,3); T has zero mean
        var = C[:, 0, 0].clamp_min(min_std ** 2)
        # normalised I_n = (I - mu_I) / sd and gradients g_n = (g - mu_g) / sd; residual I_n - T
        a, b, c = C[:, 1, 1] / var, C[:, 1, 2] / var, C[:, 2, 2] / var
        ex = -(C[:, 1, 0] / var - ST[:, 1] / var.sqrt())
        ey = -(C[:, 2, 0] / var - ST[:, 2] / var.sqrt())
        inv = 1 / (a * c - b * b + 1e-6 * (a + c) + 1e-12)
        step = torch.stack(((c * ex - b * ey) * inv, (a * ey - b * ex) * inv), dim=-1)
        norm = step.norm(dim=-1, keepdim=True)
        step = step * (norm.clamp(max=1.0) / norm.clamp_min(1e-12))  # at most 1 px a step
        t[active] += step
        active = active[norm[:, 0] > tol]
    t[~(t.norm(dim=-1) <= max_shift)] = 0  # also NaN
    return (kb + t).numpy(), t.norm(dim=-1).numpy()
