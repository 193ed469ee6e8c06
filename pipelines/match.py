"""Step 2: match image pairs into ``matches.h5`` (hloc's dense-matching layout, see :mod:`.h5io`).

Streams the pairs, resumes pairs already matched (refusing a file made with another matcher
signature), keeps every finished pair safe in the journal, and can spread the work over a Ray
cluster (:mod:`.cluster`). The matchers live in :mod:`.matchers`.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from ..presets import CACHE_MB, DECODE_WORKERS, DEVICE, NUM_SAMPLES
from .h5io import (JournalWriter, consolidate, fingerprint, journal_dir, merge_shard, shards_dir, stored_meta,
                   stored_pairs)
from .matchers import get_matcher, match_stream, matcher_kind, matcher_name, matcher_signature, signature_diff
from .utils import iter_pairs, logger, scan_images

# the step's defaults (the CLI and reconstruct read them here)
confs = {
    "default": {"num_samples": NUM_SAMPLES, "balanced": True, "seed": 0, "batch_size": 1,
                "num_workers": DECODE_WORKERS, "cache_mb": CACHE_MB, "shard_size": 64},
}
DEFAULTS = confs["default"]


@dataclass
class MatchStats:
    num_pairs: int = 0  # pairs requested
    num_matched: int = 0  # pairs matched in this run
    num_resumed: int = 0  # pairs already in the file
    num_failed: int = 0  # pairs skipped because an image could not be read / matching failed
    skipped_images: dict[str, str] = field(default_factory=dict)  # name -> reason
    seconds: float = 0.0


def _progress(total: int, enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.2f} pairs/s" if task.speed else "-- pairs/s")

    return Progress(TextColumn("matching"), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled, transient=False)


def _check_resumable(output: Path, name: str, signature: dict) -> None:
    """Raise ValueError when ``output`` (or its journal) holds matches of another configuration."""
    previous = stored_meta(output)
    if "matcher_signature" in previous:
        diffs = signature_diff(previous["matcher_signature"], signature)
    else:  # a file from before signatures: only the name can be checked
        diffs = signature_diff({"matcher": previous["matcher"]}, {"matcher": name}) if "matcher" in previous else []
        if "matcher" in previous and not diffs:
            logger.warning("match: %s records no matcher settings; resuming on the matcher name only", output)
    if diffs:
        raise ValueError(f"{output} holds matches of another matcher configuration ({'; '.join(diffs)}): pass "
                         f"overwrite=True or use another output folder instead of mixing them")


def _safe_fingerprint(path: Path) -> str:
    """:func:`fingerprint`, or '' when the file cannot be read (matchers may not read files at all)."""
    try:
        return fingerprint(path)
    except OSError:
        return ""


def _pair_source(pairs: Union[Path, str, Iterable[tuple[str, str]]]) -> Callable[[], Iterator[tuple[str, str]]]:
    """A re-iterable view of the pairs: a pairs file is re-read lazily (no list of all pairs)."""
    if isinstance(pairs, (str, Path)):
        return lambda: iter_pairs(Path(pairs))
    seq = pairs if isinstance(pairs, Sequence) else list(pairs)
    return lambda: ((str(a), str(b)) for a, b in seq)


def main(pairs: Union[Path, Iterable[tuple[str, str]]], images: Path, output: Path, matcher: Any = "sift",
         num_samples: int = DEFAULTS["num_samples"], balanced: bool = DEFAULTS["balanced"],
         seed: int = DEFAULTS["seed"], batch_size: int = DEFAULTS["batch_size"], overwrite: bool = False,
         device: str = DEVICE, progress: bool = True, skipped_images: Optional[dict[str, str]] = None,
         num_workers: int = DEFAULTS["num_workers"], cache_mb: float = DEFAULTS["cache_mb"],
         ray: Optional[str] = None, ray_workers: Optional[int] = None, shard_size: int = DEFAULTS["shard_size"],
         threads: Optional[int] = None) -> MatchStats:
    """Match every pair (names relative to ``images``) and write ``output`` (matches.h5).

    Streams: a pairs file is read lazily, images are decoded ``num_workers`` threads ahead of the
    model, per-image encoder features are cached (``cache_mb``, RoMa), pairs go through the model
    ``batch_size`` at a time, and each result goes to disk at once; memory does not grow with the
    number of pairs.

    Resumable: pairs already in ``output`` (or its journal, or shard files of a killed distributed
    run) are skipped unless ``overwrite`` or one of their images changed content since (its pairs
    are matched again). The file records :func:`matcher_signature` (matcher, resolution, weights,
    sampling); resuming with a different one raises ValueError naming what differs
    (``overwrite=True`` starts afresh). Pairs naming an unreadable image are skipped with a warning
    and listed in the stats.

    ``ray``: match on a Ray cluster instead ('' or 'local' for a local one, else its address), in
    shards of ``shard_size`` pairs over ``ray_workers`` workers (see :mod:`.cluster`); the results
    are bit for bit those of one process run with the same ``threads``.

    ``threads``: torch intra-op threads of the matcher (each Ray worker's; default: torch's own in
    one process, the cluster's CPUs / workers on Ray). Floating-point sums depend on how they are
    split over threads, so dense matches are reproducible bit for bit only at equal ``threads``
    (at other counts the warps agree to ~1e-5 px, but the sampled subsets differ).
    """
    t0 = time.perf_counter()
    images, output = Path(images), Path(output)
    source = _pair_source(pairs)
    if overwrite:
        output.unlink(missing_ok=True)
        shutil.rmtree(journal_dir(output), ignore_errors=True)
        shutil.rmtree(shards_dir(output), ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    matcher = get_matcher(matcher, device=device)
    name, kind = matcher_name(matcher), matcher_kind(matcher)
    signature = matcher_signature(matcher, num_samples=num_samples, balanced=balanced, seed=seed)
    _check_resumable(output, name, signature)
    writer = JournalWriter(output, name, signature=signature, kind=kind)
    consolidate(output, name, signature, kind)  # merge what a killed run left in the journal
    shards = sorted(shards_dir(output).glob("*.h5"))  # ... and in the shards of a killed Ray run
    for shard in shards:
        logger.info("match: recovered %d pairs from %s", merge_shard(writer, shard), shard.name)
    if shards:
        writer.merge()
    done = stored_pairs(output)

    # one pass for the image names (bounded by the number of images, not of pairs)
    names: set[str] = set()
    for a, b in source():
        names.update((a, b))
    bad = dict(skipped_images or {})
    if skipped_images is None:  # unreadable images: from the caller's scan, else found now
        bad.update(scan_images(images, image_list=sorted(names)).skipped)
    prints = {n: _safe_fingerprint(images / n) for n in sorted(names - set(bad))}

    def is_changed(stored: dict[str, str], n: str) -> bool:
        return bool(stored.get(n)) and bool(prints[n]) and stored[n] != prints[n]

    def status(a: str, b: str) -> str:
        if a in bad or b in bad:
            return "failed"
        stored = done.get((a, b), done.get((b, a)))
        if stored is None:
            return "todo"
        if is_changed(stored, a) or is_changed(stored, b):
            return "changed"
        return "resumed"

    stats = MatchStats()
    changed = set()
    for a, b in source():
        st = status(a, b)
        stats.num_pairs += 1
        stats.num_resumed += st == "resumed"
        stats.num_failed += st == "failed"
        if st == "changed":
            changed.update(n for n in (a, b) if is_changed(done.get((a, b), done.get((b, a))), n))
    if stats.num_resumed:
        logger.info("match: %d of %d pairs already in %s, resuming", stats.num_resumed, stats.num_pairs, output)
    if changed:
        logger.warning("match: %d image(s) changed since they were matched (%s): their pairs are matched again",
                       len(changed), ", ".join(sorted(changed)[:5]) + (" ..." if len(changed) > 5 else ""))
    num_todo = stats.num_pairs - stats.num_resumed - stats.num_failed

    def todo() -> Iterator[tuple[str, str]]:
        return ((a, b) for a, b in source() if status(a, b) in ("todo", "changed"))

    def record(pair: tuple[str, str], res: Any) -> None:
        a, b = pair
        if isinstance(res, Exception):
            p = Path(getattr(res, "path", images / a))
            bad_name = p.relative_to(images).as_posix() if p.is_relative_to(images) else a
            logger.warning("match: skipping pair (%s, %s): %s", a, b, res)
            bad[bad_name] = getattr(res, "reason", str(res))
            stats.num_failed += 1
            return
        k0, k1, s = res.sample(num=num_samples, balanced=balanced, seed=seed)
        writer.add({"name0": a, "name1": b, "kpts0": np.asarray(k0, np.float32), "kpts1": np.asarray(k1, np.float32),
                    "scores": np.asarray(s, np.float32), "size0": np.asarray(res.size_A),
                    "size1": np.asarray(res.size_B), "fingerprint0": prints[a], "fingerprint1": prints[b]})
        stats.num_matched += 1

    with _progress(num_todo, progress) as prog:
        task = prog.add_task("match", total=num_todo)
        if ray is not None:
            from . import cluster

            def sink(shard: Path) -> int:  # a finished shard's pairs go into matches.h5 through the journal
                return merge_shard(writer, shard)

            done_ray = cluster.run(todo(), images, shards_dir(output), matcher, sink, main,
                                   match_kwargs={"num_samples": num_samples, "balanced": balanced, "seed": seed},
                                   batch_size=batch_size, address=ray, num_workers=ray_workers,
                                   shard_size=shard_size, on_done=lambda n: prog.advance(task, n), threads=threads)
            stats.num_matched += done_ray.matched
            stats.num_failed += done_ray.failed
        else:
            from ..matcher import torch_threads

            with torch_threads(threads):
                for pair, res in match_stream(matcher, todo(), images, batch_size, num_workers, cache_mb):
                    prog.advance(task)
                    record(pair, res)
    writer.merge()
    stats.skipped_images = bad
    stats.seconds = time.perf_counter() - t0
    logger.info("match: %d new, %d resumed, %d failed pairs in %.1f s -> %s", stats.num_matched,
                stats.num_resumed, stats.num_failed, stats.seconds, output)
    return stats
