"""The HDF5 files of the pipeline, their readers and writers (hloc's ``utils/io.py``).

``matches.h5`` (written by the match step, read by tracks, evaluate and figures):

- file attrs ``coordinates`` (:data:`COORDINATES`), ``format``, ``matcher`` (its name),
  ``matcher_signature`` (JSON, see ``matchers.matcher_signature``) and ``kind`` ('sparse' for
  keypoint matchers such as SIFT, 'dense' otherwise);
- one group per pair, key ``names_to_pair(name0, name1)`` = ``<name0>/<name1>`` ('/' inside a name
  becomes '-'), with ``keypoints0``, ``keypoints1`` ((M, 2) float32, pixels of the original images
  after EXIF rotation, COLMAP convention), ``scores`` ((M,) float32), and attrs ``name0``, ``name1``,
  ``size0``, ``size1`` ((W, H)), ``fingerprint0``, ``fingerprint1`` and ``complete`` (written last).

Crash safety: each pair is first written as a small ``.npz`` into the journal folder
:func:`journal_dir` (tmp file + atomic rename); :func:`consolidate` merges the journal into the h5 by
copy-on-write (copy, append, flush, atomic ``os.replace``). A kill at any instant loses at most the
pair in flight. A Ray run writes one shard file per shard into :func:`shards_dir`; :func:`merge_shard`
moves a finished shard into the main file through the journal.

``features.h5``: a group per image with ``keypoints`` ((K, 2) float32, COLMAP convention) and
``scores`` ((K,)); attrs ``image_size`` (W, H) and ``name``. ``matches_idx.h5``: a group per pair
with ``matches0``/``matching_scores0`` (hloc's layout) and ``matches`` ((M, 2) int32) / ``scores``.
Both carry the same ``tracks_id``: :func:`check_same_run` refuses a mix of two runs.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import h5py
import numpy as np

from .utils import logger, names_to_pair

COORDINATES = "colmap: corner at (0,0), pixel centres at +0.5"
FORMAT = "roma-sfm matches v1 (hloc dense layout)"

# merge the journal into the h5 at most every this many seconds (tests set 0 to merge every pair)
MERGE_MIN_INTERVAL = 1.0

Pair = tuple[str, str]


# ----------------------------------------------------------------------------------------------
# matches.h5: attrs
# ----------------------------------------------------------------------------------------------
def stored_meta(path: Path) -> dict:
    """{'matcher', 'matcher_signature' (dict), 'kind'} as far as known from the file's attrs, else
    from its journal (a run killed before its first merge); {} when there is neither."""
    path = Path(path)
    meta: dict[str, Any] = {}
    if path.exists():
        with h5py.File(path, "r") as f:
            for k in ("matcher", "matcher_signature", "kind"):
                if k in f.attrs and str(f.attrs[k]):
                    meta[k] = str(f.attrs[k])
    if "matcher_signature" not in meta:
        jdir = journal_dir(path)
        for e in sorted(jdir.glob("*.npz")) if jdir.is_dir() else []:
            try:
                with np.load(e, allow_pickle=False) as z:
                    if "_meta" in z.files:
                        meta = {**{k: v for k, v in json.loads(str(z["_meta"])).items() if v}, **meta}
                        break
            except Exception:
                continue
    if isinstance(meta.get("matcher_signature"), str):
        try:
            meta["matcher_signature"] = json.loads(meta["matcher_signature"])
        except ValueError:
            del meta["matcher_signature"]
    return meta


def matches_kind(path: Path) -> str:
    """'sparse' (keypoint matcher, e.g. SIFT) or 'dense' (e.g. RoMa) for a matches.h5.

    Read from the file attribute ``kind`` written by :func:`main`; files from before that attribute
    are told by their ``matcher`` name ('sift...' is sparse). Raises FileNotFoundError if neither
    the file nor its journal exists.
    """
    path = Path(path)
    if not path.exists() and not journal_dir(path).is_dir():
        raise FileNotFoundError(f"no matches file '{path}'")
    meta = stored_meta(path)
    if meta.get("kind") in ("sparse", "dense"):
        return meta["kind"]
    return "sparse" if str(meta.get("matcher", "")).lower().startswith("sift") else "dense"


# ----------------------------------------------------------------------------------------------
# matches.h5: pairs
# ----------------------------------------------------------------------------------------------
def group_complete(grp: h5py.Group) -> bool:
    return (isinstance(grp, h5py.Group) and int(grp.attrs.get("complete", 0)) == 1
            and all(k in grp for k in ("keypoints0", "keypoints1", "scores")))


def stored_pairs(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Every complete pair group of a matches file: (name0, name1) -> {name: content fingerprint}
    (empty for files written before fingerprints)."""
    path = Path(path)
    out: dict[tuple[str, str], dict[str, str]] = {}
    if not path.exists():
        return out
    with h5py.File(path, "r") as f:
        def visit(_, obj):
            if isinstance(obj, h5py.Group) and "name0" in obj.attrs and group_complete(obj):
                a, b = str(obj.attrs["name0"]), str(obj.attrs["name1"])
                out[(a, b)] = {n: str(obj.attrs[k]) for n, k in ((a, "fingerprint0"), (b, "fingerprint1"))
                               if k in obj.attrs}
        f.visititems(visit)
    return out


