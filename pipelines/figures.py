"""Pictures of matches that can be read: a few drawn matches in two colours, RoMa's warp and certainty.

Why so few lines: thousands of lines across both images cover them and nothing can be read; ~150
random ones show where matches are and which ones are wrong. Colours are RGB; files are PNG.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import cv2
import numpy as np

from ..io import ImageReadError, as_rgb, read_image
from ..io import atomic_output
from .utils import logger
from ..presets import DEVICE

MAX_DRAWN = 150  # matches drawn in a plot (a random subset; the legend counts all of them)
NUM_SAMPLES = 5000  # matches sampled from RoMa's warp for a figure of one pair
INLIER_RGB = (40, 200, 40)
OUTLIER_RGB = (235, 40, 40)
UNVERIFIED_RGB = (40, 170, 235)


def _resize_to_height(image: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    s = height / image.shape[0]
    return cv2.resize(image, (max(1, round(image.shape[1] * s)), height), interpolation=cv2.INTER_AREA), s


def _legend(canvas: np.ndarray, lines: list[tuple[str, Optional[tuple[int, int, int]]]]) -> None:
    """Text lines (with a colour swatch when given) on a dark box in the top left corner, in place."""
    font, scale, thick, step = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1, 20
    width = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t, _ in lines) + 44
    h = step * len(lines) + 10
    box = canvas[:h, :width]
    canvas[:h, :width] = (box * 0.35).astype(np.uint8)
    for i, (text, rgb) in enumerate(lines):
        y = 20 + i * step
        if rgb is not None:
            cv2.line(canvas, (8, y - 5), (30, y - 5), rgb, 2, cv2.LINE_AA)
            cv2.circle(canvas, (30, y - 5), 3, rgb, -1, cv2.LINE_AA)
        cv2.putText(canvas, text, (38, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


def plot_matches(image0: np.ndarray, image1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray,
                 inliers: Optional[np.ndarray], path: Optional[Path] = None, max_drawn: int = MAX_DRAWN,
                 height: int = 480, seed: int = 0, verified_by: str = "verified") -> np.ndarray:
    """Side-by-side images (both scaled to ``height``, in grey) with at most ``max_drawn`` random matches
    (COLMAP-convention pixels); ``inliers`` (M,) bool colours them, None draws them in one colour.
    The legend counts all M matches. Returns the RGB canvas, also written to ``path`` when given."""
    a, s0 = _resize_to_height(image0, height)
    b, s1 = _resize_to_height(image1, height)
    # on a grey copy of the images the two colours stand out whatever the scene's own colours
    gray = cv2.cvtColor(np.concatenate([a, b], 1), cv2.COLOR_RGB2GRAY).astype(np.float32) * 0.7 + 40
    canvas = np.ascontiguousarray(np.repeat(gray.clip(0, 255).astype(np.uint8)[..., None], 3, 2))
    kpts0, kpts1 = np.asarray(kpts0, float).reshape(-1, 2), np.asarray(kpts1, float).reshape(-1, 2)
    n = len(kpts0)
    sel = np.random.default_rng(seed).choice(n, min(n, max_drawn), replace=False) if n else np.zeros(0, int)
    if inliers is not None:
        sel = sel[np.argsort(inliers[sel], kind="stable")[::-1]]  # outliers drawn last, on top
    for i in sel:
        rgb = UNVERIFIED_RGB if inliers is None else INLIER_RGB if inliers[i] else OUTLIER_RGB
        p = tuple(np.round(kpts0[i] * s0 - 0.5).astype(int))  # COLMAP pixels -> array indices
        q = tuple(np.round(kpts1[i] * s1 - 0.5 + [a.shape[1], 0]).astype(int))
        cv2.line(canvas, p, q, rgb, 1, cv2.LINE_AA)
        cv2.circle(canvas, p, 3, rgb, -1, cv2.LINE_AA)
        cv2.circle(canvas, q, 3, rgb, -1, cv2.LINE_AA)
    if inliers is None:
        lines = [(f"{n} matches (not verified)", UNVERIFIED_RGB)]
    else:
        k = int(np.count_nonzero(inliers))
        lines = [(f"{k} {verified_by} inliers", INLIER_RGB), (f"{n - k} outliers", OUTLIER_RGB)]
    lines.append((f"{len(sel)} of {n} drawn at random", None))
    _legend(canvas, lines)
    if path is not None:
        _write_png(canvas, Path(path))
    return canvas


def _write_png(rgb: np.ndarray, path: Path) -> None:
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")


def verified_inliers(database: Path, name0: str, name1: str, idx: np.ndarray) -> Optional[np.ndarray]:
    """(M,) bool: the index matches ``idx`` (M, 2) that COLMAP's verification of the pair kept (all
    False for a pair it did not verify); None when ``database`` does not have both images."""
    import pycolmap

    if not Path(database).is_file():
        return None
    try:
        with pycolmap.Database.open(str(database)) as db:
            id0, id1 = db.read_image_with_name(name0).image_id, db.read_image_with_name(name1).image_id
            if not db.exists_two_view_geometry(id0, id1):
                return np.zeros(len(idx), bool)
            kept = np.asarray(db.read_two_view_geometry(id0, id1).inlier_matches, np.int64).reshape(-1, 2)
    except Exception as e:  # another run's database, an image missing in it
        logger.debug("figures: no verification of %s %s in %s: %s", name0, name1, database, e)
        return None
    idx = np.asarray(idx, np.int64).reshape(-1, 2)
    base = int(max(idx.max(initial=0), kept.max(initial=0))) + 1
    return np.isin(idx[:, 0] * base + idx[:, 1], kept[:, 0] * base + kept[:, 1])


def fundamental_inliers(kpts0: np.ndarray, kpts1: np.ndarray, size0: tuple[int, int]) -> Optional[np.ndarray]:
    """(M,) bool inliers of a fundamental matrix fitted by RANSAC (MAGSAC), with a threshold of 0.2 %
    of the longer side of image 0 (1 px at least); None below 8 matches or when no model is found."""
    if len(kpts0) < 8:
        return None
    thr = max(1.0, 0.002 * max(size0))
    try:
        _, mask = cv2.findFundamentalMat(np.asarray(kpts0, np.float64), np.asarray(kpts1, np.float64),
                                         cv2.USAC_MAGSAC, thr, 0.9999, 10000)
    except cv2.error:
        return None
    return None if mask is None else mask.ravel().astype(bool)


def top_pairs(matches: dict[tuple[str, str], np.ndarray], num: int) -> list[tuple[str, str]]:
    """The ``num`` pairs with most matches (the pairs the export plots), most first."""
    return [p for p, _ in sorted(matches.items(), key=lambda kv: -len(kv[1]))[:num]]


def plot_pairs(images: Path, features: Path, matches_idx: Path, out_dir: Path, num: int,
               database: Optional[Path] = None) -> list[str]:
    """Match plots of the ``num`` pairs with most matches into ``out_dir`` (``<a>__<b>.png``, '/' in
    names as '-'); colours from COLMAP's verification in ``database``, else from a fundamental
    matrix. Returns the file names written (pairs with an unreadable image are left out)."""
    from .h5io import read_features, read_index_matches

    kps = read_features(features)
    matches = read_index_matches(matches_idx)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for a, b in top_pairs(matches, num):
        idx = matches[(a, b)]
        try:
            ia, ib = read_image(Path(images) / a), read_image(Path(images) / b)
        except ImageReadError:
            continue
        k0, k1 = kps[a][idx[:, 0]], kps[b][idx[:, 1]]
        inliers, by = (verified_inliers(database, a, b, idx) if database is not None else None), "verified"
        if inliers is None:
            inliers, by = fundamental_inliers(k0, k1, ia.shape[1::-1]), "RANSAC"
        name = f"{a.replace('/', '-')}__{b.replace('/', '-')}.png"
        plot_matches(ia, ib, k0, k1, inliers, out_dir / name, verified_by=by)
        written.append(name)
    return written


def _inferno(x: np.ndarray) -> np.ndarray:
    """(H,W) in [0,1] -> (H,W,3) RGB uint8 (matplotlib's inferno, as OpenCV ships it)."""
    bgr = cv2.applyColorMap(np.clip(x * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def warp_images(result: Any, image0: np.ndarray, image1: np.ndarray, height: int = 360
                ) -> tuple[np.ndarray, np.ndarray]:
    """RoMa's A->B warp as pictures in A's frame, both (height, W, 3) RGB at A's aspect: image B
    sampled at the warped position of every pixel of A, blended to white by (1 - certainty) as in
    the paper's figures, and the certainty (0 black, 1 bright yellow)."""
    import torch
    import torch.nn.functional as F

    w = result.warp.shape[1] // 2 if result.symmetric else result.warp.shape[1]
    grid = result.warp[:, :w, 2:].float()
    cert = result.certainty[:, :w].float().clamp(0, 1)
    small_b, _ = _resize_to_height(image1, min(image1.shape[0], 2 * grid.shape[0]))
    b = torch.from_numpy(np.ascontiguousarray(small_b)).permute(2, 0, 1)[None].float() / 255
    warped = F.grid_sample(b, grid[None], mode="bilinear", align_corners=False, padding_mode="zeros")[0]
    vis = cert[None] * warped + (1 - cert[None])
    size = (max(1, round(image0.shape[1] * height / image0.shape[0])), height)
    vis = cv2.resize((vis.permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8), size,
                     interpolation=cv2.INTER_AREA)
    c = cv2.resize(cert.numpy(), size, interpolation=cv2.INTER_AREA)
    return vis, _inferno(c)


def _titled(image: np.ndarray, title: str, bar: int = 26) -> np.ndarray:
    """``image`` under a white strip with ``title``."""
    strip = np.full((bar, image.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (6, bar - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], 0)


def _stack(rows: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Rows of pictures one above the other on white, left aligned."""
    width = max(r.shape[1] for r in rows)
    out = []
    for i, r in enumerate(rows):
        pad = np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)
        out.append(np.concatenate([r, pad], 1))
        if i < len(rows) - 1:
            out.append(np.full((gap, width, 3), 255, np.uint8))
    return np.concatenate(out, 0)


def _hstack(panels: list[np.ndarray], gap: int = 8) -> np.ndarray:
    parts = []
    for i, p in enumerate(panels):
        parts.append(p)
        if i < len(panels) - 1:
            parts.append(np.full((p.shape[0], gap, 3), 255, np.uint8))
    return np.concatenate(parts, 1)


def warp_row(result: Any, image0: np.ndarray, image1: np.ndarray, height: int = 300) -> np.ndarray:
    """A | B sampled into A's frame | certainty, titled, one RGB row."""
    warp, cert = warp_images(result, image0, image1, height)
    a, _ = _resize_to_height(image0, height)
    return _hstack([_titled(a, "A"), _titled(warp, "B warped into A's frame (white: uncertain)"),
                    _titled(cert, "certainty (black 0 .. yellow 1)")])


@dataclass
class PairFigure:
    """What ``pair_figure`` drew: its picture (RGB) and the counts in its legend."""

    image: np.ndarray
    matches: int
    inliers: int
    path: Optional[Path] = None


def pair_figure(matcher: Any, path0: Union[str, Path], path1: Union[str, Path], out: Optional[Path] = None,
                num_samples: int = NUM_SAMPLES, height: int = 360, seed: int = 0, device: str = DEVICE) -> PairFigure:
    """One pair as in the RoMa paper's figures: the match plot (``num_samples`` matches sampled from
    the warp, inliers of a fundamental matrix vs outliers, ``MAX_DRAWN`` of them drawn) above A, B
    warped into A's frame and the certainty. ``matcher``: a RoMa matcher or its spec for
    ``match.get_matcher`` ('roma', a preset, a checkpoint). Written to ``out`` (PNG) when given."""
    from .matchers import get_matcher

    matcher = get_matcher(matcher, device=device)
    image0, image1 = as_rgb(path0), as_rgb(path1)
    result = matcher.match(image0, image1)
    if not hasattr(result, "warp"):
        raise ValueError(f"{type(matcher).__name__} is not a dense matcher: it has no warp to draw (use a RoMa model)")
    k0, k1, _ = result.sample(num=num_samples, seed=seed)
    inliers = fundamental_inliers(k0, k1, image0.shape[1::-1])
    plot = plot_matches(image0, image1, k0, k1, inliers, height=height, seed=seed, verified_by="RANSAC")
    figure = _stack([_titled(plot, f"{Path(str(path0)).name}  |  {Path(str(path1)).name}"),
                     warp_row(result, image0, image1, height)])
    if out is not None:
        _write_png(figure, Path(out))
    return PairFigure(figure, len(k0), int(np.count_nonzero(inliers)) if inliers is not None else 0,
                      Path(out) if out is not None else None)


def matcher_of(matches: Path, hint: Optional[str] = None, device: str = DEVICE) -> Optional[Any]:
    """The RoMa matcher that wrote ``matches`` (a matches.h5): ``hint`` (the --matcher given, e.g. a
    checkpoint path) or the preset named in the file, loaded at the resolution stored in the file's
    matcher signature, kept only if its weights have the stored fingerprint. None for SIFT matches,
    or when those weights are not here."""
    import h5py

    from .matchers import get_matcher

    try:
        with h5py.File(matches, "r") as f:
            kind = str(f.attrs.get("kind", ""))
            sig = json.loads(str(f.attrs.get("matcher_signature", "{}")))
    except (OSError, ValueError):
        return None
    if kind != "dense" or not sig.get("matcher"):
        return None
    kwargs = {k: sig[k] for k in ("coarse_res", "upsample_res", "symmetric") if k in sig}
    for spec in dict.fromkeys(s for s in (hint, sig["matcher"]) if s and not str(s).lower().startswith("sift")):
        try:
            with warnings.catch_warnings():  # "still in training": said by the run already
                warnings.simplefilter("ignore")
                m = get_matcher(str(spec), device=device, **kwargs)
        except Exception as e:
            logger.debug("figures: could not load %s: %s", spec, e)
            continue
        if sig.get("weights") in (None, getattr(m, "weights_id", None)):
            return m
    return None
