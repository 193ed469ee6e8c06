"""Matching on a Ray cluster: pairs in shards -> one shard file per shard -> merged into matches.h5.

Public API
----------
- ``run(todo, images, output, matcher, writer, num_samples=10000, balanced=True, seed=0, batch_size=1,
        address=None, num_workers=None, shard_size=64, on_done=None, stats=None) -> int``
  Called by ``match.main(..., ray=ADDRESS)``; returns the number of pairs matched.

How it works
------------
- The driver streams ``todo`` into shards of ``shard_size`` pairs and keeps at most two shards per
  worker in flight (memory does not grow with the number of pairs).
- Each worker is a Ray actor holding one copy of the matcher (sent once, by pickling); a shard is
  matched by ``match.main`` into its own file ``<output>.shards/shard-<n>.h5`` (journal, crash
  safety and resume as for any matches file), so a worker never touches ``matches.h5``.
- When a shard is done the driver moves its pairs into ``matches.h5`` through the usual journal
  (``match.merge_shard``) and deletes it. A worker that dies is restarted and its shard retried
  (``max_retries`` times; the retry resumes from the shard file). Shards left by a killed driver
  are recovered by the next ``match.main`` on the same output.
- All workers must see ``images`` and ``output`` at the same paths (one machine, or a shared file
  system on a cluster).
- Every image is encoded alone (see ``Matcher.match_many``) and shards hold whole batches (the
  shard size is rounded up to a multiple of ``batch_size``), so the matches are bit for bit those of
  a single-process run over the same pairs with as many torch threads as a worker has (``threads``,
  default the cluster's CPUs / workers; float sums are split differently at other thread counts).
- Ray starts its workers at nice 15: beside another busy process on the same machine they get
  little CPU (seen here beside a training run niced to 10).
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .utils import logger


def _init_ray(address: Optional[str], num_workers: Optional[int]):
    try:
        import ray
    except ImportError as e:  # an optional extra
        raise RuntimeError("--ray needs Ray: pip install 'roma-sfm[ray]'") from e
    if not ray.is_initialized():
        if address in (None, "", "local"):
            ray.init(num_cpus=num_workers or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    return ray


def _worker_class(ray):
    @ray.remote(num_cpus=1, max_restarts=3, max_task_retries=3)
    class MatchWorker:
        """Holds one matcher; matches shards into their own files."""

        def __init__(self, matcher: Any, threads: int):
            import torch

            torch.set_num_threads(max(1, threads))
            self.matcher = matcher

        def run(self, shard: str, pairs: list, images: str, kwargs: dict) -> tuple[str, int, int]:
            from . import match

            st = match.main(pairs, Path(images), Path(shard), self.matcher, progress=False, skipped_images={},
                            **kwargs)
            return shard, st.num_matched + st.num_resumed, st.num_failed

    return MatchWorker


def _shards(todo: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    todo = iter(todo)
    while chunk := list(itertools.islice(todo, size)):
        yield chunk


def run(todo: Iterator[tuple[str, str]], images: Path, output: Path, matcher: Any, writer: Any,
        num_samples: int = 10000, balanced: bool = True, seed: int = 0, batch_size: int = 1,
        address: Optional[str] = None, num_workers: Optional[int] = None, shard_size: int = 64,
        on_done: Optional[Callable[[int], None]] = None, stats: Any = None, threads: Optional[int] = None) -> int:
    """Match the pairs of ``todo`` on Ray and move them into ``writer``'s file (see module doc)."""
    from . import match

    # shards made of whole batches: every pair meets the same batch-mates as in a single-process run
    shard_size = -(-max(shard_size, 1) // batch_size) * batch_size
    ray = _init_ray(address, num_workers)
    n_workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    # torch threads per worker: the single-process run with the same count gives the same matches
    threads = threads or max(1, int(ray.cluster_resources().get("CPU", n_workers)) // n_workers)
    shard_dir = match._shards_dir(output)
    shard_dir.mkdir(parents=True, exist_ok=True)
    start = max([int(p.stem.split("-")[-1]) for p in shard_dir.glob("shard-*.h5")] + [-1]) + 1
    matcher_ref = ray.put(matcher)
    Worker = _worker_class(ray)
    workers = [Worker.remote(matcher_ref, threads) for _ in range(n_workers)]
    kwargs = {"num_samples": num_samples, "balanced": balanced, "seed": seed, "batch_size": batch_size}
    logger.info("match: Ray with %d workers x %d threads, shards of %d pairs in %s", n_workers, threads,
                shard_size, shard_dir)
    pending: dict = {}  # object ref -> (shard path, its pairs)
    matched = 0
    shards = enumerate(_shards(todo, shard_size), start)
    free = list(workers) * 2  # two shards in flight per worker: one runs, one waits
    busy: dict = {}

    def submit() -> bool:
        if not free:
            return False
        nxt = next(shards, None)
        if nxt is None:
            return False
        i, pairs = nxt
        path = shard_dir / f"shard-{i:06d}.h5"
        w = free.pop()
        ref = w.run.remote(str(path), pairs, str(images), kwargs)
        pending[ref], busy[ref] = (path, pairs), w
        return True

    while submit():
        pass
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        path, pairs = pending.pop(ref)
        free.append(busy.pop(ref))
        try:
            _, n_ok, n_failed = ray.get(ref)
        except Exception as e:  # retries exhausted: the shard file keeps what was done for the next run
            logger.error("match: shard %s failed for good (%s); its %d pairs are left for the next run",
                         path.name, e, len(pairs))
            if stats is not None:
                stats.num_failed += len(pairs)
            if on_done:
                on_done(len(pairs))
            while submit():
                pass
            continue
        moved = match.merge_shard(writer, path)
        matched += moved
        if stats is not None:
            stats.num_matched += moved
            stats.num_failed += n_failed
        if on_done:
            on_done(len(pairs))
        while submit():
            pass
    for w in workers:
        ray.kill(w)
    if not any(shard_dir.iterdir()):
        shard_dir.rmdir()
    return matched
