"""The one interface every matcher of the match step has, and what the step reads off it.

A matcher is any object with ``match(a, b)`` (image paths or arrays) returning a result with
``sample(num, balanced, seed) -> (kpts_A (N, 2), kpts_B (N, 2), scores (N,))`` in the COLMAP pixel
convention and ``size_A``, ``size_B`` ((W, H)). Optional, read here and nowhere else: ``name``,
``kind`` ('sparse' for keypoint matchers), ``settings`` (dict), ``coarse_res`` / ``upsample_res`` /
``symmetric``, ``model`` or ``weights_id`` (a weights fingerprint), ``metadata``, and
``match_many(pairs, batch_size, [num_workers], [cache_mb])`` for batched, prefetching matchers.
:class:`Matcher` spells that out for type checkers; nothing needs to inherit from it.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Protocol, runtime_checkable

from ...io import ImageReadError
from ...presets import BALANCED, NUM_SAMPLES
from ...weights import weights_fingerprint
from ..utils import jsonable

# matcher attributes that change its matches and go into the report's config and the signature
RESOLUTION_KEYS = ("coarse_res", "upsample_res", "symmetric", "fit", "zoom", "support_factors", "precision",
                   "photometric")


@runtime_checkable
class Matcher(Protocol):
    """What the match step calls: ``match`` (required), ``match_many`` (when batching helps)."""

    def match(self, a: Any, b: Any) -> Any:
        """One pair -> a result with ``sample``, ``size_A``, ``size_B``."""

    def match_many(self, pairs: Iterable[tuple[Any, Any]], batch_size: int = 1) -> Iterator[Any]:
        """Results of ``pairs`` in order."""


def matcher_name(matcher: Any) -> str:
    """The ``name`` of a matcher object (RoMa: its preset name), else its class name; a string as is."""
    if isinstance(matcher, (str, Path)):
        return str(matcher)
    return str(getattr(matcher, "name", None) or type(matcher).__name__)


def matcher_kind(matcher: Any) -> str:
    """'sparse' for keypoint matchers (``matcher.kind == 'sparse'``, e.g. SIFT), else 'dense'; for a
    spec string without loading it: 'sparse' for a SIFT name."""
    if isinstance(matcher, (str, Path)):
        from .sift import confs

        return "sparse" if str(matcher).lower() in confs else "dense"
    return "sparse" if getattr(matcher, "kind", None) == "sparse" else "dense"


def matcher_config(matcher: Any) -> dict:
    """For a report: ``matcher`` (the string given, or the object's name) and its resolution keys."""
    cfg: dict = {"matcher": str(matcher) if isinstance(matcher, (str, Path)) else matcher_name(matcher)}
    if not isinstance(matcher, (str, Path)):
        cfg.update({k: jsonable(getattr(matcher, k)) for k in RESOLUTION_KEYS if hasattr(matcher, k)})
    return cfg


def matcher_signature(matcher: Any, num_samples: int = NUM_SAMPLES, balanced: bool = BALANCED, seed: int = 0) -> dict:
    """Everything that changes the matches a matcher writes (JSON-able); one matches file holds one.

    The name, ``settings``, the resolution keys, a fingerprint of the weights (two checkpoints of
    one preset differ; the same weights at another path do not), or without a model the checkpoint
    ``source`` of ``metadata`` (else a hash of it), and the sampling (``balanced`` and ``seed`` only
    for dense matchers: a sparse result keeps its best matches).
    """
    sig: dict[str, Any] = {"matcher": matcher_name(matcher)}
    settings = getattr(matcher, "settings", None)
    if isinstance(settings, dict):
        sig.update({k: jsonable(v) for k, v in settings.items()})
    for k in RESOLUTION_KEYS:
        if hasattr(matcher, k):
            sig[k] = jsonable(getattr(matcher, k))
    model = getattr(matcher, "model", None)
    # a RoMa matcher fingerprints its weights before it folds BatchNorm into convolutions
    weights = getattr(matcher, "weights_id", None) or (weights_fingerprint(model) if model is not None else None)
    if weights is not None:
        sig["weights"] = weights
    meta = getattr(matcher, "metadata", None)
    if weights is None and isinstance(meta, dict) and meta:
        sig["checkpoint"] = (str(meta["source"]) if "source" in meta else
                             hashlib.sha1(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16])
    sig["num_samples"] = int(num_samples)
    if matcher_kind(matcher) == "dense":  # a sparse result's sample() ignores both
        sig["balanced"], sig["seed"] = bool(balanced), int(seed)
    return json.loads(json.dumps(sig, sort_keys=True))


def signature_diff(previous: dict, current: dict) -> list[str]:
    """One 'key: old before, new now' line per setting that differs between two signatures."""
    return [f"{k}: {previous.get(k, '(none)')} before, {current.get(k, '(none)')} now"
            for k in sorted(set(previous) | set(current)) if previous.get(k) != current.get(k)]


def match_stream(matcher: Any, todo: Iterator[tuple[str, str]], images: Path, batch_size: int, num_workers: int,
                 cache_mb: float) -> Iterator[tuple[tuple[str, str], Any]]:
    """(pair, result or the ImageReadError that stopped it) for every pair of ``todo``, in order.

    Uses the matcher's ``match_many`` (prefetching, batching, feature cache) when it has one, with
    the keyword arguments it accepts. Should it fail on an image (deleted or changed since the
    scan), the pairs of that batch are retried one by one, so that only the pairs of the bad image
    are lost, and streaming goes on after them.
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

