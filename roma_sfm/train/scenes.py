"""Procedural 3-D training scenes: textured rectangles and boxes seen by two cameras.

Two-dimensional warps of one photo teach neither parallax nor occlusion, nor a change of light
between two exposures. Here a small world of planar rectangles (facades, boxes, a ground plane,
room walls, a far backdrop), each carrying a crop of a training photo as its texture, is ray-cast
from two random cameras (wide baselines, zoom, roll, tilt, small overlaps). Every pixel knows its
3-D point, so the ground-truth warp A->B and its mask come from geometry: a pixel is matchable only
if the same surface point is the first hit in B (occlusion, leaving the image and sky are not).
Light differs between the views (direction, colour, exposure, cast shadows), as between two
visits of a place. The spirit is FlyingThings3D's; the renderer is plain NumPy + OpenCV, fast
enough on a CPU core to feed training.

Conventions: world-to-camera x_cam = R X + t; pixels in the COLMAP convention (corner at 0, pixel
centres at i + 0.5); the returned warp is normalised like :mod:`.data` (``pixel_grid``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .data import collect_images, log_uniform, photometric, read_rgb, to_tensor

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class SceneConfig:
    layouts: tuple[str, ...] = ("street", "object", "room")  # drawn uniformly
    fov: tuple[float, float] = (40.0, 80.0)  # degrees, A's horizontal field of view
    zoom: tuple[float, float] = (0.25, 4.0)  # B's scale of the look-at point relative to A's, log-uniform
    max_yaw: float = 75.0  # degrees, B's viewing direction around the target relative to A's
    max_pitch: float = 25.0
    roll: float = 20.0  # degrees of in-plane rotation of B (uniform in +-roll) ...
    wide_roll_prob: float = 0.1  # ... or, with this probability, in +-90
    target_shift: float = 0.35  # B looks at A's target moved by this fraction of A's view width
    min_overlap: float = 0.05  # share of A's pixels matchable in B; resampled below it
    max_tries: int = 12
    neg_prob: float = 0.05  # B looks away from A's target: a pair with (almost) no overlap ...
    max_negative_overlap: float = 0.02  # ... resampled above this share (the mask stays the truth)
    shadow_prob: float = 0.6  # cast shadows from a directional light, per view
    light_change: float = 1.0  # 0: the same light in both views, 1: independent lights
    exposure: tuple[float, float] = (0.5, 1.6)  # global gain per view, log-uniform
    texture_frac: tuple[float, float] = (0.3, 1.0)  # side of a texture crop / photo side
    repeat_texture_prob: float = 0.3  # facades share one texture (repeated structure)
    # fy / fx of each view, log-uniform: a photo of another aspect stretched to the square input
    # (a portrait 3:4 beside a landscape 4:3 differ by 0.56x); (1, 1) keeps square pixels
    aspect: tuple[float, float] = (1.0, 1.0)


# --------------------------------------------------------------------------------------------
# geometry


@dataclass
class Rect:
    """A textured rectangle: points origin + a * e1 + b * e2, a, b in [0, 1]."""

    origin: np.ndarray  # (3,)
    e1: np.ndarray  # (3,)
    e2: np.ndarray  # (3,), orthogonal to e1
    texture: int  # index into the scene's texture list
    albedo: float = 1.0
    tiles: tuple[float, float] = (1.0, 1.0)  # texture repeats along e1, e2 (large walls and floors)


def look_at(center: np.ndarray, target: np.ndarray, roll: float = 0.0, up=(0.0, 0.0, 1.0)
            ) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of a camera at ``center`` looking at ``target`` (z forward, y down)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, np.array([1.0, 0.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack((x, y, z))
    c, s = math.cos(roll), math.sin(roll)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ R
    return R, -R @ center


def intrinsics(f: float, w: int, h: int) -> np.ndarray:
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def dot3(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,3) . (3,) -> (N,) without BLAS: a multi-threaded BLAS call this small stalls for
    milliseconds when training keeps the other cores busy."""
    v = np.asarray(v, np.float32)
    return x[:, 0] * v[0] + x[:, 1] * v[1] + x[:, 2] * v[2]


