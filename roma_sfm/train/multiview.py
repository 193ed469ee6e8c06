"""Real multi-view pairs supervised by the tracks of a reconstruction (sparse ground truth).

Real photos of one place carry what rendered scenes cannot: real optics, exposure and 3-D clutter.
Without depth maps, a reconstruction of the set (e.g. ``roma-sfm reconstruct DIR --matcher sift``)
still gives ground truth: two images that observe the same triangulated point see it at known
pixels, also for wide-baseline pairs that no pairwise match found (the track links them through
other views). Only well-triangulated points are kept (track length, reprojection error).

Build an index once, then train with ``--track-indexes INDEX.npz --p-tracks P``::

    python -m roma_sfm.train.multiview OUT/sparse/0 IMAGES_DIR tracks.npz

Index (``.npz``, no pickles): ``images`` (folder, relative to the index file), ``names`` (N,),
``sizes`` (N,2) as (W, H), ``offsets`` (N+1,), ``xy`` (M,2) COLMAP pixels (corner at 0),
``point_ids`` (M,), ``pairs`` (P,2) image indices sharing at least ``min_common`` points.
"""
from __future__ import annotations

import argparse
import os
from itertools import combinations
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .data import check_training_path, photometric, read_rgb, to_tensor

PathLike = Union[str, os.PathLike]


def write_track_index(model_dir: PathLike, images: PathLike, out: PathLike, min_track_length: int = 3,
                      max_error: float = 2.0, min_common: int = 30) -> dict[str, int]:
    """Observations of well-triangulated points per registered image, and the pairs they link."""
    import pycolmap

    check_training_path(images)
    rec = pycolmap.Reconstruction(str(model_dir))
    good = {pid for pid, p in rec.points3D.items()
            if p.track.length() >= min_track_length and (not p.has_error() or p.error <= max_error)}
    names, sizes, xy, ids, offsets = [], [], [], [], [0]
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            continue
        obs = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D() and p.point3D_id in good]
        names.append(image.name)
        sizes.append((image.camera.width, image.camera.height))
        xy += [o[0] for o in obs]
        ids += [o[1] for o in obs]
        offsets.append(offsets[-1] + len(obs))
    sets = [set(ids[offsets[i]:offsets[i + 1]]) for i in range(len(names))]
    pairs = [(i, j) for i, j in combinations(range(len(names)), 2) if len(sets[i] & sets[j]) >= min_common]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(Path(images).resolve(), out.resolve().parent)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, images=np.array(rel), names=np.array(names), sizes=np.array(sizes, np.int32).reshape(-1, 2),
             offsets=np.array(offsets, np.int64), xy=np.array(xy, np.float32).reshape(-1, 2),
             point_ids=np.array(ids, np.int64), pairs=np.array(pairs, np.int32).reshape(-1, 2))
    os.replace(tmp, out)
    return {"images": len(names), "points": len(good), "pairs": len(pairs)}


