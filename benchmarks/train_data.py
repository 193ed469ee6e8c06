"""Training-data speed: pairs per second of each training source, one process, one thread.

    python benchmarks/train_data.py [--size 336] [--pairs 40] [--track-indexes a.npz ...] [--write-readme]

Training on 2 CPU cores consumes ~1-1.5 pairs/s at 336 px (batch 4); the data loader runs in one
worker process, so each source must deliver well above that on one core. Sources: the 2-D synthetic
warps (``data.SyntheticPairs``, BSDS500), the rendered 3-D scenes (``scenes.ScenePairs``, textured
with BSDS500 and the multi-view photos) and, when index files are given, real multi-view pairs
(``multiview.TrackPairs``). The first few pairs (photo decoding, caches) are not timed.
Table markers: ``train-data-table`` (in docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from readme import TARGET, publish
from common import DATA

from roma_sfm.train.data import SynthConfig, SyntheticPairs
from roma_sfm.train.multiview import TrackPairs
from roma_sfm.train.scenes import ScenePairs


def pairs_per_second(ds, n: int, warmup: int = 5) -> tuple[float, float]:
    """(pairs/s, mean covisible share of A) over n samples after a warm-up."""
    for i in range(warmup):
        ds[i]
    cover = []
    t = time.perf_counter()
    for i in range(warmup, warmup + n):
        s = ds[i]
        cover.append(float(s["mask"].mean()) if "mask" in s else float("nan"))
    return n / (time.perf_counter() - t), float(np.nanmean(cover)) if not np.isnan(cover).all() else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=336)
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--bsds", type=Path, default=DATA / "train" / "bsds500")
    ap.add_argument("--multiview", type=Path, default=DATA / "train" / "multiview")
    ap.add_argument("--track-indexes", nargs="*", default=[])
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--readme", type=Path, default=TARGET)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    size = (args.size, args.size)
    photos = [args.bsds / "train", args.bsds / "test"]
    sources = {
        "2-D synthetic warps (SyntheticPairs)": SyntheticPairs(photos, size, seed=1, cfg=SynthConfig(neg_prob=0.15)),
        "rendered 3-D scenes (ScenePairs)": ScenePairs(photos + [args.multiview], size, seed=1),
    }
    if args.track_indexes:
        sources["real multi-view tracks (TrackPairs)"] = TrackPairs(args.track_indexes, size, seed=1)
    lines = ["| source | pairs / s | covisible share of A (mean) |", "|---|---|---|"]
    results = {}
    for name, ds in sources.items():
        rate, cover = pairs_per_second(ds, args.pairs)
        results[name] = rate
        lines.append(f"| {name} | {rate:.1f} | {'-' if np.isnan(cover) else f'{cover:.2f}'} |")
        print(lines[-1], flush=True)
    lines += ["", f"{args.pairs} pairs of {args.size}x{args.size} per source after 5 untimed ones, one process, one "
              f"thread, including the conversion to tensors. `python benchmarks/train_data.py` "
              f"({platform.processor() or platform.machine()})."]
    table = publish("train-data-table", lines, args.readme if args.write_readme else None)
    return {"table": table, "results": results}


if __name__ == "__main__":
    main()
