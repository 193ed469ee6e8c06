"""Weights: strict loading of the public RoMa / DINOv2 checkpoints and the project's own format.

Public files are read with ``torch.load(weights_only=True)`` (no pickled code runs) from local paths
only; nothing is ever downloaded. The project's own checkpoint is one safetensors file holding the
preset, the weights and metadata (training data, steps, metrics).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from .io import atomic_output
from .models.roma import RoMa
from .presets import DEFAULT_PRESET, PRESETS, RomaConfig, get_preset

PathLike = Union[str, os.PathLike]

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
FORMAT = "roma-sfm-checkpoint-v1"


class CheckpointError(RuntimeError):
    pass


def weights_dirs() -> list[Path]:
    """Where named public checkpoints are looked up: $ROMA_SFM_WEIGHTS (os.pathsep-separated),
    ~/.cache/roma_sfm, and the package's own weights folder."""
    dirs = [Path(p) for p in os.environ.get("ROMA_SFM_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(Path.home() / ".cache" / "roma_sfm")
    dirs.append(PACKAGE_WEIGHTS)
    return dirs


def find_weights(filename: str) -> Optional[Path]:
    for d in weights_dirs():
        if (d / filename).is_file():
            return d / filename
    return None


def _read_state(path: PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or pickled objects weights_only refuses
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    for wrapper in ("model", "state_dict"):  # tolerate {"model": state_dict} wrappers
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint",
                prefix: str = "", skip: str = "encoder.dinov2.") -> None:
    """Load ``state`` (keys relative to ``prefix``) into ``module``; every key and shape must match.

    Model keys under ``skip`` (the frozen ViT, which has its own file) are not expected unless
    ``prefix`` selects them. Raises :class:`CheckpointError` naming the first missing, unexpected
    and mis-shaped keys.
    """
    expected = {k[len(prefix):]: v for k, v in module.state_dict().items()
                if k.startswith(prefix) and (prefix.startswith(skip) or not k.startswith(skip))}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def first(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
        msg = [f"{source} does not match the model"]
        if missing:
            msg.append(f"missing keys: {first(missing)}")
        if unexpected:
            msg.append(f"unexpected keys: {first(unexpected)}")
        if shapes:
            msg.append(f"mis-shaped keys: {first(shapes)}")
        raise CheckpointError("; ".join(msg))
    full = {prefix + k: v for k, v in state.items()}
    # dtype follows the model (fp16 checkpoints load into fp32 modules)
    module.load_state_dict(full, strict=False)


def load_public(cfg: RomaConfig, roma_weights: PathLike, dinov2_weights: Optional[PathLike]) -> RoMa:
    """Build the paper model and load ``roma_outdoor.pth``-layout weights + DINOv2 ViT-L/14."""
    if cfg.coarse_encoder != "dinov2":
        raise CheckpointError(f"preset {cfg.name} has no DINOv2 encoder; public checkpoints need roma-outdoor/indoor")
    if dinov2_weights is None:
        raise CheckpointError(f"{cfg.name} needs DINOv2 weights: pass dinov2_weights=<path to {DINOV2_FILE}> "
                              f"or put the file in one of: {', '.join(map(str, weights_dirs()))}")
    roma_state, dino_state = _read_state(roma_weights), _read_state(dinov2_weights)  # fail before building
    model = RoMa(cfg)
    load_strict(model, roma_state, source=str(roma_weights))  # encoder.cnn.*, decoder.*
    load_strict(model, dino_state, source=str(dinov2_weights), prefix="encoder.dinov2.")
    return model.eval()


def save_checkpoint(path: PathLike, model: RoMa, metadata: Optional[dict] = None,
                    dtype: torch.dtype = torch.float16) -> Path:
    """One safetensors file: weights (floating tensors cast to ``dtype``) + preset + metadata.

    A frozen DINOv2 is not stored (it has its own file). Written atomically.
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items() if not k.startswith("encoder.dinov2.")}
    meta = {"format": FORMAT, "preset": json.dumps(model.cfg.to_dict()),
            "metadata": json.dumps(metadata or {}, default=str)}
    with atomic_output(path, path.with_name(path.name + ".tmp")) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_checkpoint_info(path: PathLike) -> tuple[RomaConfig, dict]:
    """Preset and metadata of a project checkpoint, without reading the weights."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a roma-sfm checkpoint (format {meta.get('format')!r})")
    return RomaConfig.from_dict(json.loads(meta["preset"])), json.loads(meta.get("metadata", "{}"))


def load_checkpoint(path: PathLike, dinov2_weights: Optional[PathLike] = None) -> tuple[RoMa, dict]:
    """Load a project checkpoint -> (model in eval mode, metadata)."""
    cfg, meta = read_checkpoint_info(path)
    model = RoMa(cfg)
    state = _read_state(path)
    if cfg.coarse_encoder == "dinov2":
        if dinov2_weights is None:
            raise CheckpointError(f"{path} uses a DINOv2 coarse encoder: pass dinov2_weights")
        load_strict(model, _read_state(dinov2_weights), source=str(dinov2_weights), prefix="encoder.dinov2.")
    load_strict(model, state, source=str(path))
    return model.eval(), meta


def default_checkpoint() -> Path:
    return PACKAGE_WEIGHTS / "roma_tiny.safetensors"


def shipped_model_recommended() -> bool:
    """Whether the shipped model is good enough to be the default matcher of ``reconstruct``.

    Its metadata says so (``"recommended": true``) only once it beats SIFT in the benchmarks;
    until then the pipeline defaults to SIFT and the model is used when asked for.
    """
    path = default_checkpoint()
    if not path.is_file():
        return False
    try:
        return bool(read_checkpoint_info(path)[1].get("recommended", False))
    except Exception:  # an unreadable file is reported when it is actually loaded
        return False


def weights_status() -> list[dict]:
    """For ``roma-sfm models``: each preset and whether weights are available here."""
    rows = []
    for name, cfg in PRESETS.items():
        if cfg.checkpoint_name:
            w = find_weights(cfg.checkpoint_name)
            d = find_weights(DINOV2_FILE)
            ok = w is not None and d is not None
            where = f"{w or cfg.checkpoint_name + ' not found'}; {d or DINOV2_FILE + ' not found'}"
        else:
            ck = default_checkpoint() if name == "roma-tiny" else None
            ok = ck is not None and ck.is_file()
            where = str(ck) if ok else "not trained yet"
            if ok and not shipped_model_recommended():
                where += f" (in training: step {read_checkpoint_info(ck)[1].get('step', '?')}, not yet better than SIFT)"
        rows.append({"preset": name, "available": ok, "weights": where})
    return rows


def weights_fingerprint(model: torch.nn.Module) -> Optional[str]:
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


def load_model(name_or_path: Optional[Union[str, os.PathLike]] = None, weights: Optional[Union[str, os.PathLike]] = None,
               dinov2_weights: Optional[Union[str, os.PathLike]] = None) -> tuple[RoMa, dict]:
    """Build a model with weights -> (model, metadata). See :func:`load_matcher`."""
    if name_or_path is None:
        name_or_path = DEFAULT_PRESET
    if str(name_or_path) in PRESETS:
        cfg = get_preset(str(name_or_path))
        if cfg.checkpoint_name:  # paper presets: public checkpoints from local paths only
            weights = weights or find_weights(cfg.checkpoint_name)
            dinov2_weights = dinov2_weights or find_weights(DINOV2_FILE)
            if weights is None:
                raise CheckpointError(f"{cfg.name} needs {cfg.checkpoint_name}: pass weights=<path> (nothing is "
                                      f"downloaded) or set ROMA_SFM_WEIGHTS to its folder")
            if str(weights).endswith(".safetensors"):
                return load_checkpoint(weights, dinov2_weights)
            return load_public(cfg, weights, dinov2_weights), {"source": str(weights)}
        path = Path(weights) if weights else default_checkpoint()
        if not path.is_file():
            raise CheckpointError(f"no weights for {cfg.name}: {path} does not exist (train one with "
                                  f"`roma-sfm train`, or pass weights=<checkpoint>)")
        model, meta = load_checkpoint(path, dinov2_weights)
        if not weights and not meta.get("recommended", False):
            warnings.warn(f"the shipped {cfg.name} weights are still in training (step {meta.get('step', '?')}) "
                          "and do not beat SIFT on every benchmark yet; see MODEL_CARD.md", stacklevel=3)
        return model, meta
    path = Path(name_or_path)
    if not path.is_file():
        raise CheckpointError(f"'{name_or_path}' is neither a preset ({', '.join(PRESETS)}) nor a checkpoint file")
    if path.suffix == ".safetensors":
        return load_checkpoint(path, dinov2_weights)
    # a public .pth: the paper layout; indoor/outdoor share it
    cfg = get_preset("roma-indoor" if "indoor" in path.name else "roma-outdoor")
    return load_public(cfg, path, dinov2_weights or find_weights(DINOV2_FILE)), {"source": str(path)}