def transform3(x: np.ndarray, M: np.ndarray) -> np.ndarray:
    """(N,3) rows times M^T ((3,3)) -> (N,3), without BLAS (see :func:`dot3`)."""
    return np.stack([dot3(x, M[i]) for i in range(3)], -1)


def cast(origins: np.ndarray, dirs: np.ndarray, rects: Sequence[Rect], near: float = 1e-3,
         candidates: Optional[Sequence[Optional[np.ndarray]]] = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First hit of each ray. origins: (3,) or (N,3), dirs: (N,3) (any length); ``candidates[k]``:
    the only rays that can hit rect k (None: all), a culling hint.

    Returns s (N,) ray parameter of the hit (inf = none), id (N,) rect index (-1 = none) and the
    rect coordinates a, b (N,) of the hit.
    """
    n = len(dirs)
    s_best = np.full(n, np.inf, np.float32)
    ids = np.full(n, -1, np.int32)
    a_best = np.zeros(n, np.float32)
    b_best = np.zeros(n, np.float32)
    origins = np.asarray(origins, np.float32)
    shared = origins.ndim == 1  # one origin (a camera): the plane offset is a scalar per rect
    for k, r in enumerate(rects):
        nrm = np.cross(r.e1, r.e2).astype(np.float32)
        o_r = r.origin.astype(np.float32)
        sub = None if candidates is None else candidates[k]
        d = dirs if sub is None else dirs[sub]
        den = dot3(d, nrm)
        if shared:
            num = float((o_r - origins) @ nrm)
        else:
            num = float(o_r @ nrm) - dot3(origins if sub is None else origins[sub], nrm)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = num / den
        ok = (s > near) & (s < (s_best if sub is None else s_best[sub]))  # NaN compares False
        loc = np.flatnonzero(ok)
        if not len(loc):
            continue
        idx = loc if sub is None else sub[loc]
        s = s[loc]
        rel = (origins if shared else origins[idx]) + s[:, None] * dirs[idx] - o_r
        a = dot3(rel, r.e1 / (r.e1 @ r.e1))
        b = dot3(rel, r.e2 / (r.e2 @ r.e2))
        inside = (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        idx = idx[inside]
        s_best[idx] = s[inside]
        ids[idx] = k
        a_best[idx], b_best[idx] = a[inside], b[inside]
    return s_best, ids, a_best, b_best


def pixel_rays(K: np.ndarray, R: np.ndarray, w: int, h: int) -> np.ndarray:
    """World directions (h*w, 3) of the pixel centres, scaled so that their camera z is 1."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    pix = np.stack((xs, ys, np.ones_like(xs)), -1).reshape(-1, 3)
    return transform3(transform3(pix, np.linalg.inv(K)), R.T)


def _box(rng: np.random.Generator, center: np.ndarray, size: np.ndarray, yaw: float, tex: list[int]
         ) -> list[Rect]:
    """Five faces of a box standing on z = center[2] - size[2] / 2 (the bottom is never seen)."""
    c, s = math.cos(yaw), math.sin(yaw)
    ax = np.array([c, s, 0.0]) * size[0]
    ay = np.array([-s, c, 0.0]) * size[1]
    az = np.array([0.0, 0.0, size[2]])
    o = center - ax / 2 - ay / 2 - az / 2
    faces = [(o, ax, az), (o + ay, az, ax), (o, az, ay), (o + ax, ay, az), (o + az, ax, ay)]
    return [Rect(np.asarray(f0, float), np.asarray(f1, float), np.asarray(f2, float), int(rng.choice(tex)),
                 float(rng.uniform(0.7, 1.0))) for f0, f1, f2 in faces]


def _wall(o, e1, e2, tex: int, rng: np.random.Generator, tile: Optional[float] = None) -> Rect:
    """A rect whose texture repeats every ``tile`` world units (None: stretched once over it)."""
    e1, e2 = np.asarray(e1, float), np.asarray(e2, float)
    tiles = (1.0, 1.0) if tile is None else (max(np.linalg.norm(e1) / tile, 1.0), max(np.linalg.norm(e2) / tile, 1.0))
    return Rect(np.asarray(o, float), e1, e2, tex, float(rng.uniform(0.7, 1.0)), tiles)


@dataclass
class World:
    rects: list[Rect]
    target: np.ndarray  # (3,) the point the cameras look around
    distance: float  # A's distance to it
    heights: tuple[float, float]  # camera heights allowed
    bounds: np.ndarray  # (2,2) [[x0, y0], [x1, y1]]: the cameras stay in this box
    azimuths: tuple[float, float] = (0.0, 2 * math.pi)  # directions from the target to A


def make_world(rng: np.random.Generator, layout: str, num_textures: int, cfg: SceneConfig
               ) -> "World":
    """A random scene of the given layout ('street', 'room' or 'object')."""
    tex = list(rng.integers(0, num_textures, 8))
    rects: list[Rect] = []
    if layout == "street":
        ground = 80.0
        rects.append(_wall([-ground, -ground, 0], [2 * ground, 0, 0], [0, 2 * ground, 0], tex[0], rng,
                           rng.uniform(3, 12)))
        shared = int(tex[1]) if rng.random() < cfg.repeat_texture_prob else None
        x = -30.0
        while x < 30.0:  # a row of facades along y = depth, with jitter and gaps
            width = rng.uniform(4, 14)
            depth = rng.uniform(8, 14)
            height = rng.uniform(4, 15)
            ang = rng.uniform(-0.3, 0.3)
            e1 = np.array([math.cos(ang), math.sin(ang), 0]) * width
            t = shared if shared is not None else int(rng.integers(num_textures))
            rects.append(_wall([x, depth, 0], e1, [0, 0, height], t, rng))
            x += width * rng.uniform(0.9, 1.3)
        for _ in range(rng.integers(0, 5)):
            size = rng.uniform([0.5, 0.5, 0.5], [4, 3, 3])
            c = np.array([rng.uniform(-12, 12), rng.uniform(-2, 7), size[2] / 2])
            rects += _box(rng, c, size, rng.uniform(0, math.pi), tex)
        back = 120.0  # backdrop: distant hills / buildings
        rects.append(_wall([-back, back / 2, 0], [2 * back, 0, 0], [0, 0, 40], tex[2], rng, 60.0))
        bounds = np.array([[-40.0, -40.0], [40.0, 6.0]])  # cameras stay on the street side
        return World(rects, np.array([rng.uniform(-8, 8), 10.0, rng.uniform(1.5, 6)]), rng.uniform(6, 22),
                     (1.2, 8.0), bounds, (-math.pi + 0.4, -0.4))
    if layout == "room":
        w, d, h = rng.uniform(3, 7), rng.uniform(3, 7), rng.uniform(2.4, 3.5)
        rects += [_wall([-w, -d, 0], [2 * w, 0, 0], [0, 2 * d, 0], tex[0], rng, rng.uniform(1, 4)),  # floor
                  _wall([-w, -d, h], [2 * w, 0, 0], [0, 2 * d, 0], tex[1], rng, rng.uniform(2, 6)),  # ceiling
                  _wall([-w, d, 0], [2 * w, 0, 0], [0, 0, h], tex[2], rng),
                  _wall([-w, -d, 0], [2 * w, 0, 0], [0, 0, h], tex[3], rng),
                  _wall([w, -d, 0], [0, 2 * d, 0], [0, 0, h], tex[4], rng),
                  _wall([-w, -d, 0], [0, 2 * d, 0], [0, 0, h], tex[5], rng)]
        for _ in range(rng.integers(1, 6)):
            size = rng.uniform([0.3, 0.3, 0.3], [1.6, 1.2, 1.5])
            c = np.array([rng.uniform(-w + 1, w - 1), rng.uniform(-d + 1, d - 1), size[2] / 2])
            rects += _box(rng, c, size, rng.uniform(0, math.pi), tex)
        target = np.array([rng.uniform(-w / 2, w / 2), rng.uniform(-d / 2, d / 2), rng.uniform(0.5, 1.5)])
        bounds = np.array([[-w + 0.3, -d + 0.3], [w - 0.3, d - 0.3]])
        return World(rects, target, rng.uniform(1.5, min(w, d) * 0.9), (0.8, h - 0.5), bounds)
    # object: a few boxes and panels on a ground plane, walls far behind
    g = 30.0
    rects.append(_wall([-g, -g, 0], [2 * g, 0, 0], [0, 2 * g, 0], tex[0], rng, rng.uniform(1, 5)))
    for k, (o, e1) in enumerate((([-g, g, 0], [2 * g, 0, 0]), ([-g, -g, 0], [0, 2 * g, 0]),
                                 ([g, -g, 0], [0, 2 * g, 0]), ([-g, -g, 0], [2 * g, 0, 0]))):
        rects.append(_wall(o, e1, [0, 0, 12], tex[1 + k], rng, rng.uniform(8, 30)))
    for _ in range(rng.integers(1, 5)):
        size = rng.uniform([0.3, 0.3, 0.3], [1.5, 1.5, 1.5])
        c = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), size[2] / 2])
        rects += _box(rng, c, size, rng.uniform(0, math.pi), tex)
    bounds = np.array([[-g + 1, -g + 1], [g - 1, g - 1]])
    return World(rects, np.array([0.0, 0.0, rng.uniform(0.2, 0.8)]), rng.uniform(2.0, 6.0), (0.3, 4.0), bounds)


