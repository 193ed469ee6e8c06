"""Uncalibrated variants of a scene with ground truth: every image its own size and focal length.

Made at benchmark time from ``<scene>/images/*`` and ``<scene>/poses_gt.txt`` (``name fx fy cx cy
qw qx qy qz tx ty tz``, cx, cy with pixel centres at integers, world-to-camera), e.g. the Strecha
scenes of ``../shared/data/scenes``. The images are never committed; only this generator is.

Variants (``VARIANTS``), written to ``<out>/<scene>-<variant>/{images/, poses_gt.txt, variant.json}``:

- ``uncal``: per image a random crop (``CROP_AREA`` of the area, crop aspect ``CROP_ASPECT`` times
  the image's, centred on the image centre) and a random rescale (``SCALE``; never below
  ``MIN_SIDE`` px on the shorter side), saved as JPEG without EXIF. The GT intrinsics follow exactly: the crop shifts cx, cy; the rescale
  multiplies f by the scale and maps c as a pixel centre, c' = s (c + 1/2) - 1/2 (integer-centre
  convention; Pillow's resampling maps image corners onto corners). fx and fy get the scale of
  their own axis (the rounded output size makes the two differ by a fraction of a pixel).
- ``wrong-exif``: the same pixels, plus an EXIF focal length that is wrong by a random factor in
  ``EXIF_ERROR``. It is written as FocalLength (mm) with FocalPlaneXResolution in px/cm, both
  rationals, so COLMAP (and ``mapping.camera_from_exif``, which asks COLMAP) reads
  focal = FocalLength x resolution px; no FocalLengthIn35mmFilm (COLMAP would prefer it, and that
  tag is an integer: a few per cent off the intended value).
- ``exif``: as ``wrong-exif`` with the true focal length in EXIF (per image cameras that are
  calibrated: the control for ``wrong-exif``).
- ``uncal-offcentre``: as ``uncal``, but the crop lies anywhere in the image, so the principal
  point is off the image centre by up to a third of the width. COLMAP's camera models keep the
  principal point at the centre unless told otherwise, so this variant measures that assumption
  (for every method alike) rather than focal-length estimation; see docs/design/uncalibrated.md.

``variant.json`` holds per image the crop box, the output size, the scale, the GT focal and, for
``wrong-exif``, the EXIF focal written and its factor. Deterministic for a given ``seed`` and scene
name; ``make_variant`` rewrites the folder whole.

Usage:
    python benchmarks/uncalibrated.py --scene ../shared/data/scenes/strecha-fountain-P11 --out /tmp/uncal
"""
from __future__ import annotations

import argparse
import json
import shutil
import zlib
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import ExifTags, Image, TiffImagePlugin

VARIANTS = ("uncal", "wrong-exif", "exif", "uncal-offcentre")
CENTRED = {"uncal": True, "wrong-exif": True, "exif": True, "uncal-offcentre": False}  # crop about the image centre?
DEFAULT_VARIANTS = ("uncal", "wrong-exif")  # exif and uncal-offcentre only on request
CROP_AREA = (0.4, 1.0)  # share of the image area kept by the crop
CROP_ASPECT = (0.75, 1.33)  # crop aspect over the image's aspect (log-uniform)
SCALE = (0.6, 1.5)  # rescale of the crop (log-uniform)
MIN_SIDE = 240  # px, shorter side of an output image at least
EXIF_ERROR = (0.7, 1.3)  # EXIF focal over the true focal (uniform)
SENSOR_WIDTH_MM = 6.17  # a 1/2.3" sensor: only sets the FocalLength in mm, not the focal in px
JPEG_QUALITY = 95
EXIF_IFD = 0x8769


@dataclass
class ImageEdit:
    """What is done to one image: crop (x0, y0, w, h) of the original, then resize to ``size``."""

    crop: tuple[int, int, int, int]
    size: tuple[int, int]
    exif_factor: Optional[float] = None  # wrong-exif: EXIF focal / true focal

    @property
    def scale(self) -> tuple[float, float]:
        return self.size[0] / self.crop[2], self.size[1] / self.crop[3]


def adjust_intrinsics(K: np.ndarray, edit: ImageEdit) -> np.ndarray:
    """GT intrinsics (3, 3) after ``edit`` (integer pixel-centre convention in and out)."""
    x0, y0 = edit.crop[:2]
    sx, sy = edit.scale
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2] - x0, K[1, 2] - y0
    return np.array([[sx * fx, 0.0, sx * (cx + 0.5) - 0.5], [0.0, sy * fy, sy * (cy + 0.5) - 0.5], [0.0, 0.0, 1.0]])


def map_point(xy: np.ndarray, edit: ImageEdit) -> np.ndarray:
    """(N, 2) pixels of the original (integer-centre convention) -> the same points in the edited image."""
    x0, y0 = edit.crop[:2]
    s = np.array(edit.scale)
    return (np.asarray(xy, np.float64) - [x0, y0] + 0.5) * s - 0.5


def apply_edit(image: Image.Image, edit: ImageEdit) -> Image.Image:
    """The edited RGB image: crop, then resize (Lanczos)."""
    x0, y0, w, h = edit.crop
    return image.convert("RGB").crop((x0, y0, x0 + w, y0 + h)).resize(edit.size, Image.Resampling.LANCZOS)


