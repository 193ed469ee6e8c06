"""Step 2: match image pairs into ``matches.h5`` (hloc's dense-matching layout).

Public API
----------
- ``main(pairs: Path | list[tuple[str, str]], images: Path, output: Path, matcher="sift",
         num_samples: int = 10000, balanced: bool = True, seed: int = 0, batch_size: int = 1,
         overwrite: bool = False, device: str = "auto", progress: bool = True) -> MatchStats``
  Refuses (ValueError naming what differs) to resume into a file made with another matcher
  signature unless ``overwrite``.
- ``get_matcher(spec: str | object = "sift", device="auto", **kwargs) -> Matcher``
  ('sift' | 'sift-opencv' | 'roma' | RoMa preset | checkpoint path | object with .match)
- ``matcher_name(matcher) -> str``, ``matcher_kind(matcher) -> 'sparse' | 'dense'``
- ``matcher_signature(matcher, num_samples=10000, balanced=True, seed=0) -> dict`` (what must not
  change within one matches file; JSON-able)
- ``matches_kind(path) -> 'sparse' | 'dense'`` (of a matches.h5; picks the default track cell size)
- ``SiftMatcher(max_features=8000, ratio=0.8, mutual=True, rootsift=True, contrast_threshold=0.02, cache_size=64)``
- ``read_matches(path, name0, name1) -> (kpts0 (M,2), kpts1 (M,2), scores (M,))`` (swaps if stored as (1,0))
- ``list_pairs(path) -> list[tuple[str, str]]``,
  ``consolidate(path, matcher_name="", signature=None, kind="") -> int``

File layout (``matches.h5``)
----------------------------
- file attrs: ``coordinates`` = 'colmap: corner at (0,0), pixel centres at +0.5', ``format``,
  ``matcher`` (its name), ``matcher_signature`` (JSON of :func:`matcher_signature`), ``kind``
  ('sparse' for keypoint matchers such as SIFT, 'dense' otherwise)
- one group per pair, key ``names_to_pair(name0, name1)`` = ``<name0>/<name1>`` (a nested group;
  '/' inside a name replaced by '-'), with datasets ``keypoints0``, ``keypoints1`` ((M, 2) float32,
  pixels of the ORIGINAL images after EXIF rotation, COLMAP convention) and ``scores`` ((M,) float32),
  and attrs ``name0``, ``name1`` (exact names), ``size0``, ``size1`` ((W, H)), ``complete`` (=1,
  written last).

Crash safety: HDF5 has no journal, so a process killed inside an h5 write can leave a file that no
longer opens. Each matched pair is therefore first written as a small ``.npz`` into the journal
folder ``<output>.journal/`` (tmp file + atomic rename), and the journal is merged into the h5 by
copy-on-write (copy, append, flush, close, atomic ``os.replace``). A ``kill -9`` at any instant
leaves ``matches.h5`` as some complete earlier version plus a journal of complete pairs: only the
pair in flight is lost, and the next run (or ``consolidate``) merges the journal. Merges are
throttled (at most ~10 % of the run time goes to copying) and always happen at the end.
"""
from __future__ import annotations

import errno
import hashlib
import inspect
import json
import os
import shutil
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import cv2
import h5py
import numpy as np

from ..io import ImageReadError, as_rgb
from ..weights import weights_fingerprint
from .utils import iter_pairs, logger, names_to_pair, scan_images

COORDINATES = "colmap: corner at (0,0), pixel centres at +0.5"
FORMAT = "roma-sfm matches v1 (hloc dense layout)"

# merge the journal into the h5 at most every this many seconds (tests set 0 to merge every pair)
MERGE_MIN_INTERVAL = 1.0

confs = {
    "sift": {"matcher": "sift", "max_features": 8000, "ratio": 0.8, "mutual": True, "rootsift": True,
             "contrast_threshold": 0.02},
    "sift-opencv": {"matcher": "sift", "max_features": 8000, "ratio": 0.8, "mutual": True, "rootsift": False,
                    "contrast_threshold": 0.04},
    "roma": {"matcher": "roma", "num_samples": 10000, "balanced": True},
}


