"""Calibrate the pipeline's pair gate (``tracks.confs[...]["min_pair_score"]``) on training-side data.

A dense matcher samples matches for every pair, also for views that share nothing, and smooth wrong
warps then pass RANSAC (the castle scenes, a courtyard loop of look-alike facades). The tracks step
leaves out a pair whose ``tracks.pair_score`` (mean sampled certainty x the share of the samples
that fit one fundamental matrix) is below ``min_pair_score``. This script measures that statistic
on held-out synthetic pairs of BSDS500 *val* (training-side data, never the evaluation sets) with
the matcher exactly as the pipeline runs it (default resolution and second pass, 10000 balanced
samples), at 768x512 like a downscaled 3:2 photo:

- positives: the default synthetic pairs (>= 25 % covisible);
- negatives: half a far, non-overlapping part of the same photo (same textures), half another photo.

It prints the score quantiles of both and, for a range of thresholds, the share of positives kept
(a positive counts when the matcher got it right: most of its samples near the ground truth), of
failed positives and of negatives rejected, and the chosen gate: the geometric middle of the gap
between the negatives' 95 % and the matched positives' 5 % quantile (real photos are harder than
synthetic pairs on both sides, see ``choose``). ``--write-readme``
puts the table into docs/benchmarks.md (``<!-- pair-gate-table -->``).

    python benchmarks/pair_gate.py [--matcher roma] [--pairs 64] [--write-readme]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from readme import TARGET, publish
from common import DATA, build_matcher, label, set_threads

THRESHOLDS = (0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)
NEG_Q, POS_Q = 0.95, 0.05  # the gap between the classes: negatives' 95 % and positives' 5 % quantile
CORRECT_PX = 5.0  # a sampled match this close to the ground truth is correct
MATCHED = 0.5  # a positive is "matched" when at least this share of its samples is correct


def pair_scores(matcher, pairs, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per pair (a dict of SyntheticPairs.pair): its ``tracks.pair_score`` and the share of sampled
    matches within CORRECT_PX of the ground truth; and the seconds per pair."""
    from roma_sfm.pipelines.tracks import pair_score

    score, correct, t = [], [], time.perf_counter()
    for p in pairs:
        ka, kb, s = matcher.match(p["im_A"], p["im_B"]).sample(num=num_samples, balanced=True, seed=seed)
        h, w = p["mask"].shape
        score.append(pair_score(ka, kb, s, (w, h), (w, h)))
        ij = np.clip(np.floor(ka).astype(int), 0, [w - 1, h - 1])  # COLMAP convention -> pixel index
        gt = (p["warp"][ij[:, 1], ij[:, 0]] + 1) * np.array([w, h]) / 2  # normalised -> COLMAP pixels
        ok = p["mask"][ij[:, 1], ij[:, 0]] & (np.linalg.norm(gt - kb, axis=1) < CORRECT_PX)
        correct.append(float(ok.mean()) if len(ok) else 0.0)
    return np.array(score), np.array(correct), (time.perf_counter() - t) / max(len(score), 1)


def choose(pos: np.ndarray, neg: np.ndarray, candidates=np.round(np.arange(0.01, 0.61, 0.01), 2)) -> float:
    """The threshold in the middle of the gap (geometric mean) between the negatives' upper quantile
    and the matched positives' lower one (NEG_Q, POS_Q). Synthetic data is easier on both sides
    than real photos: real non-overlapping views of look-alike facades score higher than synthetic
    negatives, real wide baselines lower than synthetic positives, so neither edge of the gap is a
    safe gate. Without a gap: the threshold of best balanced accuracy."""
    lo = float(np.quantile(neg, NEG_Q))
    hi = float(np.quantile(pos, POS_Q)) if len(pos) else 1.0
    if lo < hi:
        return float(candidates[np.argmin(np.abs(np.log(candidates) - 0.5 * np.log(max(lo, 1e-3) * hi)))])
    kept = np.array([(pos >= t).mean() if len(pos) else 1.0 for t in candidates])
    rejected = np.array([(neg < t).mean() for t in candidates])
    return float(candidates[np.argmax(kept + rejected)])


