"""Matching on a Ray cluster: pairs in shards -> one shard file per shard -> handed to a sink.

- The driver streams the pairs into shards of ``shard_size`` pairs and keeps at most two shards per
  worker in flight (memory does not grow with the number of pairs).
- Each worker is a Ray actor holding one copy of the matcher (sent once, by pickling); it matches a
  shard with the given ``match_fn`` (the match step's ``main``) into its own file
  ``<shard_dir>/shard-<n>.h5`` (journal, crash safety and resume as for any matches file).
- A finished shard goes to ``sink`` (the match step moves its pairs into ``matches.h5``). A worker
  that dies is restarted and its shard retried; shards left by a killed driver are recovered by
  the next run of the match step.
- All workers must see the images and the output at the same paths.
- Every image is encoded alone and shards hold whole batches, so the matches are bit for bit those
  of a single-process run with as many torch threads as a worker has (``threads``).
- Ray starts its workers at nice 15: beside another busy process they get little CPU.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
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

        def __init__(self, matcher: Any, threads: int, match_fn: Callable):
            import torch

            torch.set_num_threads(max(1, threads))
            self.matcher, self.match_fn = matcher, match_fn

        def run(self, shard: str, pairs: list, images: str, kwargs: dict) -> tuple[str, int, int]:
            st = self.match_fn(pairs, Path(images), Path(shard), self.matcher, progress=False, skipped_images={},
                               **kwargs)
            return shard, st.num_matched + st.num_resumed, st.num_failed

    return MatchWorker


def _shards(todo: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    todo = iter(todo)
    while chunk := list(itertools.islice(todo, size)):
        yield chunk


@dataclass
class ClusterStats:
    matched: int = 0  # pairs moved into the sink
    failed: int = 0  # pairs of unreadable images, and of shards that failed for good


def run(todo: Iterator[tuple[str, str]], images: Path, shard_dir: Path, matcher: Any, sink: Callable[[Path], int],
        match_fn: Callable, batch_size: int, shard_size: int, match_kwargs: Optional[dict] = None,
        address: Optional[str] = None, num_workers: Optional[int] = None,
        on_done: Optional[Callable[[int], None]] = None, threads: Optional[int] = None) -> ClusterStats:
    """Match the pairs of ``todo`` on Ray; each finished shard file goes to ``sink`` (which returns
    the number of pairs it took). ``match_fn(pairs, images, shard, matcher, progress=False,
    skipped_images={}, batch_size=..., **match_kwargs)`` matches one shard on a worker."""
    # shards made of whole batches: every pair meets the same batch-mates as in a single-process run
    shard_size = -(-max(shard_size, 1) // batch_size) * batch_size
    ray = _init_ray(address, num_workers)
    n_workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    # torch threads per worker: the single-process run with the same count gives the same matches
    threads = threads or max(1, int(ray.cluster_resources().get("CPU", n_workers)) // n_workers)
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    start = max([int(p.stem.split("-")[-1]) for p in shard_dir.glob("shard-*.h5")] + [-1]) + 1
    matcher_ref = ray.put(matcher)
    Worker = _worker_class(ray)
    workers = [Worker.remote(matcher_ref, threads, match_fn) for _ in range(n_workers)]
    kwargs = {**(match_kwargs or {}), "batch_size": batch_size}
    logger.info("match: Ray with %d workers x %d threads, shards of %d pairs in %s", n_workers, threads,
                shard_size, shard_dir)
    pending: dict = {}  # object ref -> (shard path, its pairs)
    stats = ClusterStats()
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
            stats.failed += len(pairs)
            if on_done:
                on_done(len(pairs))
            while submit():
                pass
            continue
        stats.matched += sink(path)
        stats.failed += n_failed
        if on_done:
            on_done(len(pairs))
        while submit():
            pass
    for w in workers:
        ray.kill(w)
    if not any(shard_dir.iterdir()):
        shard_dir.rmdir()
    return stats