# ----------------------------------------------------------------------------------------------
# matchers
# ----------------------------------------------------------------------------------------------
@dataclass
class SparseMatches:
    """Match result of a sparse matcher with the same duck interface as a dense RoMa result."""

    kpts_A: np.ndarray  # (M, 2) float32, COLMAP convention
    kpts_B: np.ndarray  # (M, 2) float32
    scores: np.ndarray  # (M,) float32 in [0, 1]
    size_A: tuple[int, int]  # (W, H)
    size_B: tuple[int, int]

    def sample(self, num: int = 10000, balanced: bool = True, seed: int = 0):
        """All matches (the ``num`` best if there are more): (kpts_A, kpts_B, scores)."""
        idx = np.argsort(-self.scores, kind="stable")[:num]
        return self.kpts_A[idx], self.kpts_B[idx], self.scores[idx]

    def lookup(self, kpts_A: np.ndarray):
        raise NotImplementedError("a sparse matcher has no dense warp to re-query")


def _nn2(da: np.ndarray, db: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact L2 nearest neighbours with torch (BLAS + topk: several times faster than cv2.BFMatcher).

    da (n, D), db (m, D) float32 -> distances to the 2 nearest of db (n, 2), index of the nearest
    (n,), and for every db row the index of its nearest da row (m,) (for the mutual check).
    Row chunks bound the distance matrix to chunk x m floats.
    """
    import torch

    A, B = torch.from_numpy(np.ascontiguousarray(da)), torch.from_numpy(np.ascontiguousarray(db))
    nb = (B * B).sum(1)
    dists, nns = [], []
    col_best = torch.full((len(B),), float("inf"))
    col_arg = torch.zeros(len(B), dtype=torch.long)
    with torch.inference_mode():
        for s in range(0, len(A), chunk):
            a = A[s:s + chunk]
            d2 = torch.addmm(nb[None], a, B.T, beta=1.0, alpha=-2.0).add_((a * a).sum(1)[:, None])
            v, i = d2.topk(2, dim=1, largest=False)
            dists.append(v)
            nns.append(i[:, 0])
            cval, carg = d2.min(0)
            better = cval < col_best
            col_best[better], col_arg[better] = cval[better], carg[better] + s
    d = torch.cat(dists).clamp_(min=0).sqrt_()
    return d.numpy(), torch.cat(nns).numpy(), col_arg.numpy()


class SiftMatcher:
    """OpenCV SIFT + nearest neighbour ratio test + mutual check (the classical baseline).

    Defaults follow COLMAP's SIFT rather than OpenCV's: RootSIFT descriptors and a contrast
    threshold of 0.02 (OpenCV 0.04 / 3 layers = COLMAP's peak threshold 0.0067 x 2). On Strecha
    castle-P19 this lifts SfM AUC@3/5/10 from 53.0/63.1/71.2 (OpenCV defaults) to 72.6/83.5/91.8.
    ``get_matcher("sift-opencv")`` gives OpenCV's defaults (plain SIFT, 0.04).

    Features are cached per image path (LRU) so that each image is described once per run.
    """

    kind = "sparse"  # keypoint matches (see ``matcher_kind``): tracks use a finer cell size

    def __init__(self, max_features: int = 8000, ratio: float = 0.8, mutual: bool = True,
                 rootsift: bool = True, contrast_threshold: float = 0.02, cache_size: int = 64):
        self.max_features, self.ratio, self.mutual, self.rootsift = max_features, ratio, mutual, rootsift
        self.cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, tuple[int, int]]] = OrderedDict()
        self.cache_size = cache_size
        self.sift = cv2.SIFT_create(nfeatures=max_features, contrastThreshold=contrast_threshold)

    def __getstate__(self) -> dict:  # picklable (e.g. for Ray workers): cv2 objects are not
        state = {k: v for k, v in self.__dict__.items() if k not in ("sift", "cache")}
        state["contrast_threshold"] = float(self.sift.getContrastThreshold())
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        contrast = state.pop("contrast_threshold")
        self.__dict__.update(state)
        self.cache = OrderedDict()
        self.sift = cv2.SIFT_create(nfeatures=self.max_features, contrastThreshold=contrast)

    @property
    def name(self) -> str:
        return (f"sift(max_features={self.max_features}, ratio={self.ratio}, mutual={self.mutual}, "
                f"rootsift={self.rootsift}, contrast_threshold={self.sift.getContrastThreshold()})")

    @property
    def settings(self) -> dict:
        return {"max_features": self.max_features, "ratio": self.ratio, "mutual": self.mutual,
                "rootsift": self.rootsift, "contrast_threshold": float(self.sift.getContrastThreshold())}

    def extract(self, image) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """image (path or array) -> keypoints (n, 2) float32 COLMAP convention, desc (n, 128), (W, H)."""
        key = str(image) if isinstance(image, (str, os.PathLike)) else None
        if key is not None and key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        rgb = as_rgb(image)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        kps, desc = self.sift.detectAndCompute(gray, None)
        if desc is None:
            desc = np.zeros((0, 128), np.float32)
        if self.rootsift and len(desc):
            desc = np.sqrt(desc / (desc.sum(1, keepdims=True) + 1e-8)).astype(np.float32)
        # OpenCV puts pixel centres at integers; COLMAP at +0.5
        xy = np.array([k.pt for k in kps], np.float32).reshape(-1, 2) + 0.5
        out = (xy, desc.astype(np.float32), (rgb.shape[1], rgb.shape[0]))
        if key is not None:
            self.cache[key] = out
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return out

    def match(self, a, b) -> SparseMatches:
        ka, da, sa = self.extract(a)
        kb, db, sb = self.extract(b)
        empty = SparseMatches(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32),
                              np.zeros((0,), np.float32), sa, sb)
        if len(da) < 2 or len(db) < 2:
            return empty
        d, j, back = _nn2(da, db)
        ratio = d[:, 0] / np.maximum(d[:, 1], 1e-8)
        keep = ratio < self.ratio
        if self.mutual:
            keep &= back[j] == np.arange(len(da))
        i = np.nonzero(keep)[0]
        return SparseMatches(ka[i], kb[j[i]], (1.0 - ratio[i]).astype(np.float32), sa, sb)

    def match_many(self, pairs: Iterable[tuple[Any, Any]], batch_size: int = 1) -> Iterator[SparseMatches]:
        for a, b in pairs:
            yield self.match(a, b)


def get_matcher(spec: Union[str, Path, Any] = "sift", device: str = "auto", **kwargs) -> Any:
    """'sift' -> :class:`SiftMatcher`; 'roma' / a preset name / a checkpoint path -> the RoMa
    matcher of ``roma_sfm.load_matcher`` at the preset's resolutions, second pass included (override
    with ``coarse_res`` / ``upsample_res``; ``upsample_res=None``: one pass); any object with ``.match(a, b)`` is returned as is
    (optional attributes: ``name``; ``kind = "sparse"`` for keypoint matchers; ``coarse_res``,
    ``upsample_res``, ``symmetric``, ``model`` and ``metadata`` as RoMa's, for the signature)."""
    if not isinstance(spec, (str, Path)):
        if not hasattr(spec, "match"):
            raise TypeError(f"matcher {spec!r} has no .match(a, b)")
        return spec
    if str(spec).lower() in ("sift", "sift-opencv"):
        keys = ("max_features", "ratio", "mutual", "rootsift", "contrast_threshold", "cache_size")
        conf = {k: v for k, v in confs[str(spec).lower()].items() if k in keys}
        return SiftMatcher(**{**conf, **{k: v for k, v in kwargs.items() if k in keys}})
    import roma_sfm

    if not hasattr(roma_sfm, "load_matcher"):
        raise RuntimeError("roma_sfm.load_matcher is not available in this version of roma_sfm")
    name = None if str(spec).lower() == "roma" else str(spec)
    keys = ("weights", "coarse_res", "upsample_res", "symmetric")
    # the preset's full inference (its second, finer pass too) unless upsample_res is given (None: one pass)
    kwargs = {"upsample_res": True, **kwargs}
    return roma_sfm.load_matcher(name_or_path=name, device=device, **{k: v for k, v in kwargs.items() if k in keys})


def matcher_name(matcher: Any) -> str:
    """The ``name`` of a matcher object (RoMa: its preset name), else its class name; a string as is."""
    if isinstance(matcher, (str, Path)):
        return str(matcher)
    return str(getattr(matcher, "name", None) or type(matcher).__name__)


def matcher_kind(matcher: Any) -> str:
    """'sparse' for keypoint matchers (``matcher.kind == 'sparse'``, e.g. :class:`SiftMatcher`), else 'dense'."""
    return "sparse" if getattr(matcher, "kind", None) == "sparse" else "dense"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def matcher_signature(matcher: Any, num_samples: int = 10000, balanced: bool = True, seed: int = 0) -> dict:
    """Everything that changes the matches a matcher writes (JSON-able); one matches file holds one.

    SIFT: its settings and ``num_samples`` (it keeps the best ``num_samples``). Dense matchers:
    ``coarse_res``, ``upsample_res``, ``symmetric`` (when the object has them), a fingerprint of
    ``matcher.model``'s weights (two checkpoints of one preset differ; the same weights moved to
    another path do not), or, without a model to fingerprint, the checkpoint ``source`` of
    ``matcher.metadata`` (else a hash of the metadata), and the sampling: ``num_samples``,
    ``balanced``, ``seed``.
    """
    sig: dict[str, Any] = {"matcher": matcher_name(matcher)}
    settings = getattr(matcher, "settings", None)
    if isinstance(settings, dict):
        sig.update({k: _jsonable(v) for k, v in settings.items()})
    for k in ("coarse_res", "upsample_res", "symmetric"):
        if hasattr(matcher, k):
            sig[k] = _jsonable(getattr(matcher, k))
    model = getattr(matcher, "model", None)
    # a Matcher fingerprints its weights before it folds BatchNorm into convolutions
    weights = getattr(matcher, "weights_id", None) or (weights_fingerprint(model) if model is not None else None)
    if weights is not None:
        sig["weights"] = weights
    meta = getattr(matcher, "metadata", None)
    if weights is None and isinstance(meta, dict) and meta:
        sig["checkpoint"] = (str(meta["source"]) if "source" in meta else
                             hashlib.sha1(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16])
    sig["num_samples"] = int(num_samples)
    if matcher_kind(matcher) == "dense":  # SparseMatches.sample ignores both
        sig["balanced"], sig["seed"] = bool(balanced), int(seed)
    return json.loads(json.dumps(sig, sort_keys=True))


def _signature_diff(previous: dict, current: dict) -> list[str]:
    return [f"{k}: {previous.get(k, '(none)')} before, {current.get(k, '(none)')} now"
            for k in sorted(set(previous) | set(current)) if previous.get(k) != current.get(k)]


def _stored_meta(path: Path) -> dict:
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
        jdir = _journal_dir(path)
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
    if not path.exists() and not _journal_dir(path).is_dir():
        raise FileNotFoundError(f"no matches file '{path}'")
    meta = _stored_meta(path)
    if meta.get("kind") in ("sparse", "dense"):
        return meta["kind"]
    return "sparse" if str(meta.get("matcher", "")).lower().startswith("sift") else "dense"


# ----------------------------------------------------------------------------------------------
# h5 io
# ----------------------------------------------------------------------------------------------
def _group_complete(grp: h5py.Group) -> bool:
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
            if isinstance(obj, h5py.Group) and "name0" in obj.attrs and _group_complete(obj):
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
            if key in f and _group_complete(f[key]):
                g = f[key]
                k0, k1, s = g["keypoints0"][()], g["keypoints1"][()], g["scores"][()]
                return (k1, k0, s) if swap else (k0, k1, s)
    raise KeyError(f"pair ({name0}, {name1}) not in {path}")


def _write_group(f: h5py.File, item: dict) -> None:
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


def _journal_dir(path: Path) -> Path:
    return Path(str(path) + ".journal")


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
                      f"the matches so far are safe in {path.name} and {_journal_dir(path).name}/: free some "
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
    jdir = _journal_dir(path)
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
                _write_group(f, item)
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


class _JournalWriter:
    """Writes each pair to the journal at once and merges it into the h5 now and then."""

    def __init__(self, path: Path, matcher_name: str, max_overhead: float = 0.1, min_interval: Optional[float] = None,
                 signature: Optional[dict] = None, kind: str = ""):
        self.path, self.matcher_name, self.signature, self.kind = Path(path), matcher_name, signature, kind
        # each entry carries the file attrs, so that a run killed before its first merge is still checked
        self.meta = json.dumps({"matcher": matcher_name, "kind": kind,
                                "matcher_signature": json.dumps(signature, sort_keys=True) if signature else ""})
        self.jdir = _journal_dir(self.path)
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


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
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
    previous = _stored_meta(output)
    if "matcher_signature" in previous:
        diffs = _signature_diff(previous["matcher_signature"], signature)
    else:  # a file from before signatures: only the name can be checked
        diffs = _signature_diff({"matcher": previous["matcher"]}, {"matcher": name}) if "matcher" in previous else []
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


def _shards_dir(path: Path) -> Path:
    return Path(str(path) + ".shards")


def merge_shard(writer: "_JournalWriter", shard: Path) -> int:
    """Move the complete pairs of a shard file (and its journal, left by a killed worker) into
    ``writer``'s matches file, then delete the shard; returns the number of pairs moved. A shard of
    another matcher configuration is deleted unread."""
    shard = Path(shard)
    meta = _stored_meta(shard)
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
                    if isinstance(g, h5py.Group) and "name0" in g.attrs and _group_complete(g):
                        item = {"name0": str(g.attrs["name0"]), "name1": str(g.attrs["name1"]),
                                "kpts0": g["keypoints0"][()], "kpts1": g["keypoints1"][()], "scores": g["scores"][()],
                                "size0": g.attrs["size0"], "size1": g.attrs["size1"]}
                        item.update({k: str(g.attrs[k]) for k in ("fingerprint0", "fingerprint1") if k in g.attrs})
                        writer.add(item)
                        moved += 1
                f.visititems(visit)
    # the pairs are safe in the journal now (merged into the main file by the writer's schedule)
    shard.unlink(missing_ok=True)
    shutil.rmtree(_journal_dir(shard), ignore_errors=True)
    return max(moved, 0)


def _pair_source(pairs: Union[Path, str, Iterable[tuple[str, str]]]) -> Callable[[], Iterator[tuple[str, str]]]:
    """A re-iterable view of the pairs: a pairs file is re-read lazily (no list of all pairs)."""
    if isinstance(pairs, (str, Path)):
        return lambda: iter_pairs(Path(pairs))
    seq = pairs if isinstance(pairs, Sequence) else list(pairs)
    return lambda: ((str(a), str(b)) for a, b in seq)


def main(pairs: Union[Path, Iterable[tuple[str, str]]], images: Path, output: Path, matcher: Any = "sift",
         num_samples: int = 10000, balanced: bool = True, seed: int = 0, batch_size: int = 1,
         overwrite: bool = False, device: str = "auto", progress: bool = True,
         skipped_images: Optional[dict[str, str]] = None, num_workers: int = 2, cache_mb: float = 512,
         ray: Optional[str] = None, ray_workers: Optional[int] = None, shard_size: int = 64,
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
        shutil.rmtree(_journal_dir(output), ignore_errors=True)
        shutil.rmtree(_shards_dir(output), ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    matcher = get_matcher(matcher, device=device)
    name, kind = matcher_name(matcher), matcher_kind(matcher)
    signature = matcher_signature(matcher, num_samples=num_samples, balanced=balanced, seed=seed)
    _check_resumable(output, name, signature)
    writer = _JournalWriter(output, name, signature=signature, kind=kind)
    consolidate(output, name, signature, kind)  # merge what a killed run left in the journal
    shards = sorted(_shards_dir(output).glob("*.h5"))  # ... and in the shards of a killed Ray run
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

            cluster.run(todo(), images, output, matcher, writer, num_samples=num_samples, balanced=balanced,
                        seed=seed, batch_size=batch_size, address=ray, num_workers=ray_workers,
                        shard_size=shard_size, on_done=lambda n: prog.advance(task, n), stats=stats,
                        threads=threads)
        else:
            from ..matcher import torch_threads

            with torch_threads(threads):
                for pair, res in _match_stream(matcher, todo(), images, batch_size, num_workers, cache_mb):
                    prog.advance(task)
                    record(pair, res)
    writer.merge()
    stats.skipped_images = bad
    stats.seconds = time.perf_counter() - t0
    logger.info("match: %d new, %d resumed, %d failed pairs in %.1f s -> %s", stats.num_matched,
                stats.num_resumed, stats.num_failed, stats.seconds, output)
    return stats


def _match_stream(matcher: Any, todo: Iterator[tuple[str, str]], images: Path, batch_size: int, num_workers: int,
                  cache_mb: float) -> Iterator[tuple[tuple[str, str], Any]]:
    """(pair, MatchResult or the exception that stopped it) for every pair of ``todo``, in order.

    Uses the matcher's ``match_many`` (prefetching, batching, feature cache) when it has one. Should
    it fail on an image (deleted or changed since the scan), the pairs of that batch are retried one
    by one, so that only the pairs of the bad image are lost, and streaming goes on after them.
    """
    if not hasattr(matcher, "match_many"):
        for a, b in todo:
            try:
                yield (a, b), matcher.match(str(images / a), str(images / b))
            except ImageReadError as e:
                yield (a, b), e
        return
    accepted = inspect.signature(matcher.match_many).parameters
    kw = {k: v for k, v in {"batch_size": batch_size, "num_workers": num_workers, "cache_mb": cache_mb}.items()
          if k in accepted}
    todo = iter(todo)
    while True:
        fifo: deque = deque()

        def paths():
            for a, b in todo:
                fifo.append((a, b))
                yield str(images / a), str(images / b)

        try:
            for res in matcher.match_many(paths(), **kw):
                yield fifo.popleft(), res
            return
        except ImageReadError:
            for a, b in list(fifo):  # the batch in flight, one pair at a time
                try:
                    yield (a, b), matcher.match(str(images / a), str(images / b))
                except ImageReadError as e:
                    yield (a, b), e

