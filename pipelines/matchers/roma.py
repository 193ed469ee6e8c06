"""RoMa as a matcher of the match step: :class:`roma_sfm.Matcher` loaded by name, preset or file.

``roma_sfm.Matcher`` already has the interface of :mod:`.base` (``match``, ``match_many`` with
prefetching, batching and a feature cache); this module only loads it and reads the ``--resolution``
syntax ``COARSE[:FINE]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union
from ...presets import DEVICE

LOAD_KEYS = ("weights", "coarse_res", "upsample_res", "symmetric", "fit", "zoom", "precision", "photometric")


def load(spec: Union[str, Path], device: str = DEVICE, **kwargs) -> Any:
    """'roma' (the shipped model), a preset name or a checkpoint path -> a loaded RoMa matcher.

    Runs the preset's full inference (its second, finer pass too) unless ``upsample_res`` is
    given (None: one pass); ``coarse_res``, ``weights``, ``symmetric`` as in ``load_matcher``.
    Other keyword arguments are ignored.
    """
    from ...matcher import load_matcher

    name = None if str(spec).lower() == "roma" else str(spec)
    kwargs = {"upsample_res": True, **kwargs}
    return load_matcher(name_or_path=name, device=device, **{k: v for k, v in kwargs.items() if k in LOAD_KEYS})


def parse_size(value: str) -> Optional[tuple[int, int]]:
    """'448' or '392x518' -> (h, w) in multiples of 14; None when malformed."""
    try:
        parts = [int(v) for v in value.lower().replace("x", " ").split()]
    except ValueError:
        return None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p <= 0 or p % 14 for p in parts):
        return None
    return parts[0], parts[1]


def parse_resolution(value: Optional[str]) -> Optional[dict]:
    """'COARSE[:FINE]' -> load keywords: {'coarse_res': (h, w)} plus 'upsample_res' when FINE is
    given ((h, w), or None for 'none': a single pass); None when no value is given. ValueError when
    malformed."""
    if value is None:
        return None
    coarse, sep, fine = value.partition(":")
    kw: dict = {"coarse_res": parse_size(coarse)}
    single = fine.strip().lower() == "none"
    if sep:
        kw["upsample_res"] = None if single else parse_size(fine)
    if kw["coarse_res"] is None or (sep and not single and kw["upsample_res"] is None):
        raise ValueError(f"'{value}': give COARSE or COARSE:FINE, each N or HxW with multiples of 14, "
                         "FINE may be 'none' (e.g. 448, 448:672, 392x518:none)")
    return kw
