"""Render the project's own synthetic sample scene (no third-party photos).

A textured room corner (floor + two walls) with a box and a slanted panel, seen by ``num_views``
pinhole cameras on an arc, ray-cast with numpy + ``cv2.remap`` (2x supersampled, area-downscaled).

Writes ``<out>/images/*.jpg`` (JPEG with EXIF ``FocalLengthIn35mmFilm`` so the EXIF focal path is
exercised) and ``<out>/poses_gt.txt`` in the Strecha format of ``../shared/data/scenes``:
``name fx fy cx cy qw qx qy qz tx ty tz`` (world-to-camera, x_cam = R x_world + t, pixel centres at
integer coordinates, i.e. cx = (W - 1) / 2 for a centred principal point).

Usage: ``python sample_scenes/make_scene.py [--out sample_scenes/corner] [--views 8]``
Deterministic: the same arguments always produce the same images.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

WIDTH, HEIGHT = 480, 360
F35 = 32  # 35 mm-equivalent focal length in mm (EXIF is an integer)
FOCAL = F35 * np.hypot(WIDTH, HEIGHT) / np.hypot(36.0, 24.0)  # 443.7 px: 35 mm-equivalent is by the diagonal


def procedural_texture(seed: int, size: int = 1024) -> np.ndarray:
    """(size, size, 3) uint8: multi-scale colour noise + shapes + text: rich in corners and blobs."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    for cells, amp in [(4, 0.5), (16, 0.35), (64, 0.3), (256, 0.2)]:
        noise = rng.random((cells, cells, 3)).astype(np.float32)
        img += amp * cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    img = (img - img.min()) / (img.max() - img.min()) * 180 + 30
    img = img.astype(np.uint8).copy()
    for _ in range(600):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(6, 40))
        if kind == 0:
            cv2.circle(img, (x, y), r, color, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (x, y), (x + r, y + int(rng.integers(10, 60))), color, -1)
        else:
            x2, y2 = x + int(rng.integers(-150, 150)), y + int(rng.integers(-150, 150))
            cv2.line(img, (x, y), (x2, y2), color, int(rng.integers(2, 6)), cv2.LINE_AA)
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(0, size - 100, 2))
        text = "".join(chr(c) for c in rng.integers(65, 91, 4))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.putText(img, text, (x, y + 60), cv2.FONT_HERSHEY_SIMPLEX, 2.0, color, 4, cv2.LINE_AA)
    return img