# --------------------------------------------------------------------------------------------
# rendering


@dataclass
class View:
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    depth: np.ndarray  # (h,w) camera z of the first hit, inf = sky
    ids: np.ndarray  # (h,w) rect index, -1 = sky
    points: np.ndarray  # (h*w,3) world points (garbage where ids < 0)


def trace(K: np.ndarray, R: np.ndarray, t: np.ndarray, size: tuple[int, int], rects: Sequence[Rect]) -> View:
    h, w = size
    C = -R.T @ t
    dirs = pixel_rays(K, R, w, h)
    s, ids, _, _ = cast(C, dirs, rects, candidates=[_pixels_under(r, K, R, t, size) for r in rects])
    pts = C.astype(np.float32) + np.where(np.isfinite(s), s, 0)[:, None] * dirs
    return View(K, R, t, s.reshape(h, w), ids.reshape(h, w), pts)


def _pixels_under(r: Rect, K: np.ndarray, R: np.ndarray, t: np.ndarray, size: tuple[int, int],
                  near: float = 1e-3) -> Optional[np.ndarray]:
    """Flat indices of the pixels in the image box of a rect in front of the camera; None when
    a corner is behind it (no box to cut), an empty array when the rect is out of view."""
    h, w = size
    corners = np.stack([r.origin, r.origin + r.e1, r.origin + r.e2, r.origin + r.e1 + r.e2]) @ R.T + t
    if (corners[:, 2] <= near).any():
        return None if (corners[:, 2] > near).any() else np.zeros(0, np.int64)
    uv = corners @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    x0, y0 = np.maximum(np.floor(uv.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(uv.max(0)).astype(int) + 1, [w, h])
    if x0 >= x1 or y0 >= y1:
        return np.zeros(0, np.int64)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    return (ys * w + xs).reshape(-1)


def _pyramid(img: np.ndarray, levels: int = 6) -> list[np.ndarray]:
    pyr = [img]
    while len(pyr) < levels and min(pyr[-1].shape[:2]) > 8:
        pyr.append(cv2.pyrDown(pyr[-1]))
    return pyr


def sample_texture(tex: np.ndarray, x: np.ndarray, y: np.ndarray, cols: int = 1024) -> np.ndarray:
    """Bilinear colours (N,3) at texture pixel coordinates x, y (N,) (OpenCV convention); the
    texture wraps around (tiling); points are laid out in rows of ``cols`` because cv2.remap takes at most 32767 rows."""
    n = len(x)
    rows = -(-n // cols)
    pad = rows * cols - n
    mx = np.pad(x.astype(np.float32), (0, pad)).reshape(rows, cols)
    my = np.pad(y.astype(np.float32), (0, pad)).reshape(rows, cols)
    return cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP).reshape(-1, 3)[:n]


def shade(view: View, rects: Sequence[Rect], textures: Sequence[list[np.ndarray]], rng: np.random.Generator,
          light: np.ndarray, light_rgb: np.ndarray, ambient: float, shadows: bool, sky: np.ndarray
          ) -> np.ndarray:
    """Colour of every pixel: texture (mip-mapped) x (ambient + diffuse x unshadowed), sky elsewhere."""
    h, w = view.ids.shape
    C = -view.R.T @ view.t
    out = sky.astype(np.float32).copy()
    ids = view.ids.reshape(-1)
    lit = np.ones(h * w, np.float32)
    if shadows:  # shadow rays from every other row and column, spread to the 2x2 block
        grid = np.zeros((h, w), bool)
        grid[::2, ::2] = True
        hit = np.flatnonzero((ids >= 0) & grid.reshape(-1))
        normals = np.stack([np.cross(r.e1, r.e2) / np.linalg.norm(np.cross(r.e1, r.e2)) for r in rects]
                           ).astype(np.float32)
        nrm = normals[ids[hit]]
        side = np.sign(((C.astype(np.float32) - view.points[hit]) * nrm).sum(-1, keepdims=True))
        origins = view.points[hit] + 1e-3 * side * nrm * np.linalg.norm(C - view.points[hit], axis=1, keepdims=True)
        s, _, _, _ = cast(origins, np.broadcast_to(light.astype(np.float32), origins.shape).copy(), rects)
        lit[hit] = np.isinf(s)
        coarse = lit.reshape(h, w)[::2, ::2]
        lit = np.repeat(np.repeat(coarse, 2, 0), 2, 1)[:h, :w].reshape(-1)
    flat = out.reshape(-1, 3)
    for k in np.unique(ids[ids >= 0]):
        r = rects[k]
        sel = ids == k
        rel = view.points[sel] - r.origin.astype(np.float32)
        a = dot3(rel, r.e1 / (r.e1 @ r.e1))
        b = dot3(rel, r.e2 / (r.e2 @ r.e2))
        pyr = textures[r.texture]
        th, tw = pyr[0].shape[:2]
        # mip level from the texels one pixel spans (at the rect's median distance and slant)
        n = np.cross(r.e1, r.e2)
        n /= np.linalg.norm(n)
        P = view.points[sel]
        dist = np.linalg.norm(P - C, axis=1)
        cosang = np.abs(dot3((P - C) / dist[:, None], n))
        texel = max(tw * r.tiles[0] / np.linalg.norm(r.e1), th * r.tiles[1] / np.linalg.norm(r.e2))
        foot = float(np.median(dist / view.K[0, 0] * texel / np.maximum(cosang, 0.1) ** 0.5))
        lvl = int(np.clip(math.floor(math.log2(max(foot, 1.0))), 0, len(pyr) - 1))
        tex = pyr[lvl]
        sc = 2.0 ** -lvl
        if r.e2[2] > 0:  # texture rows run down the world's up axis: photos stay upright on walls
            b = 1 - b
        col = sample_texture(tex, a * r.tiles[0] * tw * sc - 0.5, b * r.tiles[1] * th * sc - 0.5)
        facing = n if n @ (C - r.origin) > 0 else -n
        diffuse = max(float(facing @ light), 0.0)
        gain = r.albedo * (ambient + (1 - ambient) * diffuse * lit[sel])
        flat[sel] = col.astype(np.float32) * gain[:, None] * light_rgb
    return out


def project(view_B: View, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (N,3) -> B pixels (N,2) (COLMAP convention) and their camera z (N,)."""
    x = transform3(points, view_B.R) + view_B.t.astype(np.float32)
    z = x[:, 2]
    uv = transform3(x, view_B.K)
    return uv[:, :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[:, None], z


def covisible_warp(view_A: View, view_B: View, rel_depth: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """GT warp (h,w,2) normalised in B and mask (h,w) bool: inside B, in front of it, and the same
    rect is the first hit at B's nearest pixel (a plane never hides itself, so this is visibility
    up to a pixel; the loose depth test only guards against numerical accidents at grazing angles)."""
    h, w = view_A.ids.shape
    hb, wb = view_B.ids.shape
    uv, z = project(view_B, view_A.points)
    ix = np.floor(uv[:, 0]).astype(np.int64)
    iy = np.floor(uv[:, 1]).astype(np.int64)
    inside = (ix >= 0) & (ix < wb) & (iy >= 0) & (iy < hb) & (z > 0)
    ids_A = view_A.ids.reshape(-1)
    ok = inside & (ids_A >= 0)
    j = iy[ok] * wb + ix[ok]
    same = view_B.ids.reshape(-1)[j] == ids_A[ok]
    dB = view_B.depth.reshape(-1)[j]
    near = np.abs(dB - z[ok]) <= rel_depth * z[ok]
    m = np.zeros(h * w, bool)
    m[np.nonzero(ok)[0]] = same & near
    warp = np.stack((2 * uv[:, 0] / wb - 1, 2 * uv[:, 1] / hb - 1), -1)
    warp = np.where(np.isfinite(warp), warp, 2.0).astype(np.float32)
    return warp.reshape(h, w, 2), m.reshape(h, w)


def _random_light(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A direction towards the light (upper hemisphere), its colour and the ambient share."""
    el = math.radians(rng.uniform(15, 80))
    az = rng.uniform(0, 2 * math.pi)
    d = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    temp = rng.uniform(-1, 1)  # warm ... cool
    rgb = np.array([1 + 0.15 * temp, 1.0, 1 - 0.15 * temp]) * rng.uniform(0.9, 1.1, 3)
    return d, rgb.astype(np.float32), float(rng.uniform(0.25, 0.7))


def _sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    top = rng.uniform(120, 255, 3)
    bottom = np.clip(top + rng.uniform(-60, 40, 3), 0, 255)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).astype(np.float32)


