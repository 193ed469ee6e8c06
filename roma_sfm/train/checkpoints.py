"""Training checkpoints: atomic writes, RNG states, weights in and out, steps behind a set of weights.

A checkpoint is a plain dict of tensors and Python scalars (``torch.load(weights_only=True)``),
written to a temporary file and renamed into place, so a kill leaves the previous one.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..io import atomic_output
from ..models.roma import RoMa
from ..presets import RomaConfig


def hidden_tmp(path: Path) -> Path:
    """The temporary name of an atomic write: ``.<name>.tmp<pid>`` (see :func:`remove_stale_tmp`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    with atomic_output(path, hidden_tmp(path)) as tmp:
        torch.save(obj, tmp)


def remove_stale_tmp(folder: Path) -> None:
    """Temporary files (``.<name>.tmp<pid>``) of atomic writes that killed runs left in ``folder``."""
    for p in Path(folder).glob(".*.tmp*"):
        if re.fullmatch(r"\..+\.tmp\d+", p.name) and p.is_file():
            p.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path, hidden_tmp(path)) as tmp:
        tmp.write_text(text)


def get_rng_state() -> dict:
    """torch / numpy / python global RNG states as tensors and ints (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """A model state dict from a training checkpoint (.pt, key 'model'), a plain state dict
    (.pt/.pth) or a .safetensors file."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["model"] if isinstance(obj, dict) and "model" in obj and "optimizer" in obj else obj


def export_weights(checkpoint: str, out: str, dtype: torch.dtype = torch.float16,
                   metadata: Optional[dict] = None, average: bool = True) -> Path:
    """Training checkpoint -> a roma-sfm checkpoint (:func:`roma_sfm.weights.save_checkpoint`: one
    safetensors file with the preset, the weights in ``dtype`` and metadata), loadable by
    ``load_matcher(path)`` and by ``init_from``. A run with ``ema_decay`` exports its moving
    average unless ``average`` is False."""
    from ..weights import save_checkpoint

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = RoMa(RomaConfig.from_dict(ck["model_cfg"]))
    averaged = average and "ema" in ck
    model.load_state_dict(ck["ema"] if averaged else ck["model"])
    total = run_totals(ck)  # over every run since the random start (runs chained by init_from)
    meta = {"step": total["steps"], "train_seconds": total["seconds"],
            "run_step": int(ck["step"]), "run_seconds": float(ck.get("elapsed", 0.0)),
            "training_data": merge_training_data([ck.get("prior", {}).get("training_data"),
                                                  training_data_summary(ck.get("train_cfg") or {})]),
            "train_config": ck.get("train_cfg"), **(metadata or {})}
    if averaged:
        meta["weights"] = f"moving average of the run's weights (decay {(ck.get('train_cfg') or {}).get('ema_decay')})"
    return save_checkpoint(out, model, meta, dtype=dtype)


def average_weights(paths: Sequence[str], coefficients: Sequence[float], out: str,
                    dtype: torch.dtype = torch.float16, key: str = "average", record: Optional[dict] = None) -> Path:
    """``sum_i coefficients[i] * weights_i`` of roma-sfm checkpoints of one model, in float32 (a model
    soup when the coefficients are equal: fine-tunes of one set of weights averaged in weight space).
    Integer buffers and the metadata come from the last checkpoint; ``record`` (default: the members
    and their coefficients) is stored under the metadata's ``key``."""
    from ..weights import load_checkpoint, save_checkpoint

    if len(paths) != len(coefficients) or not paths:
        raise ValueError(f"need one coefficient per checkpoint, got {len(paths)} checkpoints and "
                         f"{len(coefficients)} coefficients")
    if any(c < 0 for c in coefficients) or abs(sum(coefficients) - 1.0) > 1e-6:
        raise ValueError(f"coefficients must be >= 0 and sum to 1, got {list(coefficients)}")
    last, meta = load_checkpoint(paths[-1])
    target = last.state_dict()
    sums = {k: coefficients[-1] * v.float() for k, v in target.items() if v.is_floating_point()}
    datasets = []  # each member's training_data, in the order given
    for p, c in zip(paths[:-1], coefficients[:-1]):  # one further model in memory at a time
        model, member = load_checkpoint(p)
        datasets.append(member.get("training_data"))
        if model.cfg != last.cfg:
            raise ValueError(f"{p} and {paths[-1]} hold different models ({model.cfg.name} / {last.cfg.name})")
        for k, v in model.state_dict().items():
            if k in sums:
                sums[k] += c * v.float()
    last.load_state_dict({k: sums[k].to(v.dtype) if k in sums else v for k, v in target.items()})
    record = record or {"members": [Path(p).name for p in paths], "coefficients": [float(c) for c in coefficients]}
    data = merge_training_data([*datasets, meta.get("training_data")])
    meta = {**meta, key: record, **({"training_data": data} if data else {})}
    return save_checkpoint(out, last, meta, dtype=dtype)


