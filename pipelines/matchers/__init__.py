"""Matchers of the match step behind one interface (:mod:`.base`): SIFT (:mod:`.sift`) and RoMa (:mod:`.roma`).

:func:`get_matcher` turns a spec into a matcher; :func:`resolve` holds the rules for the
``--matcher`` / ``--resolution`` options (which default, which names exist).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from . import roma, sift
from .base import (Matcher, match_stream, matcher_config, matcher_kind, matcher_name, matcher_signature,
                   signature_diff)
from .sift import SiftMatcher, SparseMatches
from ...presets import DEVICE

__all__ = ["Matcher", "MatcherSpecError", "Resolved", "SiftMatcher", "SparseMatches", "get_matcher",
           "match_stream", "matcher_config", "matcher_kind", "matcher_name", "matcher_signature", "resolve",
           "signature_diff"]

SIFT_KEYS = ("max_features", "ratio", "mutual", "rootsift", "contrast_threshold", "extractor", "cache_size")


def get_matcher(spec: Union[str, Path, Any] = "sift", device: str = DEVICE, **kwargs) -> Any:
    """'sift' / 'sift-opencv' / 'sift-colmap' -> :class:`SiftMatcher` of ``sift.confs``; 'roma', a preset name or a
    checkpoint path -> :func:`roma.load`; an object with ``.match(a, b)`` is returned as is."""
    if not isinstance(spec, (str, Path)):
        if not hasattr(spec, "match"):
            raise TypeError(f"matcher {spec!r} has no .match(a, b)")
        return spec
    if str(spec).lower() in sift.confs:
        conf = sift.confs[str(spec).lower()]
        return SiftMatcher(**{**conf, **{k: v for k, v in kwargs.items() if k in SIFT_KEYS}})
    return roma.load(spec, device=device, **kwargs)


class MatcherSpecError(ValueError):
    """A ``--matcher`` or ``--resolution`` value that cannot be used; ``option`` names which."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


@dataclass
class Resolved:
    """What :func:`resolve` made of the options: a spec string, or a loaded matcher (with
    ``--resolution``), and notes for the user."""

    matcher: Any
    notes: list[str] = field(default_factory=list)


def resolve(spec: Optional[str], resolution: Optional[str] = None, device: str = DEVICE,
            zoom: Optional[float] = None, precision: Optional[str] = None,
            photometric: Optional[bool] = None) -> Resolved:
    """The matcher of the ``--matcher`` / ``--resolution`` / ``--zoom`` / ``--precision`` /
    ``--photometric`` options.

    No spec: 'roma' when the shipped weights are recommended, else 'sift' with a note saying why.
    A resolution, a zoom, a precision or a photometric setting loads the RoMa matcher at once
    (ignored for SIFT, with a note). Raises :class:`MatcherSpecError` for a name that is no
    matcher, weights that are missing, a bad zoom or an unknown precision.
    """
    from ...matcher import check_precision, check_zoom
    from ...presets import PRESETS
    from ...weights import default_checkpoint, shipped_model_recommended

    try:
        res = roma.parse_resolution(resolution)
    except ValueError as e:
        raise MatcherSpecError(str(e), "--resolution") from None
    notes = []
    if spec is None:
        if shipped_model_recommended():
            spec = "roma"
        else:
            spec = "sift"
            why = ("is still in training (it does not beat SIFT yet, see MODEL_CARD.md)" if default_checkpoint().is_file()
                   else f"({default_checkpoint()}) are not installed")
            notes.append(f"the shipped RoMa weights {why}: matching with SIFT (choose with --matcher)")
    try:
        zoom = None if zoom is None else check_zoom(zoom)
    except ValueError as e:
        raise MatcherSpecError(str(e), "--zoom") from None
    try:
        precision = None if precision is None else check_precision(precision)
    except ValueError as e:
        raise MatcherSpecError(str(e), "--precision") from None
    low = spec.lower()
    if low in sift.confs:
        for option, value in (("--resolution", res), ("--zoom", zoom), ("--precision", precision),
                              ("--photometric", photometric)):
            if value is not None:
                notes.append(f"{option} applies to RoMa matchers only; ignored for SIFT")
        return Resolved(low, notes)
    if low == "roma":
        if not default_checkpoint().is_file():
            raise MatcherSpecError(f"'roma' needs the shipped weights {default_checkpoint()}, which are not "
                                   "installed: pass a preset with weights, a checkpoint file, or 'sift' "
                                   "(`roma-sfm models` lists what is available)", "--matcher")
    elif spec not in PRESETS and not Path(spec).is_file():
        raise MatcherSpecError(f"'{spec}' is not 'roma', 'sift', a preset ({', '.join(PRESETS)}) or an "
                               "existing checkpoint file", "--matcher")
    kw = {**(res or {}), **{k: v for k, v in (("zoom", zoom), ("precision", precision), ("photometric", photometric))
                            if v is not None}}
    if not kw:
        return Resolved(spec, notes)
    return Resolved(get_matcher(spec, device=device, **kw), notes)