def list_pairs(path: Path) -> list[tuple[str, str]]:
    """(name0, name1) of every complete pair group in a matches file (exact names from attrs)."""
    return list(stored_pairs(path))


def fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file (blake2b, 16 hex): tells a replaced image from the one matched before,
    whatever its time stamps (copies and backups change those)."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_matches(path: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matches of (name0, name1): kpts0 (M,2), kpts1 (M,2), scores (M,); swapped if stored reversed."""
    with h5py.File(path, "r") as f:
        for a, b, swap in ((name0, name1, False), (name1, name0, True)):
            key = names_to_pair(a, b)
            if key in f and group_complete(f[key]):
                g = f[key]
                k0, k1, s = g["keypoints0"][()], g["keypoints1"][()], g["scores"][()]
                return (k1, k0, s) if swap else (k0, k1, s)
    raise KeyError(f"pair ({name0}, {name1}) not in {path}")


def iter_pair_matches(path: Path) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, np.ndarray,
                                                    tuple[int, int], tuple[int, int]]]:
    """(name0, name1, kpts0 (M,2), kpts1 (M,2), scores (M,), size0, size1) of every complete pair, one at a time."""
    with h5py.File(path, "r") as f:
        for a, b in list_pairs(path):
            g = f[names_to_pair(a, b)]
            s0, s1 = (tuple(int(v) for v in g.attrs[k]) for k in ("size0", "size1"))
            yield a, b, g["keypoints0"][()], g["keypoints1"][()], g["scores"][()], s0, s1


def write_pair_group(f: h5py.File, item: dict) -> None:
    key = names_to_pair(item["name0"], item["name1"])
    if key in f:
        del f[key]
    g = f.create_group(key)
    g.create_dataset("keypoints0", data=np.asarray(item["kpts0"], np.float32).reshape(-1, 2))
    g.create_dataset("keypoints1", data=np.asarray(item["kpts1"], np.float32).reshape(-1, 2))
    g.create_dataset("scores", data=np.asarray(item["scores"], np.float32).reshape(-1))
    g.attrs["name0"], g.attrs["name1"] = item["name0"], item["name1"]
    g.attrs["size0"] = np.asarray(item["size0"], np.int64)
    g.attrs["size1"] = np.asarray(item["size1"], np.int64)
    for k in ("fingerprint0", "fingerprint1"):  # content hashes: a replaced image is re-matched
        if k in item:
            g.attrs[k] = str(item[k])
    g.attrs["complete"] = 1  # last: a group without it is ignored by readers


def journal_dir(path: Path) -> Path:
    """The journal folder of a matches file: ``<path>.journal``."""
    return Path(str(path) + ".journal")


def shards_dir(path: Path) -> Path:
    """The shard folder of a matches file matched on Ray: ``<path>.shards``."""
    return Path(str(path) + ".shards")


def _read_entry(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: (str(z[k]) if z[k].dtype.kind == "U" else z[k]) for k in z.files}


def _ensure_room(path: Path, size: int) -> None:
    """Refuse (OSError naming the cause) to write a file of about ``size`` bytes next to ``path``
    when the disk or the process's file-size limit cannot take it: HDF5 copes badly with a write
    that fails half way (h5py may even crash at exit), so the merge must not start."""
    need = int(size * 1.1) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    limit = _file_size_limit()
    if need > free or need > limit:
        cause = (f"{free / 2**20:.0f} MB free on the disk" if need > free
                 else f"files are limited to {limit / 2**20:.1f} MB for this process (ulimit -f)")
        raise OSError(errno.ENOSPC, f"could not write {path}: it needs about {need / 2**20:.1f} MB and {cause}; "
                      f"the matches so far are safe in {path.name} and {journal_dir(path).name}/: free some "
                      f"space and run the same command again")