def blend_weights(a: str, b: str, alpha: float, out: str, dtype: torch.dtype = torch.float16) -> Path:
    """``(1 - alpha) * A + alpha * B`` of two roma-sfm checkpoints of one model (weight-space
    interpolation between weights and their fine-tuned successor, as in WiSE-FT); integer buffers
    and the metadata come from B, which gains a ``blend`` entry."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return average_weights([a, b], [1.0 - alpha, alpha], out, dtype, key="blend",
                           record={"a": Path(a).name, "b": Path(b).name, "alpha": alpha})


def training_data_summary(train_cfg: dict) -> str:
    """What a run trained on, for the weights' metadata (licences follow the data)."""
    parts = ["synthetic 2-D warps of BSDS500 photos (non-commercial research use)"]
    if train_cfg.get("p_scene", 0) > 0:
        roots = train_cfg.get("scene_roots") or train_cfg.get("train_roots") or []
        parts.append("rendered 3-D scenes textured with the photos of "
                     + ", ".join(Path(r).name for r in roots))
    if train_cfg.get("p_tracks", 0) > 0 and train_cfg.get("track_indexes"):
        parts.append("real multi-view photos supervised by SIFT reconstruction tracks ("
                     + ", ".join(Path(r).stem for r in train_cfg["track_indexes"]) + ")")
    return "; ".join(parts)


def merge_training_data(summaries: Sequence[Optional[str]]) -> str:
    """One summary of every dataset named in ``summaries`` (each ``"; "``-separated, as
    :func:`training_data_summary` writes them), first-named first: weights fine-tuned from, or
    averaged with, others trained on what those were trained on too."""
    parts: list[str] = []
    for summary in summaries:
        for part in (summary or "").split("; "):
            if part and part not in parts:
                parts.append(part)
    return "; ".join(parts)


def no_prior() -> dict:
    return {"steps": 0, "seconds": 0.0}


def run_totals(ck: dict) -> dict:
    """Steps and seconds of a training checkpoint's run plus those of the runs before it."""
    prior = ck.get("prior", no_prior())
    return {"steps": int(prior["steps"]) + int(ck["step"]),
            "seconds": float(prior["seconds"]) + float(ck.get("elapsed", 0.0))}


def prior_training(init_from: str) -> dict:
    """Steps and seconds behind the weights of ``init_from`` (a roma-sfm checkpoint's metadata, or a
    training checkpoint's own counters) and what they were trained on; zeros for plain state dicts."""
    if str(init_from).endswith(".safetensors"):
        from ..weights import CheckpointError, read_checkpoint_info

        try:
            meta = read_checkpoint_info(init_from)[1]
        except CheckpointError:
            return no_prior()
        return {"steps": int(meta.get("step", 0)), "seconds": float(meta.get("train_seconds", 0.0)),
                **({"training_data": meta["training_data"]} if meta.get("training_data") else {})}
    obj = torch.load(init_from, map_location="cpu", weights_only=True)
    if not (isinstance(obj, dict) and "optimizer" in obj):
        return no_prior()
    data = [obj.get("prior", {}).get("training_data"), training_data_summary(obj.get("train_cfg") or {})]
    return {**run_totals(obj), "training_data": merge_training_data(data)}