def camera_pair(rng: np.random.Generator, world: World, size: tuple[int, int], cfg: SceneConfig, negative: bool):
    """Cameras (K, R, t) of A and B around the world's target: B zoomed, turned and rolled per ``cfg``."""
    h, w = size
    target, dist, heights, bounds = world.target, world.distance, world.heights, world.bounds
    az = rng.uniform(*world.azimuths)
    fov_A = math.radians(rng.uniform(*cfg.fov))
    f_A = w / 2 / math.tan(fov_A / 2)

    def place(tgt: np.ndarray, d: float, azimuth: float, pitch: float) -> np.ndarray:
        c = tgt + d * np.array([math.cos(pitch) * math.cos(azimuth), math.cos(pitch) * math.sin(azimuth),
                                math.sin(pitch)])
        c[2] = np.clip(c[2], *heights)
        c[:2] = np.clip(c[:2], bounds[0], bounds[1])
        return c

    C_A = place(target, dist, az, math.radians(rng.uniform(-5, 25)))
    R_A, t_A = look_at(C_A, target, math.radians(rng.uniform(-5, 5)))
    # B: around the target, another distance and focal: zoom is the scale of the target in B / in A
    zoom = log_uniform(rng, cfg.zoom)
    view_w = dist * w / f_A  # width of A's view at the target
    tgt_B = target + rng.uniform(-cfg.target_shift, cfg.target_shift, 3) * view_w * np.array([1, 1, 0.5])
    if negative:
        tgt_B = target + rng.choice([-1, 1], 3) * rng.uniform(2.0, 3.0, 3) * view_w * np.array([1, 1, 0.2])
    dist_B = dist * math.exp(rng.uniform(-0.7, 0.7))
    az_B = az + math.radians(rng.uniform(-cfg.max_yaw, cfg.max_yaw))
    C_B = place(tgt_B, dist_B, az_B, math.radians(rng.uniform(-5, cfg.max_pitch)))
    dist_B = float(np.linalg.norm(tgt_B - C_B))
    f_B = float(np.clip(zoom * f_A * dist_B / dist, w / 2 / math.tan(math.radians(60)), w / 2 / math.tan(math.radians(4))))
    roll = cfg.roll if rng.random() > cfg.wide_roll_prob else 90.0
    R_B, t_B = look_at(C_B, tgt_B, math.radians(rng.uniform(-roll, roll)))
    K_A, K_B = intrinsics(f_A, w, h), intrinsics(f_B, w, h)
    if tuple(cfg.aspect) != (1.0, 1.0):  # no draw at the default: older seeds render as before
        K_A[1, 1] *= log_uniform(rng, cfg.aspect)
        K_B[1, 1] *= log_uniform(rng, cfg.aspect)
    return (K_A, R_A, t_A), (K_B, R_B, t_B)