def _file_size_limit() -> float:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return float("inf") if soft == resource.RLIM_INFINITY else float(soft)
    except (ImportError, ValueError, OSError):  # not on POSIX
        return float("inf")


def consolidate(path: Path, matcher_name: str = "", signature: Optional[dict] = None, kind: str = "") -> int:
    """Merge the journal of ``path`` into it by copy-on-write; returns the number of pairs merged.

    ``matcher_name``, ``signature`` and ``kind`` are written as file attrs when given; otherwise the
    journal entries' own (a run killed before its first merge) are used for a file that has none.
    Entries are read one at a time: memory does not grow with the size of the journal.
    """
    path = Path(path)
    jdir = journal_dir(path)
    entries = sorted(jdir.glob("*.npz")) if jdir.is_dir() else []
    if not entries and path.exists():
        return 0
    journal_meta: dict = {}
    for e in entries[:1]:
        try:
            journal_meta = json.loads(_read_entry(e).get("_meta", "{}"))
        except Exception:
            pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _ensure_room(path, (path.stat().st_size if path.exists() else 0) + sum(e.stat().st_size for e in entries))
    if path.exists():
        shutil.copyfile(path, tmp)
    merged = 0
    try:
        with h5py.File(tmp, "a", libver="latest") as f:
            f.attrs["coordinates"] = COORDINATES
            f.attrs["format"] = FORMAT
            given = {"matcher": matcher_name, "kind": kind,
                     "matcher_signature": json.dumps(signature, sort_keys=True) if signature else ""}
            for k, v in given.items():
                v = v or (str(journal_meta.get(k, "")) if k not in f.attrs else "")
                if v:
                    f.attrs[k] = v
            for e in entries:
                try:
                    item = _read_entry(e)
                except Exception as ex:  # a torn entry can only come from a crash outside our atomic rename
                    logger.warning("dropping unreadable journal entry %s (%s)", e.name, ex)
                    continue
                write_pair_group(f, item)
                merged += 1
            f.flush()
    except OSError as e:  # e.g. disk full: the old file and the journal are untouched
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write {path} ({e}); the matches so far are safe in {path.name} and "
                      f"{jdir.name}/: free some space and run the same command again") from e
    os.replace(tmp, path)  # atomic: readers see the old or the new complete file
    for e in entries:
        e.unlink(missing_ok=True)
    if jdir.is_dir() and not any(jdir.iterdir()):
        jdir.rmdir()
    return merged


class JournalWriter:
    """Writes each pair to the journal at once and merges it into the h5 now and then."""

    def __init__(self, path: Path, matcher_name: str, max_overhead: float = 0.1, min_interval: Optional[float] = None,
                 signature: Optional[dict] = None, kind: str = ""):
        self.path, self.matcher_name, self.signature, self.kind = Path(path), matcher_name, signature, kind
        # each entry carries the file attrs, so that a run killed before its first merge is still checked
        self.meta = json.dumps({"matcher": matcher_name, "kind": kind,
                                "matcher_signature": json.dumps(signature, sort_keys=True) if signature else ""})
        self.jdir = journal_dir(self.path)
        self.jdir.mkdir(parents=True, exist_ok=True)
        self.seq = max([int(p.stem) for p in self.jdir.glob("*.npz") if p.stem.isdigit()] + [0]) + 1
        self.max_overhead = max_overhead
        self.min_interval = MERGE_MIN_INTERVAL if min_interval is None else min_interval
        self.last, self.cost = time.perf_counter(), 0.0

    def add(self, item: dict) -> None:
        self.jdir.mkdir(parents=True, exist_ok=True)  # a merge removes it when empty
        tmp = self.jdir / f"{self.seq:08d}.tmp"
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, _meta=np.asarray(self.meta), **item)
                fh.flush()
        except OSError as e:  # e.g. disk full: what is already in the journal and the h5 stays
            tmp.unlink(missing_ok=True)
            raise OSError(f"could not write the journal of {self.path} ({e}); the pairs matched so far are "
                          f"safe: free some space and run the same command again") from e
        os.replace(tmp, self.jdir / f"{self.seq:08d}.npz")
        self.seq += 1
        now = time.perf_counter()
        if now - self.last >= max(self.min_interval, self.cost / self.max_overhead):
            self.merge()

    def merge(self) -> None:
        t0 = time.perf_counter()
        consolidate(self.path, self.matcher_name, self.signature, self.kind)
        self.last = time.perf_counter()
        self.cost = self.last - t0