def main(argv=None) -> dict:
    from roma_sfm.train.data import SynthConfig, SyntheticPairs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matcher", default="roma", help="'roma' (the shipped model), a preset or a checkpoint")
    ap.add_argument("--val-root", type=Path, default=DATA / "train" / "bsds500" / "val")
    ap.add_argument("--pairs", type=int, default=64, help="positives, and as many negatives")
    ap.add_argument("--size", type=int, nargs=2, default=(512, 768), metavar=("H", "W"))
    ap.add_argument("--num-samples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=2_000_000, help="first synthetic sample (val seeds differ)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--readme", type=Path, default=TARGET)
    args = ap.parse_args(argv)
    if not args.val_root.is_dir():
        ap.error(f"{args.val_root} not found (BSDS500 val, see ../shared/data/README.md)")
    set_threads(args.threads)
    matcher = build_matcher(args.matcher, args.device)
    size = tuple(args.size)
    sets = {"positives": SyntheticPairs(args.val_root, size, seed=args.seed, cfg=SynthConfig()),
            "negatives": SyntheticPairs(args.val_root, size, seed=args.seed, cfg=SynthConfig(neg_prob=1.0))}
    scores, correct, secs = {}, {}, []
    for k, ds in sets.items():
        scores[k], correct[k], sec = pair_scores(matcher, map(ds.pair, range(args.pairs)), args.num_samples, 0)
        secs.append(sec)
        print(f"{k}: pair score quantiles 5/50/95 % "
              + " / ".join(f"{q:.3f}" for q in np.quantile(scores[k], [0.05, 0.5, 0.95])), file=sys.stderr)
    matched = correct["positives"] >= MATCHED
    pos, failed, neg = scores["positives"][matched], scores["positives"][~matched], scores["negatives"]
    best = choose(pos, neg)

    def row(name: str, x: np.ndarray, keep: bool) -> str:
        share = (lambda t: (x >= t).mean()) if keep else (lambda t: (x < t).mean())
        cells = [f"{100 * share(t):.0f} %" if len(x) else "-" for t in (*THRESHOLDS, best)]
        return f"| {name} ({len(x)}) | " + " | ".join(cells) + " |"

    lines = ["| min_pair_score | " + " | ".join(f"{t:g}" for t in THRESHOLDS) + f" | chosen: {best:.2f} |",
             "|---" * (len(THRESHOLDS) + 2) + "|",
             row("matched positives kept", pos, True),
             row("failed positives rejected", failed, False),
             row("negatives rejected", neg, False),
             "",
             f"{label(args.matcher)} at the pipeline's settings ({args.num_samples} balanced samples), "
             f"{args.pairs} positive and {args.pairs} negative synthetic {size[1]}x{size[0]} pairs of BSDS500 val; "
             f"a positive is matched when >= {100 * MATCHED:.0f} % of its samples lie within {CORRECT_PX:g} px of the "
             f"ground truth. Pair score (mean certainty x epipolar inlier share), 5/50/95 % quantiles: matched positives "
             + " / ".join(f"{q:.2f}" for q in np.quantile(pos, [0.05, 0.5, 0.95])) + ", negatives "
             + " / ".join(f"{q:.2f}" for q in np.quantile(neg, [0.05, 0.5, 0.95]))
             + f". Chosen = the geometric middle of the gap between the negatives' {100 * NEG_Q:.0f} % and the "
             f"matched positives' {100 * POS_Q:.0f} % quantile. "
             f"`python benchmarks/pair_gate.py` on {args.threads} CPU threads "
             f"({platform.processor() or platform.machine()}), {np.mean(secs):.2f} s / pair."]
    table = publish("pair-gate-table", lines, args.readme if args.write_readme else None)
    return {"table": table, "chosen": best, "matched": pos, "failed": failed, "negatives": neg}


if __name__ == "__main__":
    main()