def draw_edits(names: list[str], size: tuple[int, int], seed: int = 0, key: str = "", centred: bool = True
               ) -> dict[str, ImageEdit]:
    """Random crop + rescale + EXIF error per image of (W, H) = ``size``; the same for the same
    (``seed``, ``key``) whatever the variant (the EXIF factors come from a stream of their own).
    ``centred``: each crop about the image centre, else anywhere (same sizes either way)."""
    W, H = size
    base = zlib.crc32(key.encode())
    rng = np.random.default_rng([seed, base, 0])
    rng_exif = np.random.default_rng([seed, base, 1])
    edits = {}
    for name in sorted(names):
        area = rng.uniform(*CROP_AREA) * W * H
        aspect = W / H * np.exp(rng.uniform(*np.log(CROP_ASPECT)))
        w = min(W, max(16, int(round(np.sqrt(area * aspect)))))
        h = min(H, max(16, int(round(area / w))))
        x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        if centred:
            x0, y0 = (W - w) // 2, (H - h) // 2
        s = max(float(np.exp(rng.uniform(*np.log(SCALE)))), MIN_SIDE / min(w, h))
        edits[name] = ImageEdit((x0, y0, w, h), (int(round(w * s)), int(round(h * s))),
                                float(rng_exif.uniform(*EXIF_ERROR)))
    return edits


def exif_with_focal(focal_px: float, width: int) -> tuple[Image.Exif, float]:
    """EXIF holding ``focal_px`` as FocalLength (mm) and FocalPlaneXResolution (px/cm) of an image
    ``width`` px wide; returns it with the focal that a reader computes from the two rationals."""
    res = Fraction(width * 10, 1) / Fraction(SENSOR_WIDTH_MM).limit_denominator(1000)  # px per cm
    res = res.limit_denominator(1000)
    mm = (Fraction(focal_px) / (res / 10)).limit_denominator(100000)
    exif = Image.Exif()
    ifd = exif.get_ifd(EXIF_IFD)
    R = TiffImagePlugin.IFDRational
    ifd[ExifTags.Base.FocalLength] = R(mm.numerator, mm.denominator)
    ifd[ExifTags.Base.FocalPlaneXResolution] = R(res.numerator, res.denominator)
    ifd[ExifTags.Base.FocalPlaneYResolution] = R(res.numerator, res.denominator)
    ifd[ExifTags.Base.FocalPlaneResolutionUnit] = 3  # cm
    return exif, float(mm * res / 10)


def read_gt_lines(poses_gt: Path) -> dict[str, list[str]]:
    """{name: the 11 fields after the name} of a poses_gt.txt."""
    out = {}
    for line in Path(poses_gt).read_text().splitlines():
        p = line.split()
        if len(p) == 12 and not line.startswith("#"):
            out[p[0]] = p[1:]
    return out


def make_variant(scene: Path, out: Path, variant: str, seed: int = 0) -> Path:
    """Write ``variant`` of ``scene`` into ``out/<scene name>-<variant>`` (replaced whole); returns it."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    scene = Path(scene)
    gt = read_gt_lines(scene / "poses_gt.txt")
    names = [n for n in sorted(gt) if (scene / "images" / n).is_file()]
    if not names:
        raise FileNotFoundError(f"no image of {scene / 'poses_gt.txt'} in {scene / 'images'}")
    with Image.open(scene / "images" / names[0]) as im:
        size = im.size
    edits = draw_edits(names, size, seed, key=scene.name, centred=CENTRED[variant])
    dest = Path(out) / f"{scene.name}-{variant}"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    lines, manifest = [], {"scene": str(scene), "variant": variant, "seed": seed, "images": {}}
    for name in names:
        e = edits[name]
        with Image.open(scene / "images" / name) as im:
            if im.size != size:
                raise ValueError(f"{name}: {im.size}, but {names[0]} is {size}: one size per scene expected")
            img = apply_edit(im, e)
        fields = [float(v) for v in gt[name]]
        K = np.array([[fields[0], 0, fields[2]], [0, fields[1], fields[3]], [0, 0, 1]])
        K2 = adjust_intrinsics(K, e)
        info = {**asdict(e), "scale": list(e.scale), "focal_gt": [K2[0, 0], K2[1, 1]]}
        info.pop("exif_factor")
        path = tmp / "images" / (Path(name).stem + ".jpg")
        if variant in ("wrong-exif", "exif"):
            factor = e.exif_factor if variant == "wrong-exif" else 1.0
            exif, focal = exif_with_focal(factor * (K2[0, 0] + K2[1, 1]) / 2, e.size[0])
            img.save(path, quality=JPEG_QUALITY, exif=exif)
            info.update(exif_focal=focal, exif_factor=focal / ((K2[0, 0] + K2[1, 1]) / 2))
        else:
            img.save(path, quality=JPEG_QUALITY)  # Pillow writes no EXIF unless given
        manifest["images"][path.name] = info
        lines.append(" ".join([path.name] + [f"{v:.6f}" for v in (K2[0, 0], K2[1, 1], K2[0, 2], K2[1, 2])]
                              + gt[name][4:]))
    (tmp / "poses_gt.txt").write_text("\n".join(lines) + "\n")
    (tmp / "variant.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def make_variants(scene: Path, out: Path, variants: tuple[str, ...] = DEFAULT_VARIANTS,
                  seed: int = 0) -> dict[str, Path]:
    """Every variant of ``scene`` under ``out``: {variant: scene folder}."""
    return {v: make_variant(scene, out, v, seed) for v in variants}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Write uncalibrated variants of a scene with GT cameras")
    ap.add_argument("--scene", type=Path, required=True, help="folder with images/ and poses_gt.txt")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for v, path in make_variants(args.scene, args.out, tuple(args.variants), args.seed).items():
        print(f"{v}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
