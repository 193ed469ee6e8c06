"""Training pairs with dense ground truth.

Every dataset returns a dict of tensors::

    im_A, im_B : (3,H,W) float32, ImageNet-normalised RGB
    warp       : (H,W,2) float32, normalised (x,y) in B of each A pixel centre (pixel_grid convention)
    mask       : (H,W)   float32 in {0,1}: 1 = the A pixel is visible in B (inside, not occluded)

(a) :class:`SyntheticPairs`: two views of one photo, related by random homographies (rotation,
    scale 0.5-2x, perspective, translation) plus a thin-plate-spline non-planar warp, random
    occluders and independent photometric changes. Deterministic: sample ``i`` uses
    ``np.random.default_rng(seed + i)`` only.
(b) :class:`DepthPairs`: MegaDepth / ScanNet-style pairs (depth + intrinsics + relative pose) with
    a depth-consistency mask; see :func:`read_depth_index` for the index format.

Pixel coordinates in this module: OpenCV's (integer = pixel centre) unless stated otherwise;
intrinsics in :class:`DepthPairs` follow COLMAP (image corner at 0, pixel centres at i + 0.5).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..io import list_images, read_image
from ..matcher import to_tensor as image_tensor

EVAL_ONLY = ("scenes", "pairs", "homography", "demo")

PathLike = Union[str, os.PathLike]


def log_uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    """A draw in [bounds[0], bounds[1]] uniform in log scale (zoom and gain factors: x and 1/x alike)."""
    return math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1])))


def check_training_path(path: PathLike) -> None:
    """Refuse the evaluation folders of the shared data layout (data/{scenes,pairs,homography,demo})."""
    p = Path(path).resolve()
    for parent in p.parents:
        if (parent / "train").is_dir() and (parent / "scenes").is_dir() and (parent / "homography").is_dir():
            rel = p.relative_to(parent).parts
            if rel and rel[0] in EVAL_ONLY:
                raise ValueError(f"{path} is evaluation data: never train or validate on it")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 RGB -> (3,H,W) ImageNet-normalised float32: the matcher's input at the image's size."""
    return image_tensor(img, img.shape[:2])


def to_normalised(xy: np.ndarray, w: int, h: int) -> np.ndarray:
    """OpenCV pixel coordinates (centre of pixel i at i) -> normalised (-1 + 1/w ... 1 - 1/w)."""
    return np.stack(((2 * xy[..., 0] + 1) / w - 1, (2 * xy[..., 1] + 1) / h - 1), axis=-1)


# --------------------------------------------------------------------------------------------
# (a) synthetic pairs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    crop_frac: tuple[float, float] = (0.45, 0.95)  # side of A's view / shorter side of the photo
    rot_A: float = 10.0  # degrees, A's own rotation in the photo
    rot_rel: float = 30.0  # degrees, B relative to A
    scale_rel: tuple[float, float] = (0.5, 2.0)  # zoom of B relative to A, log-uniform
    shift_rel: float = 0.25  # translation of B's view, fraction of A's view side
    perspective: float = 0.12  # corner jitter, fraction of B's view side
    # tilt (as in ASIFT): B stretched by sqrt(t) along a random direction and shrunk by sqrt(t)
    # across it, t log-uniform in [1, tilt]; oblique views of facades and planar scenes look so
    tilt_prob: float = 0.0
    tilt: float = 1.0
    tps_prob: float = 0.6
    tps_grid: int = 4  # control points per side
    tps_sigma: float = 0.025  # displacement std, fraction of the output width
    occluders: tuple[int, int] = (0, 3)  # per image, inclusive
    occluder_size: tuple[float, float] = (0.08, 0.3)  # fraction of the output side
    photometric: bool = True
    min_overlap: float = 0.25  # resample geometry (same rng stream) below this covisible fraction
    max_overlap: float = 1.0  # ... or above this one (negatives ask for ~0)
    min_B_in_photo: float = 0.0  # ... or when less of B's view than this shows the photo
    max_tries: int = 8
    # negatives teach matchability "no match": B shows another photo, or a far part of the same
    # photo (same textures, the hard case of repeated facades); their mask is all / mostly zero
    neg_prob: float = 0.0
    neg_same_photo: float = 0.5  # share of negatives cut from A's own photo