def merge_shard(writer: "JournalWriter", shard: Path) -> int:
    """Move the complete pairs of a shard file (and its journal, left by a killed worker) into
    ``writer``'s matches file, then delete the shard; returns the number of pairs moved. A shard of
    another matcher configuration is deleted unread."""
    shard = Path(shard)
    meta = stored_meta(shard)
    if meta and writer.signature and meta.get("matcher_signature") != writer.signature:
        logger.warning("match: dropping shard %s of another matcher configuration", shard.name)
        moved = -1
    else:
        consolidate(shard)
        moved = 0
        if shard.exists():
            with h5py.File(shard, "r") as f:
                def visit(_, g):
                    nonlocal moved
                    if isinstance(g, h5py.Group) and "name0" in g.attrs and group_complete(g):
                        item = {"name0": str(g.attrs["name0"]), "name1": str(g.attrs["name1"]),
                                "kpts0": g["keypoints0"][()], "kpts1": g["keypoints1"][()], "scores": g["scores"][()],
                                "size0": g.attrs["size0"], "size1": g.attrs["size1"]}
                        item.update({k: str(g.attrs[k]) for k in ("fingerprint0", "fingerprint1") if k in g.attrs})
                        writer.add(item)
                        moved += 1
                f.visititems(visit)
    # the pairs are safe in the journal now (merged into the main file by the writer's schedule)
    shard.unlink(missing_ok=True)
    shutil.rmtree(journal_dir(shard), ignore_errors=True)
    return max(moved, 0)


# ----------------------------------------------------------------------------------------------
# features.h5 and matches_idx.h5
# ----------------------------------------------------------------------------------------------
def read_features(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "keypoints" in obj:
                out[str(obj.attrs.get("name", name))] = obj["keypoints"][()]
        f.visititems(visit)
    return out


def read_image_sizes(path: Path) -> dict[str, tuple[int, int]]:
    """{image name: (W, H)} of every image in features.h5."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "keypoints" in obj:
                out[str(obj.attrs.get("name", name))] = tuple(int(v) for v in obj.attrs["image_size"])
        f.visititems(visit)
    return out


def read_index_matches(path: Path) -> dict[Pair, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(_, obj):
            if isinstance(obj, h5py.Group) and "matches" in obj and "name0" in obj.attrs:
                out[(str(obj.attrs["name0"]), str(obj.attrs["name1"]))] = obj["matches"][()]
        f.visititems(visit)
    return out


def check_same_run(features: Path, matches_idx: Path) -> None:
    """Raise ValueError when features.h5 and matches_idx.h5 were written by different runs of this
    step (the index matches would point at another run's keypoints). Files without ``tracks_id``
    (written before it existed) are not checked."""
    ids = []
    for path in (features, matches_idx):
        with h5py.File(path, "r") as f:
            ids.append(str(f.attrs.get("tracks_id", "")))
    if all(ids) and ids[0] != ids[1]:
        raise ValueError(f"'{features}' and '{matches_idx}' come from different runs of the tracks step (one "
                         f"was interrupted between writing the two): run the tracks step again")


def write_features(f: h5py.File, kps: dict[str, np.ndarray], kp_scores: dict[str, np.ndarray],
                    sizes: dict[str, tuple[int, int]], cell_size: float, refine: str, run_id: str) -> None:
    f.attrs["coordinates"] = COORDINATES
    f.attrs["cell_size"], f.attrs["refine"] = cell_size, refine
    f.attrs["tracks_id"] = run_id
    for name, k in kps.items():
        g = f.require_group(name)
        g.create_dataset("keypoints", data=k)
        g.create_dataset("scores", data=kp_scores[name])
        g.attrs["image_size"] = np.asarray(sizes[name], np.int64)
        g.attrs["name"] = name


def write_index_matches(f: h5py.File, kps: dict[str, np.ndarray], idx_matches: dict, run_id: str) -> None:
    f.attrs["tracks_id"] = run_id
    for (a, b), (idx, sc) in idx_matches.items():
        g = f.require_group(names_to_pair(a, b))
        m0 = np.full(len(kps[a]), -1, np.int32)
        s0 = np.zeros(len(kps[a]), np.float32)
        m0[idx[:, 0]], s0[idx[:, 0]] = idx[:, 1], sc
        g.create_dataset("matches0", data=m0)
        g.create_dataset("matching_scores0", data=s0)
        g.create_dataset("matches", data=idx)
        g.create_dataset("scores", data=sc)
        g.attrs["name0"], g.attrs["name1"] = a, b