def scene_planes() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rectangles (origin, u, v) in world coordinates (z up); points are o + a u + b v, a, b in [0, 1]."""
    P = lambda *x: np.array(x, np.float64)  # noqa: E731
    planes = [
        (P(-3, -3, 0), P(8, 0, 0), P(0, 8, 0)),  # floor
        (P(-3, -3, 4.5), P(8, 0, 0), P(0, 0, -4.5)),  # back wall (y = -3)
        (P(-3, 5, 4.5), P(0, -8, 0), P(0, 0, -4.5)),  # left wall (x = -3)
    ]
    # box 1.2 x 1.2 x 1.0 centred at (0.3, 0.2)
    x0, x1, y0, y1, h = -0.3, 0.9, -0.4, 0.8, 1.0
    planes += [
        (P(x0, y0, h), P(x1 - x0, 0, 0), P(0, y1 - y0, 0)),  # top
        (P(x0, y1, h), P(x1 - x0, 0, 0), P(0, 0, -h)),  # front (+y)
        (P(x1, y1, h), P(0, y0 - y1, 0), P(0, 0, -h)),  # right (+x)
        (P(x0, y0, h), P(0, y1 - y0, 0), P(0, 0, -h)),  # -x face
        (P(x1, y0, h), P(x0 - x1, 0, 0), P(0, 0, -h)),  # -y face
    ]
    # slanted panel leaning on the back wall
    planes.append((P(-2.4, -2.9, 1.8), P(1.4, 0, 0), P(0, 1.0, -1.8)))
    return planes


def look_at(center: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) for a camera at ``center`` looking at ``target`` (x right, y down, z fwd)."""
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ center


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(3,3) rotation -> (4,) quaternion (w, x, y, z), w >= 0."""
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


def render(R: np.ndarray, t: np.ndarray, K: np.ndarray, textures: list[np.ndarray], size=(WIDTH, HEIGHT),
           supersample: int = 2) -> np.ndarray:
    """Ray-cast the planes: (H, W, 3) uint8 RGB. K uses pixel centres at integer coordinates."""
    W, H = size
    s = supersample
    # sub-pixel sample positions of the supersampled grid, in output-pixel coordinates
    xs = (np.arange(W * s) + 0.5) / s - 0.5
    ys = (np.arange(H * s) + 0.5) / s - 0.5
    u, v = np.meshgrid(xs, ys)
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    rays = rays_cam @ R  # world directions (R^T d)
    C = -R.T @ t
    depth = np.full(u.shape, np.inf)
    out = np.zeros(u.shape + (3,), np.float32)
    out[:] = (200, 220, 240)  # sky, never visible from the default cameras
    for (o, pu, pv), tex in zip(scene_planes(), textures):
        n = np.cross(pu, pv)
        denom = rays @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = ((o - C) @ n) / denom
        P = C + lam[..., None] * rays
        # local coordinates by least squares on the (u, v) basis
        G = np.linalg.inv(np.array([[pu @ pu, pu @ pv], [pu @ pv, pv @ pv]]))
        d = P - o
        ab = np.stack([d @ pu, d @ pv], -1) @ G.T
        hit = (lam > 1e-6) & (lam < depth) & (ab[..., 0] >= 0) & (ab[..., 0] <= 1) & (ab[..., 1] >= 0) & (ab[..., 1] <= 1)
        if not hit.any():
            continue
        th, tw = tex.shape[:2]
        mx = (ab[..., 0] * (tw - 1)).astype(np.float32)
        my = (ab[..., 1] * (th - 1)).astype(np.float32)
        sampled = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        # mild Lambertian shading so that faces of the box differ
        shade = 0.75 + 0.25 * abs(n[2]) / np.linalg.norm(n)
        out[hit] = sampled[hit] * shade
        depth[hit] = lam[hit]
    img = cv2.resize(out, (W, H), interpolation=cv2.INTER_AREA)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def camera_poses(num_views: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cameras on an arc around the corner, all looking near the box."""
    poses = []
    target = np.array([-0.3, -0.3, 0.7])
    for i, az in enumerate(np.linspace(15, 75, num_views)):
        a = np.deg2rad(az)
        r = 5.2 + 0.3 * np.sin(i)
        center = np.array([r * np.cos(a) - 1.0, r * np.sin(a) - 1.0, 2.2 + 0.3 * np.cos(1.7 * i)])
        poses.append(look_at(center, target + 0.2 * np.array([np.sin(i), np.cos(i), 0])))
    return poses


def make_scene(out: Path, num_views: int = 8, quality: int = 90) -> None:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    textures = [procedural_texture(seed) for seed in range(len(scene_planes()))]
    K = np.array([[FOCAL, 0, (WIDTH - 1) / 2], [0, FOCAL, (HEIGHT - 1) / 2], [0, 0, 1]])
    lines = []
    for i, (R, t) in enumerate(camera_poses(num_views)):
        name = f"{i:04d}.jpg"
        img = render(R, t, K, textures)
        exif = Image.Exif()
        exif[0x010F] = "roma-sfm"  # Make
        exif[0x0110] = "synthetic"  # Model
        exif.get_ifd(0x8769)[0xA405] = F35  # FocalLengthIn35mmFilm
        Image.fromarray(img).save(out / "images" / name, quality=quality, exif=exif)
        q = rotmat_to_qvec(R)
        vals = [K[0, 0], K[1, 1], K[0, 2], K[1, 2], *q, *t]
        lines.append(name + " " + " ".join(f"{v:.9f}" for v in vals))
    (out / "poses_gt.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "corner")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    make_scene(args.out, args.views, args.quality)
    print(f"wrote {args.views} views to {args.out}")
