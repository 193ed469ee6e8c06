"""Shared pieces of the two-view benchmarks (``pose.py``, ``planar.py``).

- ``DATA``: the shared evaluation data (``$ROMA_SFM_SHARED/data``, default ``../shared/data``).
  EVALUATION ONLY: read in place, never copied into the repository.
- ``build_matcher(spec, device)``: ``roma`` (the shipped model, ``load_matcher()``), a preset name,
  a ``.safetensors`` checkpoint, ``sift`` (our SiftMatcher as in the pipeline: RootSIFT, contrast
  0.02, ratio 0.8, mutual check) or ``sift-opencv`` (plain OpenCV SIFT: 8000 features, OpenCV
  defaults, ratio test 0.8 and no mutual check; the peer of the data README's reference numbers).
  A RoMa spec may end in ``@COARSE[:FINE]``, the CLI's ``--resolution`` (e.g. ``roma@448:none``),
  then in ``~ZOOM``, the CLI's ``--zoom`` (e.g. ``roma~0`` never re-matches a zoomed pair), and
  then in ``+PRECISION``, the CLI's ``--precision`` (e.g. ``roma+bf16``), and then in ``^0`` for
  the CLI's ``--no-photometric`` (``^1``: ``--photometric``; e.g. ``roma^0``: the raw warp's matches).
- ``TimedMatcher``: (path A, path B) -> (kpts A, kpts B) in pixels of the originals, COLMAP
  convention (corner at 0, pixel centres at +0.5), and the seconds spent matching. Dense matchers
  are sampled (``num_samples``, balanced); a sparse matcher gives all its matches.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from readme import TARGET

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ROMA_SFM_SHARED", ROOT.parent / "shared")) / "data"

MATCHER_HELP = ("matchers to compare: 'roma' (the shipped model), a preset name, a .safetensors checkpoint, "
                "'sift' (our SiftMatcher, as in the pipeline), 'sift-colmap' (it with COLMAP's extractor) or "
                "'sift-opencv' (plain OpenCV SIFT, 8000 features, ratio 0.8, no mutual check); a RoMa spec "
                "may end in @RES, the CLI's --resolution (e.g. roma@448:none for one pass), then in ~ZOOM, the CLI's --zoom (e.g. roma~0), then in "
                "+PRECISION, the CLI's --precision (e.g. roma+bf16), then in ^0, the CLI's --no-photometric (e.g. roma^0)")


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--matcher", nargs="+", default=["roma"], help=MATCHER_HELP)
    ap.add_argument("--num-samples", type=int, default=5000, help="matches sampled from a dense matcher")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N pairs (quick checks)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenCV threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no per-pair lines")
    ap.add_argument("--write-readme", action="store_true", help="write the table into docs/benchmarks.md (--readme)")
    ap.add_argument("--readme", type=Path, default=TARGET, help="file used by --write-readme")


def set_threads(n: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(max(1, n))
    cv2.setNumThreads(max(1, n))


def label(spec: str) -> str:
    """Row label: a checkpoint path is shown by its file name."""
    s = str(spec)
    return Path(s).name if (os.sep in s or s.endswith(".safetensors")) else s


def with_resolution(spec: str, device: str = "auto") -> Any:
    """``NAME[@RES][~ZOOM][+PRECISION][^0|1]`` -> the matcher the CLI loads for ``--matcher NAME
    --resolution RES --zoom ZOOM --precision PRECISION --[no-]photometric``; a spec with none of
    them is returned unchanged."""
    from roma_sfm.pipelines.matchers import resolve

    rest, hat, photometric = str(spec).partition("^")
    if hat and photometric not in ("0", "1"):
        raise ValueError(f"{spec}: ^ takes 0 (--no-photometric) or 1 (--photometric)")
    rest, plus, precision = rest.partition("+")
    rest, tilde, zoom = rest.partition("~")
    name, at, res = rest.partition("@")
    if not (at or tilde or plus or hat):
        return spec
    return resolve(name, res if at else None, device, float(zoom) if tilde else None,
                   precision if plus else None, photometric == "1" if hat else None).matcher


def build_matcher(spec: str, device: str = "auto") -> Any:
    from roma_sfm.pipelines.matchers import SiftMatcher, get_matcher

    if any(c in str(spec) for c in "@~+^"):
        return get_matcher(with_resolution(spec, device), device=device)
    if str(spec).lower() == "sift-opencv":
        # cv2.SIFT_create(8000) with OpenCV's defaults + Lowe's ratio test, exact L2 neighbours
        return SiftMatcher(max_features=8000, ratio=0.8, mutual=False, rootsift=False, contrast_threshold=0.04)
    return get_matcher(spec, device=device)


class TimedMatcher:
    def __init__(self, matcher: Any, num_samples: int = 5000, balanced: bool = True, seed: int = 0):
        self.matcher, self.num_samples, self.balanced, self.seed = matcher, num_samples, balanced, seed
        self.seconds: list[float] = []

    def __call__(self, a, b) -> tuple[np.ndarray, np.ndarray]:
        return self.draws(a, b, [self.seed])[0]

    def draws(self, a, b, seeds: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One match of (a, b), then its matches sampled with each seed (timed: the match and the first
        sample). A sparse matcher's matches are all of them, the same for every seed."""
        from roma_sfm.pipelines.matchers import SparseMatches

        t = time.perf_counter()
        res = self.matcher.match(str(a), str(b))
        out = []
        for seed in seeds:
            if isinstance(res, SparseMatches):  # every match of a sparse matcher, not the top num_samples
                ka, kb = res.kpts_A, res.kpts_B
            else:
                ka, kb, _ = res.sample(num=self.num_samples, balanced=self.balanced, seed=seed)
            out.append((np.asarray(ka, np.float64).reshape(-1, 2), np.asarray(kb, np.float64).reshape(-1, 2)))
            if len(out) == 1:
                self.seconds.append(time.perf_counter() - t)
        return out

    @property
    def mean_seconds(self) -> float:
        return float(np.mean(self.seconds)) if self.seconds else float("nan")


def fmt(x: Optional[float], digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    if np.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def run_matchers(args: argparse.Namespace, lines: list[str], evaluate: Callable[[Any, Optional[Callable]], dict],
                 row: Callable[[str, dict], str]) -> dict[str, dict]:
    """Evaluate each ``--matcher`` in turn and append its table row to ``lines``.

    ``evaluate(timed_matcher, log)`` returns the metrics; a matcher that cannot load gets a
    "not run" row and the others still run. Returns {label: metrics + seconds_per_pair}.
    """
    import sys

    log = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    columns = lines[0].count("|") - 1
    results = {}
    for spec in args.matcher:
        name = label(spec)
        try:
            matcher = build_matcher(spec, args.device)
        except Exception as e:  # e.g. a preset whose weights are absent: report it, run the others
            print(f"{name}: cannot load the matcher: {e}", file=sys.stderr)
            lines.append(f"| {name} | not run: {type(e).__name__} |" + " |" * (columns - 2))
            continue
        if log:
            log(f"{name}:")
        timed = TimedMatcher(matcher, args.num_samples, balanced=True, seed=args.seed)
        r = evaluate(timed, log)
        r["seconds_per_pair"] = timed.mean_seconds
        results[name] = r
        lines.append(row(name, r))
        print(lines[-1], flush=True)
    return results
