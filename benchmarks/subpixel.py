"""How much of the accuracy that the tracks step's quantization throws away its ``refine`` gets back.

The tracks step snaps every matched point onto a grid of ``cell_size`` px so that all pairs of an
image share one keypoint per cell; a cell centre is off the true point by up to half a cell. The
``refine`` modes move each keypoint off its cell centre again ("mean": the score-weighted mean of
the raw points in the cell; "flow", the default: also fitted to the raw matches of every pair, see
``roma_sfm.pipelines.tracks``). This script puts numbers on it with
``measure_subpixel``: synthetic views related by known homographies, "matched" by a fake
dense matcher (uniform sub-pixel samples, Gaussian noise of ``noise`` px per coordinate on the
second point), tracks built with each ``refine``, and every index match scored by its transfer
error (distance in px between the second keypoint and the first one mapped by the true
homography).

Reported for each cell size and noise: mean / median transfer error of refine = none / mean / flow,
averaged over ``--seeds`` (independent scenes), the error of the raw matches themselves for
reference (exact: noise sigma * sqrt(pi / 2) mean and sigma * sqrt(2 ln 2) median of a 2D Gaussian),
and the number of index matches scored per scene. ``measure_subpixel`` gives no other quantiles.

    python benchmarks/subpixel.py [--cell-sizes 4 8] [--noise 0 0.3] [--seeds 0 1 2] [--readme [FILE]]

Table markers: ``subpixel-table``. Synthetic data only; a run takes a few seconds.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from command import command_line
from readme import TARGET, write_table
from synthetic import HomographyMatcher, random_homographies, transfer

from roma_sfm.pipelines import tracks
from roma_sfm.presets import NUM_SAMPLES

REFINES = ("none", "mean", "flow")


def measure_subpixel(cell_size: float = 8.0, num_images: int = 3, num_samples: int = NUM_SAMPLES, noise: float = 0.0,
                     seed: int = 0, size: tuple[int, int] = (480, 360)) -> dict[str, dict[str, float]]:
    """Transfer error of the index matches per ``refine`` mode on synthetic homographies.

    Every pair of ``num_images`` views related by known homographies is 'matched' by
    :class:`synthetic.HomographyMatcher` (uniform sub-pixel samples, like a dense
    matcher), tracks are built, and each match is scored against the true homography.
    """
    names = [f"{i:03d}.png" for i in range(num_images)]
    Hs = random_homographies(names, size, seed)
    m = HomographyMatcher(Hs, size, noise=noise)
    pm = {(a, b): m.match(a, b).sample(num_samples, seed=seed + i) for i, (a, b) in enumerate(combinations(names, 2))}
    sizes = {n: size for n in names}
    out = {}
    for refine in ("none", "mean", "flow"):
        kps, _, matches = tracks.build_tracks(pm, sizes, cell_size, refine=refine)
        e = np.concatenate([np.linalg.norm(transfer(Hs[a], Hs[b], kps[a][i[:, 0]].astype(np.float64)) - kps[b][i[:, 1]], axis=1)
                            for (a, b), (i, _) in matches.items()])
        out[refine] = {"mean": float(e.mean()), "median": float(np.median(e)), "num": int(len(e))}
    return out


def raw_error(noise: float) -> tuple[float, float]:
    """Mean and median length of a 2D isotropic Gaussian offset of ``noise`` px per coordinate
    (Rayleigh distribution): the transfer error of the raw matches before any quantization."""
    return noise * math.sqrt(math.pi / 2), noise * math.sqrt(2 * math.log(2))


def measure(cell_size: float, noise: float, seeds: Sequence[int], num_images: int,
            num_samples: int) -> dict[str, dict[str, float]]:
    """``measure_subpixel`` per seed, averaged: {refine: {"mean", "median", "num"}} (plus "spread":
    the range of the per-seed means)."""

    runs = [measure_subpixel(cell_size=cell_size, num_images=num_images, num_samples=num_samples,
                             noise=noise, seed=s) for s in seeds]
    out = {}
    for r in REFINES:
        means = [run[r]["mean"] for run in runs]
        out[r] = {"mean": float(np.mean(means)), "median": float(np.mean([run[r]["median"] for run in runs])),
                  "num": float(np.mean([run[r]["num"] for run in runs])), "spread": float(np.ptp(means))}
    return out


def format_table(rows: Sequence[tuple[float, float, dict]], seeds: Sequence[int], num_images: int,
                 num_samples: int, seconds: float, command: str) -> str:
    """rows: (cell size, noise, result of :func:`measure`)."""
    head = ["cell (px)", "noise (px)", "raw matches", *(f"refine={r}" for r in REFINES), "flow / none (mean)",
            "index matches / scene"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for cell, noise, res in rows:
        raw = " / ".join(f"{v:.2f}" for v in raw_error(noise))
        cells = [f"{res[r]['mean']:.2f} / {res[r]['median']:.2f}" for r in REFINES]
        ratio = res["flow"]["mean"] / res["none"]["mean"] if res["none"]["mean"] > 0 else float("nan")
        lines.append(f"| {cell:g} | {noise:g} | {raw} | " + " | ".join(cells)
                     + f" | {100 * ratio:.0f} % | {res['flow']['num']:.0f} |")
    spread = max(res[r]["spread"] for _, _, res in rows for r in REFINES)
    lines += ["", f"Transfer error (px, mean / median) of the tracks step's index matches against the true "
              f"homography, by `refine` of `tracks.build_tracks` (the pipeline runs flow; cell = `--cell-size`), from "
              f"`benchmarks/subpixel.py`: {num_images} synthetic 480x360 views per scene, "
              f"all their pairs matched by a fake dense matcher ({num_samples} uniform sub-pixel samples per "
              f"pair, Gaussian noise of the given px per coordinate), averaged over {len(seeds)} scenes (seeds "
              f"{', '.join(map(str, seeds))}; per-seed means differ by at most {spread:.2f} px). Raw matches: the "
              f"matcher's own error, exact for that noise. `{command}` "
              f"({platform.processor() or platform.machine()}), {seconds:.1f} s."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell-sizes", type=float, nargs="+", default=[4.0, 8.0])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3], help="px per coordinate")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num-images", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=10000, help="sampled matches per pair")
    ap.add_argument("--readme", type=Path, nargs="?", const=TARGET, default=None,
                    help="write the table(s) into this file (alone: docs/benchmarks.md)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for cell in args.cell_sizes:
        for noise in args.noise:
            rows.append((cell, noise, measure(cell, noise, args.seeds, args.num_images, args.num_samples)))
            print(f"cell {cell:g} px, noise {noise:g} px: "
                  + ", ".join(f"{r} {rows[-1][2][r]['mean']:.3f}" for r in REFINES), file=sys.stderr, flush=True)
    table = format_table(rows, args.seeds, args.num_images, args.num_samples, time.perf_counter() - t0,
                         command_line("subpixel.py", ap, args))
    print(table)
    if args.readme:
        write_table("subpixel-table", table, args.readme)
    return {"table": table, "rows": rows}


if __name__ == "__main__":
    main()