class TrackIndex:
    """One index file, loaded: per-image observations and the linked pairs."""

    def __init__(self, path: PathLike):
        path = Path(path)
        with np.load(path, allow_pickle=False) as z:
            self.images = (path.parent / str(z["images"])).resolve()
            self.names = [str(n) for n in z["names"]]
            self.sizes, self.offsets, self.xy = z["sizes"], z["offsets"], z["xy"]
            self.point_ids, self.pairs = z["point_ids"], z["pairs"]
        check_training_path(self.images)

    def correspondences(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (COLMAP convention) of the points both images observe: (n,2), (n,2)."""
        a, b = slice(self.offsets[i], self.offsets[i + 1]), slice(self.offsets[j], self.offsets[j + 1])
        common, ia, ib = np.intersect1d(self.point_ids[a], self.point_ids[b], return_indices=True)
        return self.xy[a][ia], self.xy[b][ib]


def random_crop(rng: np.random.Generator, size: tuple[int, int], min_frac: float, free_aspect: bool = False
                ) -> tuple[int, int, int, int]:
    """A window (x0, y0, w, h) of the image (W, H), each side a random fraction >= min_frac.

    Both sides take one fraction (the photo's aspect) unless ``free_aspect``: then each side draws
    its own, as in the cropped, rescaled photos of uncalibrated collections, which the matcher
    stretches to its square input.
    """
    W, H = size
    f = rng.uniform(min_frac, 1.0)
    g = rng.uniform(min_frac, 1.0) if free_aspect else f
    w, h = max(int(W * f), 8), max(int(H * g), 8)
    return int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1)), w, h


class TrackPairs(Dataset):
    """Pairs of real photos with sparse GT from track indexes; sample i is a function of (seed, i).

    Each view is a random crop (each side >= ``min_crop`` of the photo, for scale changes; sides drawn
    apart with ``free_aspect``) resized to ``size``; keypoints come normalised (``pixel_grid`` convention), padded to ``max_points`` with
    ``kpts_valid`` False.
    """

    def __init__(self, indexes: Union[PathLike, Sequence[PathLike]], size: tuple[int, int] = (224, 224),
                 seed: int = 0, length: int = 10**8, max_points: int = 1024, min_crop: float = 0.5,
                 min_points: int = 16, augment: bool = True, free_aspect: bool = False):
        if isinstance(indexes, (str, os.PathLike)):
            indexes = [indexes]
        self.indexes = [TrackIndex(p) for p in indexes]
        self.items = [(k, int(i), int(j)) for k, ix in enumerate(self.indexes) for i, j in ix.pairs]
        if not self.items:
            raise ValueError(f"no linked pairs in {list(map(str, indexes))}")
        self.size, self.seed, self.length = tuple(size), seed, length
        self.max_points, self.min_crop, self.min_points, self.augment = max_points, min_crop, min_points, augment
        self.free_aspect = free_aspect
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _image(self, k: int, i: int) -> np.ndarray:
        if (k, i) not in self._cache:
            ix = self.indexes[k]
            self._cache[(k, i)] = read_rgb(ix.images / ix.names[i])
        return self._cache[(k, i)]

    def _view(self, rng: np.random.Generator, img: np.ndarray, xy: np.ndarray, size_colmap: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        H, W = self.size
        sx, sy = img.shape[1] / size_colmap[0], img.shape[0] / size_colmap[1]  # model size -> file size
        x0, y0, cw, ch = random_crop(rng, (img.shape[1], img.shape[0]), self.min_crop, self.free_aspect)
        crop = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (W, H), interpolation=cv2.INTER_AREA)
        u = (xy[:, 0] * sx - x0) / cw  # in [0, 1] inside the crop
        v = (xy[:, 1] * sy - y0) / ch
        inside = (u > 0) & (u < 1) & (v > 0) & (v < 1)
        return crop, np.stack((2 * u - 1, 2 * v - 1), -1).astype(np.float32), inside

    def pair(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, int(index)))
        for _ in range(8):
            k, i, j = self.items[int(rng.integers(len(self.items)))]
            if rng.random() < 0.5:
                i, j = j, i
            ix = self.indexes[k]
            xy_A, xy_B = ix.correspondences(i, j)
            im_A, k_A, in_A = self._view(rng, self._image(k, i), xy_A, ix.sizes[i])
            im_B, k_B, in_B = self._view(rng, self._image(k, j), xy_B, ix.sizes[j])
            keep = np.flatnonzero(in_A & in_B)
            if len(keep) >= self.min_points:
                break
        keep = rng.permutation(keep)[:self.max_points]
        n = len(keep)
        kA = np.zeros((self.max_points, 2), np.float32)
        kB = np.zeros((self.max_points, 2), np.float32)
        kA[:n], kB[:n] = k_A[keep], k_B[keep]
        valid = np.arange(self.max_points) < n
        if self.augment:
            im_A, im_B = photometric(rng, im_A), photometric(rng, im_B)
        return {"im_A": im_A, "im_B": im_B, "kpts_A": kA, "kpts_B": kB, "kpts_valid": valid}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.pair(index)
        return {"im_A": to_tensor(s["im_A"]), "im_B": to_tensor(s["im_B"]), "kpts_A": torch.from_numpy(s["kpts_A"]),
                "kpts_B": torch.from_numpy(s["kpts_B"]), "kpts_valid": torch.from_numpy(s["kpts_valid"])}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m roma_sfm.train.multiview",
                                description="Index the tracks of a COLMAP model as training pairs.")
    p.add_argument("model", help="COLMAP model folder (e.g. OUT/sparse/0)")
    p.add_argument("images", help="the images folder the model was made from")
    p.add_argument("out", help="index file to write (.npz)")
    p.add_argument("--min-track-length", type=int, help="min views of a point (default 3)")
    p.add_argument("--max-error", type=float, help="max reprojection error of a point in px (default 2)")
    p.add_argument("--min-common", type=int, help="min shared points for a pair (default 30)")
    a = vars(p.parse_args(argv))
    paths = [a.pop(k) for k in ("model", "images", "out")]
    print(write_track_index(*paths, **{k: v for k, v in a.items() if v is not None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