def render_pair(rng: np.random.Generator, textures: Sequence[list[np.ndarray]], size: tuple[int, int],
                cfg: SceneConfig = SceneConfig()) -> dict[str, np.ndarray]:
    """One pair: im_A, im_B (H,W,3) uint8 RGB, warp (H,W,2) normalised in B, mask (H,W) bool."""
    h, w = size
    negative = cfg.neg_prob > 0 and rng.random() < cfg.neg_prob
    for _ in range(cfg.max_tries):
        layout = str(rng.choice(cfg.layouts))
        world = make_world(rng, layout, len(textures), cfg)
        rects = world.rects
        cam_A, cam_B = camera_pair(rng, world, size, cfg, negative)
        vA = trace(*cam_A, size, rects)
        vB = trace(*cam_B, size, rects)
        warp, mask = covisible_warp(vA, vB)
        if (mask.mean() <= cfg.max_negative_overlap) if negative else (mask.mean() >= cfg.min_overlap):
            break
    light_A = _random_light(rng)
    light_B = _random_light(rng) if rng.random() < cfg.light_change else light_A
    images = []
    for v, (ld, rgb, amb) in ((vA, light_A), (vB, light_B)):
        img = shade(v, rects, textures, rng, ld, rgb, amb, rng.random() < cfg.shadow_prob, _sky(rng, h, w))
        img *= log_uniform(rng, cfg.exposure)
        images.append(photometric(rng, np.clip(img, 0, 255).astype(np.uint8)))
    return {"im_A": images[0], "im_B": images[1], "warp": warp, "mask": mask}


