"""Large-zoom benchmark on real photos: relative pose when one view is a zoomed-in detail.

    python benchmarks/zoom.py [--matcher roma sift-opencv ...] [--zooms 1 2 3 4] [--stride 9]
                              [--write-readme]

Real zoom pairs with ground truth, built from the Strecha pairs (``pose.py``'s data): for every
``--stride``-th pair and each zoom z, one image of the pair (B for even pairs, A for odd ones, so
both zoom in and zoom out are asked) is replaced by a crop of 1/z of its width and height, at a
random place in its central part, resized back to the full size (a longer focal length, with the
detail of a z-times smaller image). Its intrinsics follow exactly, so the pose error is measured as
in ``pose.py`` (essential matrix RANSAC at 0.5 px of the *original* scale, AUC@5/10/20). z = 1 is the
unchanged subset, the reference of each row. The images are made at run time into ``--work``
(never committed). The data are EVALUATION ONLY. Table markers: ``zoom-table``.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import cv2
import numpy as np

from readme import TARGET, publish
from common import DATA, add_common_args, fmt, run_matchers, set_threads
from pose import evaluate

from roma_sfm.pipelines.evaluate import read_pairs_gt


def zoom_intrinsics(K: np.ndarray, x0: float, y0: float, s: float) -> np.ndarray:
    """Intrinsics (pixel centres at integers, as the GT) after cropping at (x0, y0) (image corner
    convention) and scaling by s."""
    K2 = K.astype(np.float64).copy()
    K2[0, 0] *= s
    K2[1, 1] *= s
    K2[0, 2] = s * (K[0, 2] + 0.5 - x0) - 0.5
    K2[1, 2] = s * (K[1, 2] + 0.5 - y0) - 0.5
    return K2


def zoom_image(img: np.ndarray, z: float, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """A crop of 1/z of each side, centred in the middle half of the image, resized to the full size."""
    h, w = img.shape[:2]
    cw, ch = w / z, h / z
    cx = w / 2 + rng.uniform(-0.25, 0.25) * (w - cw)
    cy = h / 2 + rng.uniform(-0.25, 0.25) * (h - ch)
    x0, y0 = cx - cw / 2, cy - ch / 2
    # affine map output pixel centre -> source position, exact sub-pixel crop
    M = np.array([[1 / z, 0, x0 + 0.5 / z - 0.5], [0, 1 / z, y0 + 0.5 / z - 0.5]])
    out = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    return out, x0, y0


def make_pairs(pairs: list[dict], scenes: Path, work: Path, zooms: list[float], seed: int = 0) -> dict[float, list[dict]]:
    """Zoomed copies of the pairs (images written under ``work``), per zoom factor."""
    out: dict[float, list[dict]] = {}
    for z in zooms:
        rows = []
        for i, p in enumerate(pairs):
            rng = np.random.default_rng((seed, i, int(z * 100)))
            q = dict(p)
            side = "1" if i % 2 == 0 else "0"
            if z != 1:
                src = scenes / p["name" + side]
                name = f"z{z:g}/{i:03d}_{Path(p['name' + side]).name}"
                dst = work / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                img, x0, y0 = zoom_image(cv2.imread(str(src)), z, rng)
                cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
                q["name" + side] = str(dst)
                q["K" + side] = zoom_intrinsics(p["K" + side], x0, y0, z)
            for k in ("0", "1"):
                if not Path(q["name" + k]).is_absolute():
                    q["name" + k] = str(scenes / q["name" + k])
            rows.append(q)
        out[z] = rows
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.set_defaults(readme=TARGET)
    ap.add_argument("--pairs", type=Path, default=DATA / "pairs" / "strecha_gap3.txt")
    ap.add_argument("--scenes", type=Path, default=DATA / "scenes")
    ap.add_argument("--zooms", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0])
    ap.add_argument("--stride", type=int, default=9, help="every N-th pair of --pairs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/roma-sfm-zoom"), help="where the zoomed images go")
    ap.add_argument("--ransac-px", type=float, default=0.5)
    args = ap.parse_args(argv)
    if not args.pairs.is_file():
        ap.error(f"pairs file not found: {args.pairs} (the shared evaluation data, see ../shared/data/README.md)")
    set_threads(args.threads)
    pairs = read_pairs_gt(args.pairs)[::args.stride][:args.limit]
    by_zoom = make_pairs(pairs, args.scenes, args.work, args.zooms, args.seed)

    def run(timed, log) -> dict:
        return {z: evaluate(timed, rows, Path("/"), args.ransac_px, args.seed, log) for z, rows in by_zoom.items()}

    head = "| matcher | " + " | ".join(f"{z:g}x AUC@5/10/20" for z in args.zooms) + " | s / pair |"
    lines = [head, "|---" * (len(args.zooms) + 2) + "|"]
    results = run_matchers(args, lines, run, lambda name, r: (
        f"| {name} | " + " | ".join(" / ".join(fmt(r[z][f'auc@{t}']) for t in (5, 10, 20)) for z in args.zooms)
        + f" | {fmt(r['seconds_per_pair'], 2)} |"))
    lines += ["", f"Relative pose on every {args.stride}th pair of `{args.pairs.name}` ({len(pairs)} pairs), one "
              "image of each replaced by a crop of 1/z of its sides resized back to 768x512 (B for even pairs, "
              "A for odd ones), intrinsics adjusted exactly; essential matrix RANSAC at "
              f"{args.ransac_px:g} px, AUC in %. Dense matchers: {args.num_samples} balanced samples. "
              f"`python benchmarks/zoom.py` on {args.threads} CPU threads ({platform.processor() or platform.machine()})."]
    table = publish("zoom-table", lines, args.readme if args.write_readme else None)
    return {"table": table, "results": results}


if __name__ == "__main__":
    main()