def _affine(A: np.ndarray, center_out: np.ndarray, center_src: np.ndarray) -> np.ndarray:
    """3x3 map output -> source: q = c_src + A (p - c_out), A a 2x2 matrix."""
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = center_src - A @ center_out
    return M


def _similarity(center_out: np.ndarray, center_src: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """3x3 map output -> source: q = c_src + scale * R(angle) (p - c_out)."""
    c, s = math.cos(angle), math.sin(angle)
    return _affine(np.array([[c, -s], [s, c]]) * scale, center_out, center_src)


def _tilt(center: np.ndarray, t: float, phi: float) -> np.ndarray:
    """3x3 area-preserving stretch about center: sqrt(t) along direction phi, 1/sqrt(t) across."""
    c, s = math.cos(phi), math.sin(phi)
    R = np.array([[c, -s], [s, c]])
    return _affine(R @ np.diag([math.sqrt(t), 1.0 / math.sqrt(t)]) @ R.T, center, center)


def tps_displacement(rng: np.random.Generator, h: int, w: int, n: int, sigma: float) -> np.ndarray:
    """Smooth random displacement (h,w,2) in pixels: a thin-plate spline through n x n jittered
    control points with N(0, sigma) displacements, zero affine drift kept small by construction."""
    g = (np.stack(np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n)), -1).reshape(-1, 2)
         + rng.uniform(-0.5, 0.5, (n * n, 2)) / (n - 1) * 0.5)
    g *= np.array([w - 1, h - 1])
    v = rng.normal(0.0, sigma, (n * n, 2))
    v -= v.mean(axis=0)  # no global shift: the homographies already do that

    def U(r2: np.ndarray) -> np.ndarray:
        return np.where(r2 > 0, 0.5 * r2 * np.log(np.maximum(r2, 1e-12)), 0.0)  # r^2 log r

    m = n * n
    K = U(((g[:, None] - g[None]) ** 2).sum(-1))
    P = np.concatenate((np.ones((m, 1)), g), axis=1)
    A = np.zeros((m + 3, m + 3))
    A[:m, :m], A[:m, m:], A[m:, :m] = K, P, P.T
    coef = np.linalg.solve(A + 1e-9 * np.eye(m + 3), np.concatenate((v, np.zeros((3, 2)))))
    # evaluate on a 4x coarser grid then upsample: the spline is smooth, this is 16x cheaper
    hs, ws = max(h // 4, 2), max(w // 4, 2)
    ys, xs = np.linspace(0, h - 1, hs), np.linspace(0, w - 1, ws)
    pts = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    Kp = U(((pts[:, None] - g[None]) ** 2).sum(-1))
    d = Kp @ coef[:m] + np.concatenate((np.ones((len(pts), 1)), pts), 1) @ coef[m:]
    d = d.reshape(hs, ws, 2).astype(np.float32)
    return cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR)


def _antialias(img: np.ndarray, zoom_out: float) -> np.ndarray:
    """Blur before resampling with more than one source pixel per output pixel."""
    if zoom_out <= 1.05:
        return img
    return cv2.GaussianBlur(img, (0, 0), 0.5 * math.sqrt(zoom_out**2 - 1))


