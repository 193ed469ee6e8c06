"""Step 3b: where the principal point of each shared camera lies, for dense matches: from SIFT.

Both mappers keep every principal point at the image centre; a real lens's lies a few pixels off
it, which bends every pose. A camera shared by enough registered images makes it observable, and a
final bundle adjustment of a SIFT model finds it (:func:`.mapping.refine_principal_points`). RoMa's
dense matches pull it away from the truth instead (docs/design/mapping.md). So before dense
matches are mapped, the images of each camera that ``min_images`` of them share are reconstructed
once more, with SIFT on the same pairs, and the dense mapping starts from and keeps the points that
model refined. A camera that model does not refine keeps the centre.

Writes into ``out_dir``: matches.h5 (SIFT; resumable), features.h5, matches_idx.h5, sfm/ (as the
steps write them) and principal_points.json ({image name: [cx, cy]} px, COLMAP's convention).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from . import mapping, match, tracks
from .h5io import read_image_sizes
from ..io import atomic_output
from .utils import logger

# how the principal point of a camera shared by ``min_images`` registered images is found:
# "centre" (kept at the image centre, as the mappers do), "refine" (freed in a final bundle
# adjustment of the model itself), "sift" (measured by a SIFT model of its images, then fixed)
MODES = ("centre", "refine", "sift")
confs = {
    "default": {"mode": {"sparse": "refine", "dense": "sift"}, "min_images": 5, "matcher": "sift"},
}
DEFAULTS = confs["default"]
FILE_NAME = "principal_points.json"


@dataclass
class PrincipalPoints:
    """What :func:`main` measured."""

    points: dict[str, tuple[float, float]] = field(default_factory=dict)  # {image name: (cx, cy) px}
    num_images: int = 0  # images of shared cameras, reconstructed with SIFT
    num_registered: int = 0  # of those, registered in a model that refined their camera's point
    seconds: float = 0.0


def mode_for(kind: str, mode: Optional[str] = None) -> str:
    """The mode given, else the default of matches of ``kind`` ('sparse' | 'dense')."""
    mode = DEFAULTS["mode"][kind] if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"principal point mode must be one of {'|'.join(MODES)}, not {mode!r}")
    return mode


def shared_camera_images(sizes: dict[str, tuple[int, int]], images: Path, camera_mode: str,
                         min_images: int) -> list[str]:
    """Names of the images whose camera (:func:`.mapping.camera_keys`) at least ``min_images`` of ``sizes`` share."""
    keys = {n: k for n, (k, _, _) in mapping.camera_keys(sizes, images, camera_mode).items()}
    counts = Counter(keys.values())
    return sorted(n for n, k in keys.items() if counts[k] >= min_images > 0)


def read(path: Path) -> dict[str, tuple[float, float]]:
    """{image name: (cx, cy)} of a principal_points.json."""
    return {n: (float(x), float(y)) for n, (x, y) in json.loads(Path(path).read_text()).items()}


def main(images: Path, out_dir: Path, pairs: Iterable[tuple[str, str]], features: Path,
         camera_mode: str = mapping.DEFAULTS["camera_mode"], min_images: int = DEFAULTS["min_images"],
         mapper: str = mapping.DEFAULTS["mapper"], calibrate: str = mapping.DEFAULTS["calibrate"],
         num_threads: int = mapping.DEFAULTS["num_threads"], seed: int = mapping.DEFAULTS["seed"],
         max_rotation_error: float = mapping.DEFAULTS["max_rotation_error"], overwrite: bool = False,
         progress: bool = True) -> PrincipalPoints:
    """Principal points of the shared cameras of the images in ``features`` (the dense tracks' features.h5).

    ``pairs`` among those images are matched with SIFT and mapped as the dense matches will be
    (same cameras, mapper and settings), with the principal points refined; a SIFT pass that
    registers too few images simply measures nothing.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out = PrincipalPoints()
    chosen = set(shared_camera_images(read_image_sizes(features), images, camera_mode, min_images))
    todo = [p for p in pairs if p[0] in chosen and p[1] in chosen]
    out.num_images = len({n for p in todo for n in p})
    if not todo:
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("principal points: %d images of shared cameras, %d pairs, matched with SIFT", out.num_images,
                len(todo))
    match.main(todo, images, out_dir / "matches.h5", DEFAULTS["matcher"], overwrite=overwrite, progress=progress,
               seed=seed)
    sift_features, sift_idx = out_dir / "features.h5", out_dir / "matches_idx.h5"
    cell_size, min_pair_score = tracks.settings("sparse")
    ts = tracks.main(out_dir / "matches.h5", sift_features, sift_idx, cell_size, pairs=todo,
                     min_pair_score=min_pair_score)
    if ts.num_images:
        res = mapping.main(out_dir / "sfm", images, sift_features, sift_idx, camera_mode=camera_mode, mapper=mapper,
                           num_threads=num_threads, seed=seed, options=mapping.mapper_options["sparse"],
                           max_rotation_error=max_rotation_error, calibrate=calibrate,
                           principal_point_min_images=min_images)
        shifts = res.principal_point_shifts
        for rec in res.models:
            for im in rec.images.values():
                if im.has_pose and im.camera_id in shifts:
                    cam, (dx, dy) = rec.cameras[im.camera_id], shifts[im.camera_id]
                    out.points[im.name] = (cam.width / 2 + dx, cam.height / 2 + dy)
    out.num_registered = len(out.points)
    with atomic_output(out_dir / FILE_NAME) as tmp:
        tmp.write_text(json.dumps({n: list(pp) for n, pp in sorted(out.points.items())}, indent=1))
    out.seconds = time.perf_counter() - t0
    logger.info("principal points: measured for %d of %d images in %.1f s", out.num_registered, out.num_images,
                out.seconds)
    return out
