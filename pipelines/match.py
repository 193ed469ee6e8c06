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

import hashlib
import json
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import cv2
import h5py
import numpy as np

from ..io import ImageReadError, as_rgb
from .utils import logger, names_to_pair, read_pairs, scan_images

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
    matcher of ``roma_sfm.load_matcher``; any object with ``.match(a, b)`` is returned as is
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


def _weights_fingerprint(model: Any) -> Optional[str]:
    """Short hash of a torch module's weights (names, shapes and <= 256 strided values per tensor):
    tells two checkpoints of one preset apart without hashing every byte."""
    try:
        state = model.state_dict()
    except Exception:
        return None
    h = hashlib.sha1()
    for k in sorted(state):
        v = state[k]
        h.update(f"{k}{tuple(v.shape)}".encode())
        if v.numel():
            flat = v.detach().reshape(-1)
            h.update(flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


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
    weights = _weights_fingerprint(model) if model is not None else None
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


def list_pairs(path: Path) -> list[tuple[str, str]]:
    """(name0, name1) of every complete pair group in a matches file (exact names from attrs)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with h5py.File(path, "r") as f:
        def visit(_, obj):
            if isinstance(obj, h5py.Group) and "name0" in obj.attrs and _group_complete(obj):
                out.append((str(obj.attrs["name0"]), str(obj.attrs["name1"])))
        f.visititems(visit)
    return out


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
    g.attrs["complete"] = 1  # last: a group without it is ignored by readers


def _journal_dir(path: Path) -> Path:
    return Path(str(path) + ".journal")


def consolidate(path: Path, matcher_name: str = "", signature: Optional[dict] = None, kind: str = "") -> int:
    """Merge the journal of ``path`` into it by copy-on-write; returns the number of pairs merged.

    ``matcher_name``, ``signature`` and ``kind`` are written as file attrs when given; otherwise the
    journal entries' own (a run killed before its first merge) are used for a file that has none.
    """
    path = Path(path)
    jdir = _journal_dir(path)
    entries = sorted(jdir.glob("*.npz")) if jdir.is_dir() else []
    if not entries and path.exists():
        return 0
    items = []
    journal_meta: dict = {}
    for e in entries:
        try:
            with np.load(e, allow_pickle=False) as z:
                items.append({k: (str(z[k]) if k in ("name0", "name1", "_meta") else z[k]) for k in z.files})
            if "_meta" in items[-1] and not journal_meta:
                journal_meta = json.loads(items[-1]["_meta"])
        except Exception as ex:  # a torn entry can only come from a crash outside our atomic rename
            logger.warning("dropping unreadable journal entry %s (%s)", e.name, ex)
    tmp = path.with_name(path.name + ".tmp")
    if path.exists():
        shutil.copyfile(path, tmp)
    elif tmp.exists():
        tmp.unlink()
    with h5py.File(tmp, "a", libver="latest") as f:
        f.attrs["coordinates"] = COORDINATES
        f.attrs["format"] = FORMAT
        given = {"matcher": matcher_name, "kind": kind,
                 "matcher_signature": json.dumps(signature, sort_keys=True) if signature else ""}
        for k, v in given.items():
            v = v or (str(journal_meta.get(k, "")) if k not in f.attrs else "")
            if v:
                f.attrs[k] = v
        for item in items:
            _write_group(f, item)
        f.flush()
    os.replace(tmp, path)  # atomic: readers see the old or the new complete file
    for e in entries:
        e.unlink(missing_ok=True)
    if jdir.is_dir() and not any(jdir.iterdir()):
        jdir.rmdir()
    return len(items)


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
        with open(tmp, "wb") as fh:
            np.savez(fh, _meta=np.asarray(self.meta), **item)
            fh.flush()
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


def main(pairs: Union[Path, Sequence[tuple[str, str]]], images: Path, output: Path, matcher: Any = "sift",
         num_samples: int = 10000, balanced: bool = True, seed: int = 0, batch_size: int = 1,
         overwrite: bool = False, device: str = "auto", progress: bool = True,
         skipped_images: Optional[dict[str, str]] = None) -> MatchStats:
    """Match every pair (names relative to ``images``) and write ``output`` (matches.h5).

    Resumable: pairs already in ``output`` (or its journal) are skipped unless ``overwrite``; the
    file records :func:`matcher_signature` (matcher, resolution, weights, sampling), and resuming
    with a different one raises ValueError naming what differs (``overwrite=True`` starts afresh).
    Pairs naming an unreadable image are skipped with a warning and listed in the stats.
    """
    t0 = time.perf_counter()
    images, output = Path(images), Path(output)
    pair_list = read_pairs(pairs) if isinstance(pairs, (str, Path)) else [tuple(p) for p in pairs]
    stats = MatchStats(num_pairs=len(pair_list))
    if overwrite:
        output.unlink(missing_ok=True)
        shutil.rmtree(_journal_dir(output), ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    matcher = get_matcher(matcher, device=device)
    name, kind = matcher_name(matcher), matcher_kind(matcher)
    signature = matcher_signature(matcher, num_samples=num_samples, balanced=balanced, seed=seed)
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
    consolidate(output, name, signature, kind)  # merge what a killed run left in the journal
    done = {tuple(sorted(p)) for p in list_pairs(output)}
    # unreadable images: known from the caller's scan, else found now (decoding each image once)
    bad = dict(skipped_images or {})
    names = sorted({n for p in pair_list for n in p})
    if skipped_images is None:
        bad.update(scan_images(images, image_list=names).skipped)
    todo = []
    for a, b in pair_list:
        if tuple(sorted((a, b))) in done:
            stats.num_resumed += 1
        elif a in bad or b in bad:
            stats.num_failed += 1
        else:
            todo.append((a, b))
    if stats.num_resumed:
        logger.info("match: %d of %d pairs already in %s, resuming", stats.num_resumed, len(pair_list), output)
    writer = _JournalWriter(output, name, signature=signature, kind=kind)

    def results() -> Iterator[tuple[tuple[str, str], Any]]:
        if hasattr(matcher, "match_many") and batch_size > 1:
            # images were checked by scan_images above, so a read error here is not expected
            gen = matcher.match_many([(str(images / a), str(images / b)) for a, b in todo], batch_size=batch_size)
            yield from zip(todo, gen)
            return
        for a, b in todo:
            try:
                yield (a, b), matcher.match(str(images / a), str(images / b))
            except ImageReadError as e:
                yield (a, b), e

    with _progress(len(todo), progress) as prog:
        task = prog.add_task("match", total=len(todo))
        for (a, b), res in results():
            prog.advance(task)
            if isinstance(res, Exception):
                p = Path(getattr(res, "path", images / a))
                name = p.relative_to(images).as_posix() if p.is_relative_to(images) else a
                logger.warning("match: skipping pair (%s, %s): %s", a, b, res)
                bad[name] = getattr(res, "reason", str(res))
                stats.num_failed += 1
                continue
            k0, k1, s = res.sample(num=num_samples, balanced=balanced, seed=seed)
            writer.add({"name0": a, "name1": b, "kpts0": np.asarray(k0, np.float32),
                        "kpts1": np.asarray(k1, np.float32), "scores": np.asarray(s, np.float32),
                        "size0": np.asarray(res.size_A), "size1": np.asarray(res.size_B)})
            stats.num_matched += 1
    writer.merge()
    stats.skipped_images = bad
    stats.seconds = time.perf_counter() - t0
    logger.info("match: %d new, %d resumed, %d failed pairs in %.1f s -> %s", stats.num_matched,
                stats.num_resumed, stats.num_failed, stats.seconds, output)
    return stats