class ScenePairs(Dataset):
    """Rendered pairs textured with the photos under ``roots``; sample i is a pure function of
    (seed + i), like :class:`.data.SyntheticPairs`, so training resumes exactly."""

    def __init__(self, roots: Union[PathLike, Sequence[PathLike]], size: tuple[int, int] = (224, 224),
                 seed: int = 0, length: int = 10**8, cfg: SceneConfig = SceneConfig(),
                 textures_per_scene: int = 12, max_side: int = 1024):
        self.files = collect_images(roots)
        self.size = tuple(size)
        self.seed, self.length, self.cfg = seed, length, cfg
        self.textures_per_scene, self.max_side = textures_per_scene, max_side
        self._cache: dict[int, list[np.ndarray]] = {}

    def __len__(self) -> int:
        return self.length

    def _texture(self, i: int, rng: np.random.Generator) -> list[np.ndarray]:
        """A random crop (and flip) of photo i, as a mip pyramid."""
        if i not in self._cache:
            img = read_rgb(self.files[i])
            s = self.max_side / max(img.shape[:2])
            if s < 1:
                img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            self._cache[i] = [img]
        img = self._cache[i][0]
        ph, pw = img.shape[:2]
        frac = rng.uniform(*self.cfg.texture_frac)
        ch, cw = max(int(ph * frac), 16), max(int(pw * frac * rng.uniform(0.7, 1.3)), 16)
        cw = min(cw, pw)
        y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        crop = img[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return _pyramid(np.ascontiguousarray(crop))

    def pair(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed + int(index))
        photos = rng.integers(0, len(self.files), self.textures_per_scene)
        textures = [self._texture(int(i), rng) for i in photos]
        return render_pair(rng, textures, self.size, self.cfg)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.pair(index)
        return {"im_A": to_tensor(s["im_A"]), "im_B": to_tensor(s["im_B"]),
                "warp": torch.from_numpy(s["warp"]), "mask": torch.from_numpy(s["mask"].astype(np.float32))}
