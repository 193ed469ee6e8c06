"""Scale benchmark: batch matching of a photo collection, memory and time vs the number of pairs.

1. Builds a collection of ``--images`` photos from ../shared/data/train/bsds500 (random crops,
   flips and colour changes of the 500 photos, ``--size`` pixels, JPEG), unless it exists.
2. Retrieval pairs, top ``--num-matched`` per image (``roma-sfm pairs --mode retrieval``).
3. ``roma-sfm match`` (a fresh process each time, output deleted first) on the first 1/4, 1/2 and
   all of the pairs, then all of them on a local Ray cluster with ``--ray-workers`` workers; the
   process tree's resident memory (driver, threads, Ray's raylet, GCS and workers) is sampled
   every 0.2 s for the peak.
4. Checks that the Ray run wrote the same matches as a single-process run with as many torch threads
   as a worker has (the first quarter of the pairs; float sums depend on the thread count), and
   against the default single-process run, and prints a table
   (``--readme`` writes it between ``<!-- scale-table -->`` markers).

Usage:
    python benchmarks/scale.py --readme
    python benchmarks/scale.py --images 100 --fractions 0.5 1 --no-ray      # a quick look
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from roma_sfm.pipelines import h5io

from readme import TARGET, write_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT / ".." / "shared" / "data" / "train" / "bsds500"


def make_collection(source: Path, out: Path, num: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``num`` JPEGs of ``size`` (W, H): random crops (40-90 % of the side), flips and colour
    changes of the photos under ``source``; several views per photo, so retrieval has real pairs."""
    photos = sorted(source.rglob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"no photos under {source}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num):
        path = out / f"{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        im = cv2.imread(str(photos[i % len(photos)]))
        h, w = im.shape[:2]
        s = rng.uniform(0.4, 0.9)
        cw, ch = int(w * s), int(h * s)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = im[y:y + ch, x:x + cw]
        if rng.random() < 0.3:
            crop = crop[:, ::-1]
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        crop = np.clip(crop * rng.uniform(0.7, 1.3) + rng.uniform(-20, 20, 3), 0, 255).astype(np.uint8)
        cv2.imwrite(str(path), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d))
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run_measured(cmd: list[str]) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run ``cmd``; (wall seconds, peak RSS of its process tree in bytes, the finished process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    return time.perf_counter() - t0, peak[0], subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def fresh_match(base: list[str], pairs: Path, out: Path, extra: list[str]) -> Optional[tuple[float, int]]:
    """``roma-sfm match`` (``base`` + pairs, output, ``extra``) into a fresh ``out``: (wall seconds, peak
    RSS in bytes), or None (its output printed) when it failed."""
    for p in (out, h5io.journal_dir(out), h5io.shards_dir(out)):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    secs, peak, proc = run_measured(base + ["--pairs", str(pairs), "-o", str(out)] + extra)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        return None
    return secs, peak


def same_matches(a: Path, b: Path) -> tuple[int, int]:
    """(pairs compared, pairs that differ) between two matches files."""
    from roma_sfm.pipelines import match

    pairs = h5io.list_pairs(a)
    differ = 0
    for n0, n1 in pairs:
        x, y = h5io.read_matches(a, n0, n1), h5io.read_matches(b, n0, n1)
        differ += not all(np.array_equal(u, v) for u, v in zip(x, y))
    return len(pairs), differ


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="batch matching: memory and time vs number of pairs")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--work", type=Path, default=Path("/tmp/roma-sfm-scale"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--num-matched", type=int, default=10, help="retrieval: pairs per image")
    parser.add_argument("--matcher", default="roma")
    parser.add_argument("--resolution", default="224:none", help="RoMa resolution (roma-sfm match --resolution)")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--fractions", type=float, nargs="+", default=(0.25, 0.5, 1.0))
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--readme", type=Path, nargs="?", const=TARGET, default=None,
                    help="write the table(s) into this file (alone: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"photo folder {args.source} not found: nothing to benchmark", file=sys.stderr)
        return 1
    from roma_sfm.pipelines import pairs as pairs_
    from roma_sfm.pipelines.utils import read_pairs, write_pairs

    images = args.work / "images"
    t0 = time.perf_counter()
    make_collection(args.source, images, args.images, tuple(args.size))
    all_pairs = pairs_.main(images, args.work / "pairs.txt", mode="retrieval", num_matched=args.num_matched)
    t_pairs = time.perf_counter() - t0
    print(f"{args.images} images, {len(all_pairs)} retrieval pairs (top {args.num_matched}) in {t_pairs:.0f} s",
          flush=True)
    base = [sys.executable, "-m", "roma_sfm.cli.main", "match", str(images), "--matcher", args.matcher,
            "--num-samples", str(args.num_samples), "--batch-size", str(args.batch_size)]
    if args.matcher.lower() not in ("sift", "sift-opencv"):
        base += ["--resolution", args.resolution]
    runs = [(f, False) for f in args.fractions] + ([] if args.no_ray else [(max(args.fractions), True)])
    rows, outputs = [], {}
    for n in {max(1, int(round(len(all_pairs) * f))) for f in args.fractions} | {
            max(1, int(round(len(all_pairs) * max(args.fractions))) // 4)}:
        write_pairs(read_pairs(args.work / "pairs.txt")[:n], args.work / f"pairs-{n}.txt")
    for frac, ray in runs:
        n = max(1, int(round(len(all_pairs) * frac)))
        pf = args.work / f"pairs-{n}.txt"
        out = args.work / f"matches-{n}{'-ray' if ray else ''}.h5"
        extra = ["--ray", "local", "--ray-workers", str(args.ray_workers)] if ray else []
        result = fresh_match(base, pf, out, extra)
        if result is None:
            return 1
        secs, peak = result
        outputs[(n, ray)] = out
        rows.append({"run": f"local Ray, {args.ray_workers} workers" if ray else "single process", "pairs": n,
                     "seconds": secs, "pairs_per_s": n / secs, "peak_gb": peak / 2**30})
        print(f"{rows[-1]['run']}: {n} pairs in {secs:.0f} s ({n / secs:.2f} pairs/s), peak RSS "
              f"{peak / 2**30:.2f} GB", flush=True)
    same = ""
    n_all = int(round(len(all_pairs) * max(args.fractions)))
    if (n_all, True) in outputs:
        # bit-identity needs the workers' thread count (float sums split the same way): a single-process
        # run of the first quarter of the pairs with that many threads is the reference
        threads = max(1, (os.cpu_count() or 1) // args.ray_workers)
        n_ref = max(1, n_all // 4)
        ref = args.work / f"matches-{n_ref}-threads{threads}.h5"
        if fresh_match(base, args.work / f"pairs-{n_ref}.txt", ref, ["--threads", str(threads)]) is None:
            return 1
        compared, differ = same_matches(ref, outputs[(n_all, True)])
        same = (f"Ray vs a single process with {threads} torch thread(s) like each worker: {compared - differ} "
                f"of {compared} pairs (the first quarter) bit-identical.")
        if (n_all, False) in outputs:
            compared, differ = same_matches(outputs[(n_all, False)], outputs[(n_all, True)])
            same += (f" Against the single process at its default {os.cpu_count()} threads: {compared - differ} "
                     f"of {compared} (float sums split differently; the sampled matches then differ).")
        print(same)
    lines = ["| run | pairs | time (s) | pairs/s | s per 1000 pairs | peak RSS (GB) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['pairs']} | {r['seconds']:.0f} | {r['pairs_per_s']:.2f} | "
                     f"{1000 * r['seconds'] / r['pairs']:.0f} | {r['peak_gb']:.2f} |")
    note = (f"\n{args.images} images of {args.size[0]}x{args.size[1]} made from BSDS500 photos, retrieval top "
            f"{args.num_matched} ({len(all_pairs)} pairs, {t_pairs:.0f} s); `roma-sfm match --matcher {args.matcher}"
            + (f" --resolution {args.resolution}" if "--resolution" in base else "")
            + f" --num-samples {args.num_samples}` in a fresh process per run (model load included), peak RSS of "
            f"the whole process tree sampled every 0.2 s. {same} Measured with `python benchmarks/scale.py` on "
            f"this 2-core machine.")
    text = "\n".join(lines) + "\n" + note
    print(text)
    if args.readme:
        write_table("scale-table", text, args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