def _draw_occluders(rng: np.random.Generator, img: np.ndarray, texture: np.ndarray, cfg: SynthConfig
                    ) -> np.ndarray:
    """Paint random shapes (flat colour or a texture patch) into img in place; returns their mask."""
    h, w = img.shape[:2]
    occ = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(cfg.occluders[0], cfg.occluders[1] + 1)):
        shape = np.zeros((h, w), np.uint8)
        size = rng.uniform(*cfg.occluder_size) * min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        kind = rng.integers(3)
        if kind == 0:
            cv2.ellipse(shape, (int(cx), int(cy)), (int(size / 2), int(size * rng.uniform(0.2, 0.6))),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
        elif kind == 1:
            k = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = size / 2 * rng.uniform(0.5, 1.0, k)
            poly = np.stack((cx + rad * np.cos(ang), cy + rad * np.sin(ang)), -1).astype(np.int32)
            cv2.fillPoly(shape, [poly], 1)
        else:
            x0, y0 = int(cx - size / 2), int(cy - size * 0.3)
            cv2.rectangle(shape, (x0, y0), (int(cx + size / 2), int(cy + size * 0.3)), 1, -1)
        if rng.random() < 0.5:
            th, tw = texture.shape[:2]
            oy, ox = int(rng.integers(0, max(th - h, 0) + 1)), int(rng.integers(0, max(tw - w, 0) + 1))
            fill = cv2.resize(texture[oy:oy + h, ox:ox + w], (w, h))
        else:
            fill = np.empty_like(img)
            fill[:] = rng.integers(0, 256, 3).astype(np.uint8)
        sel = shape.astype(bool)
        img[sel] = fill[sel]
        occ |= shape
    return occ


def photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Random brightness, contrast, gamma, colour gains, blur, noise and JPEG. uint8 -> uint8."""
    x = img.astype(np.float32) / 255.0
    x = x * rng.uniform(0.85, 1.15, 3).astype(np.float32)  # colour balance
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-0.12, 0.12)  # contrast, brightness
    x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.4)  # gamma
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape).astype(np.float32)
    out = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 91))])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def in_photo(H_B: np.ndarray, size: tuple[int, int], photo: tuple[int, int], n: int = 16) -> float:
    """Share of B's view (an n x n grid of its pixels) that samples inside the photo."""
    g = np.stack(np.meshgrid(np.linspace(0, size[1] - 1, n), np.linspace(0, size[0] - 1, n)), -1)
    q = cv2.perspectiveTransform(g.reshape(1, -1, 2), np.linalg.inv(H_B))[0]
    return float(((q[:, 0] >= 0) & (q[:, 0] <= photo[1] - 1) & (q[:, 1] >= 0) & (q[:, 1] <= photo[0] - 1)).mean())


def make_synthetic_pair(img: np.ndarray, rng: np.random.Generator, size: tuple[int, int],
                        cfg: SynthConfig = SynthConfig(), texture: Optional[np.ndarray] = None
                        ) -> dict[str, np.ndarray]:
    """One pair from one photo. img: (H0,W0,3) uint8 RGB, size: (H,W) of both outputs.

    A's pixels map to the photo through a similarity and an optional TPS displacement; B is a
    homography view of the photo. Returns im_A, im_B (H,W,3) uint8, warp (H,W,2) normalised,
    mask (H,W) bool.
    """
    H, W = size
    h0, w0 = img.shape[:2]
    texture = img if texture is None else texture
    c_out = np.array([(W - 1) / 2, (H - 1) / 2])
    corners = np.array([[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]], np.float32)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    for _ in range(cfg.max_tries):
        # A: a rotated crop of the photo, side L_A (photo px) spread over W output px
        L_A = rng.uniform(*cfg.crop_frac) * min(h0, w0)
        px_A = L_A / W  # photo pixels per A pixel
        half = np.array([L_A / 2, L_A * H / W / 2])
        c_A = np.array([rng.uniform(min(half[0], w0 / 2), max(w0 - half[0], w0 / 2)),
                        rng.uniform(min(half[1], h0 / 2), max(h0 - half[1], h0 / 2))])
        ang_A = math.radians(rng.uniform(-cfg.rot_A, cfg.rot_A))
        M_A = _similarity(c_out, c_A, ang_A, px_A)  # A pixel -> photo
        # B: A's view rotated, zoomed, shifted, then its corners jittered (perspective)
        zoom = log_uniform(rng, cfg.scale_rel)
        c_B = c_A + rng.uniform(-cfg.shift_rel, cfg.shift_rel, 2) * L_A
        ang_B = math.radians(rng.uniform(-cfg.rot_rel, cfg.rot_rel))
        M_B0 = _similarity(c_out, c_B, ang_A + ang_B, px_A / zoom)  # B pixel -> photo, before perspective
        if cfg.tilt_prob > 0 and rng.random() < cfg.tilt_prob:  # drawn only when enabled: same streams
            M_B0 = M_B0 @ _tilt(c_out, math.exp(rng.uniform(0.0, math.log(cfg.tilt))),
                                rng.uniform(0.0, math.pi))
        src_B = cv2.perspectiveTransform(corners[None].astype(np.float64), M_B0)[0]
        src_B += rng.uniform(-cfg.perspective, cfg.perspective, (4, 2)) * (L_A / zoom)
        H_B = cv2.getPerspectiveTransform(src_B.astype(np.float32), corners)  # photo -> B
        # A's sampling map (photo coordinates of every A pixel), TPS = non-planar deformation
        p = np.stack((xs, ys), -1)
        if rng.random() < cfg.tps_prob:
            p = p + tps_displacement(rng, H, W, cfg.tps_grid, rng.uniform(0.3, 1.0) * cfg.tps_sigma * W)
        q = p @ M_A[:2, :2].T.astype(np.float32) + M_A[:2, 2].astype(np.float32)
        qh = q @ H_B[:2, :2].T.astype(np.float32) + H_B[:2, 2].astype(np.float32)
        den = q @ H_B[2, :2].astype(np.float32) + np.float32(H_B[2, 2])
        b = qh / np.where(np.abs(den) < 1e-8, 1e-8, den)[..., None]
        # A pixels must sample the photo only (no border fill mixed in by the interpolation)
        mask = ((den > 0) & (q[..., 0] >= 0) & (q[..., 0] <= w0 - 1) & (q[..., 1] >= 0)
                & (q[..., 1] <= h0 - 1) & (b[..., 0] >= -0.5) & (b[..., 0] <= W - 0.5)
                & (b[..., 1] >= -0.5) & (b[..., 1] <= H - 0.5))
        if cfg.min_overlap <= mask.mean() <= cfg.max_overlap and (
                cfg.min_B_in_photo <= 0 or in_photo(H_B, (H, W), (h0, w0)) >= cfg.min_B_in_photo):
            break
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    im_A = cv2.remap(_antialias(img, px_A), q[..., 0], q[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    zoom_B = math.sqrt(abs(np.linalg.det(np.linalg.inv(H_B)[:2, :2])))  # photo px per B px, roughly
    im_B = cv2.warpPerspective(_antialias(img, zoom_B), H_B, (W, H), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    occ_A = _draw_occluders(rng, im_A, texture, cfg)
    occ_B = _draw_occluders(rng, im_B, texture, cfg)
    # an A pixel is invalid if it is covered in A, or if anything of its footprint in B is covered
    occ_B_at = cv2.remap(occ_B.astype(np.float32), b[..., 0], b[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask &= (occ_A == 0) & (occ_B_at < 1e-3)
    if cfg.photometric:
        im_A, im_B = photometric(rng, im_A), photometric(rng, im_B)
    return {"im_A": im_A, "im_B": im_B, "warp": to_normalised(b, W, H).astype(np.float32), "mask": mask}


def far_view(cfg: SynthConfig) -> SynthConfig:
    """The geometry of a same-photo negative: small crops, B shifted far from A, overlap ~0.
    The mask stays the true covisibility, so a residual sliver of overlap is supervised as such."""
    return replace(cfg, crop_frac=(0.3, 0.45), shift_rel=1.6, min_overlap=0.0, max_overlap=0.01,
                   min_B_in_photo=0.8, max_tries=32)


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:  # unusual formats / EXIF: the project's robust reader
        return read_image(path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def collect_images(roots: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
    """Sorted image files under one or several folders (evaluation folders refused)."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    files: list[Path] = []
    for r in roots:
        check_training_path(r)
        files += list_images(r)
    if not files:
        raise FileNotFoundError(f"no images under {list(map(str, roots))}")
    return files


class SyntheticPairs(Dataset):
    """Synthetic pairs from a folder of photos; sample i is a pure function of (seed + i)."""

    def __init__(self, roots: Union[PathLike, Sequence[PathLike]], size: tuple[int, int] = (224, 224),
                 seed: int = 0, length: int = 10**8, cfg: SynthConfig = SynthConfig(), cache: bool = True):
        self.files = collect_images(roots)
        self.size = tuple(size)
        self.seed = seed
        self.length = length
        self.cfg = cfg
        self._cache: Optional[dict[int, np.ndarray]] = {} if cache else None  # BSDS: ~0.5 MB each

    def __len__(self) -> int:
        return self.length

    def _image(self, i: int) -> np.ndarray:
        if self._cache is None:
            return read_rgb(self.files[i])
        if i not in self._cache:
            self._cache[i] = read_rgb(self.files[i])
        return self._cache[i]

    def pair(self, index: int) -> dict[str, np.ndarray]:
        """Sample ``index`` as arrays: im_A, im_B (H,W,3) uint8 RGB, warp (H,W,2), mask (H,W) bool."""
        rng = np.random.default_rng(self.seed + int(index))
        n = len(self.files)
        i_img = int(rng.integers(n))
        img = self._image(i_img)
        texture = self._image(int(rng.integers(n)))
        # drawn only when enabled, so configs without negatives keep their exact sample streams
        neg = self.cfg.neg_prob > 0 and rng.random() < self.cfg.neg_prob
        if not neg:
            s = make_synthetic_pair(img, rng, self.size, self.cfg, texture)
        elif rng.random() < self.cfg.neg_same_photo:
            s = make_synthetic_pair(img, rng, self.size, far_view(self.cfg), texture)
        else:
            other = self._image((i_img + 1 + int(rng.integers(max(n - 1, 1)))) % n)
            s = make_synthetic_pair(img, rng, self.size, self.cfg, texture)
            s["im_B"] = make_synthetic_pair(other, rng, self.size, self.cfg, texture)["im_B"]
            s["mask"] = np.zeros_like(s["mask"])
        return s

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.pair(index)
        return {"im_A": to_tensor(s["im_A"]), "im_B": to_tensor(s["im_B"]),
                "warp": torch.from_numpy(s["warp"]), "mask": torch.from_numpy(s["mask"].astype(np.float32))}


# --------------------------------------------------------------------------------------------
# (b) depth-based pairs
# --------------------------------------------------------------------------------------------


def warp_from_depth(depth_A: torch.Tensor, depth_B: torch.Tensor, T_AtoB: torch.Tensor, K_A: torch.Tensor,
                    K_B: torch.Tensor, rel_depth_threshold: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense GT warp A->B from depth, intrinsics and relative pose.

    depth_A: (B,h,w), depth_B: (B,h2,w2) (z-depth, <= 0 = unknown), T_AtoB: (B,4,4) with
    x_B = R x_A + t, K_A / K_B: (B,3,3) in the COLMAP convention for *these* depth maps' sizes
    (pixel i has its centre at i + 0.5). Returns warp (B,h,w,2) normalised in B and mask (B,h,w)
    bool: depth known in A, lands inside B, in front of B, and B's depth there agrees with the
    projected depth within ``rel_depth_threshold`` (relative), i.e. not occluded.
    """
    b, h, w = depth_A.shape
    h2, w2 = depth_B.shape[-2:]
    dt = torch.float64 if depth_A.dtype == torch.float64 else torch.float32
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dt, device=depth_A.device) + 0.5,
                            torch.arange(w, dtype=dt, device=depth_A.device) + 0.5, indexing="ij")
    pix = torch.stack((xs, ys, torch.ones_like(xs)), -1).reshape(1, -1, 3)  # (1,hw,3)
    rays = pix @ torch.linalg.inv(K_A.to(dt)).transpose(1, 2)  # (B,hw,3) with z = 1
    X_A = rays * depth_A.to(dt).reshape(b, -1, 1)
    X_B = X_A @ T_AtoB[:, :3, :3].to(dt).transpose(1, 2) + T_AtoB[:, None, :3, 3].to(dt)
    z = X_B[..., 2]
    uv = X_B @ K_B.to(dt).transpose(1, 2)
    uv = uv[..., :2] / z.clamp(min=1e-8)[..., None]  # COLMAP pixel coordinates in B
    grid = torch.stack((2 * uv[..., 0] / w2 - 1, 2 * uv[..., 1] / h2 - 1), -1)  # normalised
    d_B = F.grid_sample(depth_B[:, None].to(dt), grid[:, None], mode="bilinear", align_corners=False)
    d_B = d_B.reshape(b, -1)
    inside = (grid.abs() <= 1).all(-1)
    consistent = (d_B > 0) & ((z - d_B).abs() < rel_depth_threshold * d_B)
    mask = (depth_A.reshape(b, -1) > 0) & (z > 0) & inside & consistent
    return grid.reshape(b, h, w, 2).float(), mask.reshape(b, h, w)


def load_depth(path: PathLike) -> np.ndarray:
    """.npy / .npz ('depth' or first array) / .h5 ('depth' dataset, MegaDepth) / 16-bit .png
    (millimetres, ScanNet) -> float32 (h,w) metres-or-whatever, 0 = unknown."""
    path = Path(path)
    suf = path.suffix.lower()
    if suf == ".npy":
        d = np.load(path)
    elif suf == ".npz":
        z = np.load(path)
        d = z["depth"] if "depth" in z else z[z.files[0]]
    elif suf in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            d = f["depth"][()]
    elif suf == ".png":
        d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float32) / 1000.0
    else:
        raise ValueError(f"unsupported depth file {path}")
    d = np.asarray(d, dtype=np.float32)
    return np.where(np.isfinite(d), d, 0.0).astype(np.float32)


@dataclass
class DepthPair:
    image_A: Path
    image_B: Path
    depth_A: Path
    depth_B: Path
    K_A: np.ndarray  # (3,3), COLMAP convention, for the image file's own size
    K_B: np.ndarray
    T_AtoB: np.ndarray  # (4,4), x_B = R x_A + t


def read_depth_index(path: PathLike) -> list[DepthPair]:
    """Read a depth-pair index: a text file, one pair per line, whitespace separated::

        image_A image_B depth_A depth_B  K_A(9, row-major)  K_B(9)  T_AtoB(16, row-major)

    (4 paths + 34 numbers). Paths are relative to the index file's folder. K_* use the COLMAP
    convention (image corner at 0) for the *image files'* sizes; depth maps may have another size
    (their intrinsics are rescaled). T_AtoB maps camera-A coordinates to camera-B coordinates.
    Lines starting with '#' and blank lines are ignored.
    """
    path = Path(path)
    check_training_path(path)
    root = path.parent
    pairs = []
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        f = line.split()
        if not f or f[0].startswith("#"):
            continue
        if len(f) != 38:
            raise ValueError(f"{path}:{ln}: expected 38 fields, got {len(f)}")
        v = np.array(f[4:], dtype=np.float64)
        pairs.append(DepthPair(*(root / x for x in f[:4]), v[:9].reshape(3, 3), v[9:18].reshape(3, 3),
                               v[18:].reshape(4, 4)))
    return pairs


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics after resizing an image by (sx, sy) (COLMAP convention: exact)."""
    return np.diag([sx, sy, 1.0]) @ K


class DepthPairs(Dataset):
    """Pairs from a depth index (see :func:`read_depth_index`), resized to ``size`` (H,W).

    The GT is computed on the output grid: A's depth is resized (nearest, no mixing across
    depth edges) to (H,W); B's depth stays at its own size and is sampled bilinearly, so the
    relative-depth test rejects mixed values at B's depth edges.
    """

    def __init__(self, index: PathLike, size: tuple[int, int] = (224, 224), rel_depth_threshold: float = 0.05):
        self.pairs = read_depth_index(index)
        self.size = tuple(size)
        self.threshold = rel_depth_threshold

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        p = self.pairs[index]
        H, W = self.size
        im_A, im_B = read_rgb(p.image_A), read_rgb(p.image_B)
        d_A, d_B = load_depth(p.depth_A), load_depth(p.depth_B)
        K_A = scale_intrinsics(p.K_A, W / im_A.shape[1], H / im_A.shape[0])  # output A grid
        K_B = scale_intrinsics(p.K_B, d_B.shape[1] / im_B.shape[1], d_B.shape[0] / im_B.shape[0])  # B depth grid
        d_A = cv2.resize(d_A, (W, H), interpolation=cv2.INTER_NEAREST)
        warp, mask = warp_from_depth(torch.from_numpy(d_A)[None], torch.from_numpy(d_B)[None],
                                     torch.from_numpy(p.T_AtoB)[None], torch.from_numpy(K_A)[None],
                                     torch.from_numpy(K_B)[None], self.threshold)
        im_A = cv2.resize(im_A, (W, H), interpolation=cv2.INTER_AREA)
        im_B = cv2.resize(im_B, (W, H), interpolation=cv2.INTER_AREA)
        return {"im_A": to_tensor(im_A), "im_B": to_tensor(im_B), "warp": warp[0], "mask": mask[0].float()}


class MixedPairs(Dataset):
    """Sample i comes from ``depth`` (any second dataset: depth pairs, rendered scenes) with
    probability ``p_depth`` (a random pair, drawn from (seed, i) so the order needs no state),
    else ``synthetic[i]``."""

    def __init__(self, synthetic: Dataset, depth: Optional[Dataset] = None, p_depth: float = 0.5, seed: int = 0):
        self.synthetic, self.depth, self.p_depth, self.seed = synthetic, depth, p_depth, seed

    def __len__(self) -> int:
        return len(self.synthetic)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.depth is not None and len(self.depth):
            rng = np.random.default_rng((self.seed, int(index)))
            if rng.random() < self.p_depth:
                return self.depth[int(rng.integers(len(self.depth)))]
        return self.synthetic[index]


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples; a batch mixing dense (warp, mask) and sparse (kpts_*) samples gets empty
    stand-ins for what a sample lacks, and ``dense`` (B,) saying which samples have a real warp."""
    if len({frozenset(s) for s in samples}) > 1:
        H, W = samples[0]["im_A"].shape[-2:]
        K = next(len(s["kpts_valid"]) for s in samples if "kpts_valid" in s)
        blank = {"warp": torch.zeros(H, W, 2), "mask": torch.zeros(H, W), "kpts_A": torch.zeros(K, 2),
                 "kpts_B": torch.zeros(K, 2), "kpts_valid": torch.zeros(K, dtype=torch.bool)}
        samples = [{**blank, **s, "dense": torch.tensor(float("warp" in s))} for s in samples]
    elif "warp" not in samples[0]:
        samples = [{**s, "warp": torch.zeros(*s["im_A"].shape[-2:], 2), "mask": torch.zeros(s["im_A"].shape[-2:]),
                    "dense": torch.tensor(0.0)} for s in samples]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
