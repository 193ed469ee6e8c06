"""Training loop for RoMa (from scratch on CPU for ``roma-tiny``, or fine-tuning shipped weights).

Use from Python::

    from roma_sfm.train.trainer import TrainConfig, train
    train(TrainConfig(steps=20000, batch_size=4, resolution=(224, 224), out_dir="runs/tiny"))

or from a shell (every :class:`TrainConfig` field is a ``--flag``; ``--config cfg.json`` loads a
file first, flags override it)::

    python -m roma_sfm.train.trainer --steps 20000 --batch-size 4 --resolution 224 224 --out-dir runs/tiny

The data folders are arguments (``--train-roots``, ``--val-root``, ``--scene-roots``,
``--track-indexes``); a resumed run takes the ones it leaves out from ``out_dir/train_config.json``.
Checkpoint I/O is in :mod:`.checkpoints`, the CSV logs in :mod:`.logs`, validation in
:mod:`.validation`; this module holds the configuration and the loop.

Exact resume: sample ``k`` of the stream is a pure function of (seed, k) and batch ``t`` holds
samples ``t*B ... t*B+B-1``, so the data order is the step counter. A checkpoint holds the model,
optimizer, scheduler (and AMP scaler), step, elapsed time and the torch / numpy / python RNG
states; it is written atomically (tmp file + os.replace) every ``ckpt_every`` steps, at the end,
and when SIGINT (Ctrl-C) or SIGTERM arrives (after the current step). Re-running with the same
``out_dir`` continues from ``out_dir/last.pt`` and reaches the same weights as an uninterrupted
run. Checkpoints are plain dicts of tensors / Python scalars: ``torch.load(weights_only=True)``.

kill -9 (no handler runs): ``last.pt`` is the previous complete checkpoint (the temporary file of a
save in flight is removed by the next run), the next run resumes from it, and the log rows written
after it (including a half-written last line) are dropped, so each step is logged once.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..lock import writes_into
from ..matcher import autocast_dtype, resolve_device, torch_threads
from ..models.decoder import seed_second_pass_refiners
from ..models.roma import RoMa
from ..presets import DEVICE, PRECISION, RomaConfig, get_preset
from .checkpoints import (atomic_save, average_weights, blend_weights, export_weights, load_weights, get_rng_state, no_prior,
                          prior_training, remove_stale_tmp, set_rng_state, write_text_atomic)
from .data import DepthPairs, MixedPairs, SynthConfig, SyntheticPairs, collate
from .logs import CsvLog
from .validation import Validator
from .scenes import SceneConfig, ScenePairs
from .losses import LossConfig, pck, resample_gt, roma_loss, sparse_loss
from .multiview import TrackPairs

@dataclass
class TrainConfig:
    # model: a preset name, optionally overridden by a full RomaConfig dict (RomaConfig.to_dict())
    preset: str = "roma-tiny"
    model: Optional[dict] = None
    # data (training folders only; the evaluation folders are refused by the datasets). No default:
    # a fresh run names its photo folders; a resumed run takes them from out_dir/train_config.json
    train_roots: tuple[str, ...] = ()
    depth_index: Optional[str] = None  # optional MegaDepth-style index, see data.read_depth_index
    p_depth: float = 0.5  # fraction of samples drawn from depth_index when given
    # rendered 3-D scenes (scenes.ScenePairs) textured with the photos of scene_roots
    # (empty: train_roots); p_scene of the non-depth samples, 0 = off
    p_scene: float = 0.0
    scene_roots: tuple[str, ...] = ()
    scenes: dict = field(default_factory=dict)  # SceneConfig overrides
    # real photos with sparse GT from reconstructions (multiview.TrackPairs): p_tracks of all samples
    track_indexes: tuple[str, ...] = ()
    p_tracks: float = 0.0
    tracks: dict = field(default_factory=dict)  # TrackPairs keyword overrides (min_crop, free_aspect, ...)
    val_root: Optional[str] = None  # photos of the validation pairs (None: no validation; resumed: as saved)
    val_pairs: int = 32  # fixed synthetic pairs (seeds val_seed + i) for PCK
    val_seed: int = 1_000_000
    resolution: tuple[int, int] = (224, 224)  # (H, W), multiples of 56 (patch 14 and stride 8)
    # a second refinement pass trained beside the first, as inference's upsample_res runs it: the
    # refiners 8..1 again, from the first pass's finest warp, on the pair at this factor of
    # ``resolution`` (1.5: 448 -> 672 px, the pipeline's pass); the pairs are then made at that size
    # and shrunk for the first pass; 0 = off
    second_pass: float = 0.0
    synth: dict = field(default_factory=dict)  # SynthConfig overrides for training
    val_synth: dict = field(default_factory=dict)  # ... for validation: kept apart so PCK stays comparable
    loss: dict = field(default_factory=dict)  # LossConfig overrides
    # optimisation
    steps: int = 100_000
    batch_size: int = 4
    lr: float = 4e-4
    encoder_lr: Optional[float] = None  # None: same as lr (the encoders are trained from scratch)
    # parameter-name prefix -> lr multiplier, e.g. {"encoder.conv_coarse.context": 10} for blocks new to
    # a grown model (init_from), which start near the identity and must catch up in a short run
    lr_scale: dict = field(default_factory=dict)
    # parameter-name prefixes kept as loaded, e.g. ("encoder", "decoder.embedding_decoder") to train
    # the refiners alone: no gradient, and their BatchNorm statistics stay fixed (eval mode)
    freeze: tuple[str, ...] = ()
    # exponential moving average of the weights after every step, 0 = off (0.998: a horizon of ~500
    # steps); with it, validation and export use the average, which smooths the noise of the last steps
    ema_decay: float = 0.0
    weight_decay: float = 0.01
    warmup_steps: int = 500
    decay: str = "step"  # "step": x0.1 at 90 % of the steps; "cosine": to 0 at the end; "none"
    grad_clip: float = 0.01  # max global grad norm (the reference's value); 0 = off
    seed: int = 0
    # bookkeeping
    out_dir: str = "runs/roma-tiny"
    ckpt_every: int = 500
    val_every: int = 2000  # 0 = never (a final validation still runs if val_root is set)
    log_every: int = 10
    num_workers: int = 1
    threads: int = 0  # torch intra-op threads, 0 = torch's default
    device: str = DEVICE  # "auto" = cuda if available, else cpu
    # autocast, in the matcher's vocabulary (roma_sfm.presets.PRECISIONS): "auto" = on CUDA only (bf16,
    # else fp16 + grad scaler), "bf16" = also on the CPU (oneDNN's bf16 kernels), "fp32" = never
    precision: str = PRECISION
    # stop with a checkpoint once this process has trained this long (seconds; 0 = no limit): a
    # time-boxed run on a borrowed machine (roma_sfm.train.burst) ends on time whatever its speed
    max_seconds: float = 0.0
    init_from: Optional[str] = None  # weights to start from (fresh optimizer); ignored when resuming
    resume: bool = True  # continue from out_dir/last.pt when it exists
    progress: bool = True

    def model_config(self) -> RomaConfig:
        return RomaConfig.from_dict(self.model) if self.model is not None else get_preset(self.preset)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# checkpoints


def init_weights(model: torch.nn.Module, path: str) -> list[str]:
    """Load ``path`` into ``model``; the model may have grown (new modules keep their initialisation).

    A new second-pass refiner set starts as a copy of the file's refiners. Returns the other
    parameter names the file lacks. A name the model lacks or a shape mismatch is an
    error: those weights were made for another model.
    """
    state = load_weights(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{path} holds weights this model has no place for: {', '.join(unexpected[:5])}")
    seeded = seed_second_pass_refiners(state, missing)  # a second-pass set starts as the shared one
    model.load_state_dict(seeded, strict=False)
    return [k for k in missing if k not in seeded]


# ------------------------------------------------------------------------------------------------
# data order, schedule


class StepBatches(Sampler[list[int]]):
    """Batch t (t = start ... steps-1) = sample indices [t*B, (t+1)*B): the order is the step."""

    def __init__(self, start: int, steps: int, batch_size: int):
        self.start, self.steps, self.batch_size = start, steps, batch_size

    def __iter__(self):
        for t in range(self.start, self.steps):
            yield list(range(t * self.batch_size, (t + 1) * self.batch_size))

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based): linear warm-up, then decay."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "step":
        return 0.1 if step >= int(0.9 * cfg.steps) else 1.0
    if cfg.decay == "cosine":
        t = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if cfg.decay == "none":
        return 1.0
    raise ValueError(f"unknown decay '{cfg.decay}'")


def _worker_init(_: int) -> None:
    # Ctrl-C reaches the whole process group: workers ignore it and the main process stops
    # cleanly after the current step (the loader then shuts them down)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


class _StopFlag:
    """SIGINT / SIGTERM -> finish the step, checkpoint, return. A second SIGINT aborts."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


# ------------------------------------------------------------------------------------------------
# validation


# ------------------------------------------------------------------------------------------------
# training


def build_model(cfg: TrainConfig) -> RoMa:
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    return RoMa(cfg.model_config())


def under(name: str, prefix: str) -> bool:
    """Whether parameter or module ``name`` lies under ``prefix``, by whole name components
    ("decoder.proj.1" holds "decoder.proj.1.0.weight", not "decoder.proj.16.0.weight")."""
    return name == prefix or name.startswith(prefix + ".")


def freeze_parts(model: torch.nn.Module, prefixes: Sequence[str]) -> list[torch.nn.Module]:
    """Stop the gradient of the parameters under ``prefixes``; returns their modules, which
    :func:`set_training` keeps in eval mode. A prefix that names no parameter is an error."""
    for prefix in prefixes:
        if not any(under(n, prefix) for n, _ in model.named_parameters()):
            raise ValueError(f"freeze: no parameter starts with '{prefix}'")
    for n, p in model.named_parameters():
        if any(under(n, prefix) for prefix in prefixes):
            p.requires_grad_(False)
    return [m for n, m in model.named_modules() if n and any(under(n, prefix) for prefix in prefixes)]


def set_training(model: torch.nn.Module, frozen: Sequence[torch.nn.Module]) -> None:
    """Training mode for ``model`` except the ``frozen`` modules (BatchNorm statistics stay fixed)."""
    model.train()
    for m in frozen:
        m.eval()


def trainable_note(model: torch.nn.Module) -> str:
    """``", 1.23 M trainable"`` when some parameters are frozen, else ``""``."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "" if n == sum(p.numel() for p in model.parameters()) else f", {n / 1e6:.2f} M trainable"


class WeightAverage:
    """Exponential moving average of a model's state dict (parameters and BatchNorm statistics;
    integer buffers are copied), updated after every optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if self.state[k].is_floating_point():
                self.state[k].lerp_(v.detach(), 1.0 - self.decay)
            else:
                self.state[k].copy_(v)

    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` holding the average."""
        avg = copy.deepcopy(model)
        avg.load_state_dict(self.state)
        return avg


def second_pass_size(resolution: Sequence[int], factor: float) -> tuple[int, int]:
    """The second pass's input size: ``resolution`` times ``factor``, rounded to the stride 8."""
    return tuple(max(8, 8 * round(r * factor / 8)) for r in resolution)


def at_size(batch: dict, size: Sequence[int]) -> dict:
    """``batch`` with its images and dense ground truth resized to ``size`` (H, W); itself when it has
    that size. Images are resampled with antialiasing, the warp and mask at the new pixel centres."""
    size = tuple(size)
    if tuple(batch["im_A"].shape[-2:]) == size:
        return batch
    out = dict(batch)
    for k in ("im_A", "im_B"):
        out[k] = torch.nn.functional.interpolate(batch[k], size=size, mode="bicubic", align_corners=False,
                                                 antialias=True)
    out["warp"], out["mask"] = resample_gt(batch["warp"], batch["mask"], size)
    return out


def pass_loss(corresps: dict[int, dict[str, torch.Tensor]], batch: dict, size: Sequence[int],
              loss_cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's losses of one pass whose input had ``size``: dense on the batch's warps, plus the
    sparse ones where the batch has track points."""
    loss, parts = roma_loss(corresps, batch["warp"], batch["mask"], loss_cfg, batch.get("dense"))
    if "kpts_valid" in batch and batch["kpts_valid"].any():
        sp, sp_parts = sparse_loss(corresps, batch["kpts_A"], batch["kpts_B"], batch["kpts_valid"], tuple(size),
                                   loss_cfg)
        loss = loss + sp
        parts = {**parts, **sp_parts, "total": float(loss.detach())}
    return loss, parts


def build_optimizer(model: RoMa, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with groups: decoder (lr), encoders (encoder_lr), then one group per ``lr_scale`` prefix
    (its parameters at their part's lr times the multiplier)."""
    enc_lr = cfg.lr if cfg.encoder_lr is None else cfg.encoder_lr
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for prefix in cfg.lr_scale:
        if not any(under(n, prefix) for n, _ in named):
            raise ValueError(f"lr_scale: no trainable parameter starts with '{prefix}'")
    groups = {"decoder": [], "encoder": [], **{prefix: [] for prefix in cfg.lr_scale}}
    for n, p in named:
        scaled = [prefix for prefix in cfg.lr_scale if under(n, prefix)]
        groups[max(scaled, key=len) if scaled else "encoder" if n.startswith("encoder.") else "decoder"].append(p)
    base = {prefix: (enc_lr if prefix.startswith("encoder.") else cfg.lr) * float(mult)
            for prefix, mult in cfg.lr_scale.items()}
    lrs = {"decoder": cfg.lr, "encoder": enc_lr, **base}
    return torch.optim.AdamW([{"params": ps, "lr": lrs[k]} for k, ps in groups.items()],
                             weight_decay=cfg.weight_decay)


def with_saved_data_roots(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the data folders it leaves out (``train_roots``, ``val_root``) taken from the run
    it resumes (``out_dir/train_config.json`` next to ``last.pt``), so that the same command resumes."""
    saved = Path(cfg.out_dir) / "train_config.json"
    if not (cfg.resume and (Path(cfg.out_dir) / "last.pt").exists() and saved.is_file()):
        return cfg
    before = json.loads(saved.read_text())
    return dataclasses.replace(cfg, train_roots=cfg.train_roots or tuple(before.get("train_roots") or ()),
                               val_root=cfg.val_root or before.get("val_root"))


def data_resolution(cfg: TrainConfig) -> tuple[int, int]:
    """(H, W) the pairs are made at: with a second pass, its size (the first pass gets them shrunk, as
    the pipeline resizes one photo to both sizes; an upsampled first-pass image would lack detail)."""
    return second_pass_size(cfg.resolution, cfg.second_pass) if cfg.second_pass else tuple(cfg.resolution)


def build_dataset(cfg: TrainConfig) -> Dataset:
    """The training mix of ``cfg``: synthetic 2-D pairs, with rendered scenes (``p_scene``), depth
    pairs (``p_depth``) and real tracks (``p_tracks``) drawn in their shares; index i is one pair."""
    data_res = data_resolution(cfg)
    synth = SyntheticPairs(cfg.train_roots, data_res, seed=cfg.seed, length=cfg.steps * cfg.batch_size,
                           cfg=SynthConfig(**cfg.synth))
    base = synth
    if cfg.p_scene > 0:
        scenes = ScenePairs(cfg.scene_roots or cfg.train_roots, data_res, seed=cfg.seed + 7_777_777,
                            cfg=SceneConfig(**cfg.scenes))
        base = MixedPairs(synth, scenes, cfg.p_scene, cfg.seed + 1)
    depth = DepthPairs(cfg.depth_index, data_res) if cfg.depth_index else None
    dataset = MixedPairs(base, depth, cfg.p_depth, cfg.seed)
    if cfg.track_indexes and cfg.p_tracks > 0:
        tracks = TrackPairs(cfg.track_indexes, data_res, seed=cfg.seed + 3_333_333, **cfg.tracks)
        dataset = MixedPairs(dataset, tracks, cfg.p_tracks, cfg.seed + 2)
    return dataset


def train(cfg: TrainConfig, on_step: Optional[Callable[[int, dict], None]] = None) -> dict:
    """Train (or continue training) a RoMa model; returns a summary dict.

    ``on_step(step, parts)`` is called after every optimizer step (``step`` = steps done so far).
    """
    cfg = with_saved_data_roots(cfg)
    with torch_threads(max(cfg.threads, 0)):
        return _train(cfg, on_step)


@writes_into(lambda cfg, *args, **kwargs: cfg.out_dir)  # one training per out_dir (roma_sfm.lock)
def _train(cfg: TrainConfig, on_step: Optional[Callable[[int, dict], None]]) -> dict:
    if not cfg.train_roots:
        raise ValueError("no training photos: give their folders with --train-roots DIR [DIR ...] "
                         "(TrainConfig.train_roots)")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    H, W = cfg.resolution
    if H % 56 or W % 56:
        raise ValueError(f"resolution must be multiples of 56 (patch 14 and stride 8), got {cfg.resolution}")
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, cfg.precision)
    use_amp = amp_dtype is not None
    loss_cfg = LossConfig(**cfg.loss)

    model = build_model(cfg).to(device)
    frozen = freeze_parts(model, cfg.freeze)
    set_training(model, frozen)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema: Optional[WeightAverage] = None

    start, elapsed, grown = 0, 0.0, []
    last = out_dir / "last.pt"
    resumed = cfg.resume and last.exists()
    if resumed:
        ck = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        start, elapsed = int(ck["step"]), float(ck["elapsed"])
        prior = dict(ck.get("prior", no_prior()))
        if cfg.ema_decay:
            ema = WeightAverage(model, cfg.ema_decay)  # a run that had none starts its average here
            if "ema" in ck:
                ema.state = {k: v.to(device) for k, v in ck["ema"].items()}
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        prior = no_prior()
        if cfg.init_from:
            grown = init_weights(model, cfg.init_from)
            prior = prior_training(cfg.init_from)
        if cfg.ema_decay:
            ema = WeightAverage(model, cfg.ema_decay)
    remove_stale_tmp(out_dir)
    write_text_atomic(out_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=2))

    def checkpoint(step: int) -> None:
        atomic_save({
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "elapsed": elapsed + time.perf_counter() - t0,
            "rng": get_rng_state(), "train_cfg": cfg.to_dict(), "model_cfg": model.cfg.to_dict(),
            "prior": prior, **({"ema": ema.state} if ema is not None else {}),
        }, last)

    data_res = data_resolution(cfg)
    loader = DataLoader(build_dataset(cfg), batch_sampler=StepBatches(start, cfg.steps, cfg.batch_size),
                        num_workers=cfg.num_workers, collate_fn=collate, worker_init_fn=_worker_init,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    validator = Validator(cfg, loss_cfg) if cfg.val_root else None

    scales = sorted(model.cfg.refiners, reverse=True)
    loss_cols = ["total", "cls", "gm_cert"] + [f"reg{s}" for s in scales] + [f"cert{s}" for s in scales]
    if cfg.second_pass:
        loss_cols += [f"2nd_reg{s}" for s in scales[1:]]
    log = CsvLog(out_dir / "log.csv", ["step", "time", "lr"] + loss_cols, start if resumed else None)
    val_log = CsvLog(out_dir / "val.csv", ["step", "time", "pck@1", "pck@3", "pck@5", "loss"],
                      start if resumed else None)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if grown:
        modules = sorted({".".join(k.split(".")[:3]) for k in grown})
        console.print(f"[yellow]{len(grown)} tensors not in {cfg.init_from} start from their initialisation:[/] "
                      + ", ".join(modules), highlight=False)
    live = cfg.progress and console.is_terminal
    progress = Progress(TextColumn("[bold]{task.completed}/{task.total}"), BarColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console, disable=not live)
    task = progress.add_task("train", total=cfg.steps, completed=start, info="")
    console.print(f"[bold]training[/] {model.cfg.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
                  f"params{trainable_note(model)}) on {device}, {cfg.resolution[0]}x{cfg.resolution[1]}, "
                  f"batch {cfg.batch_size}, steps {start} -> {cfg.steps}{' (resumed)' if resumed else ''}, out {out_dir}")

    t0 = time.perf_counter()
    t_win, n_win = time.perf_counter(), 0
    running: dict[str, float] = {}
    val_res: dict[str, float] = {}
    step, parts = start, {}
    skipped = 0
    stopped_by: Optional[Union[int, str]] = None  # a signal number or "max_seconds"
    with _StopFlag() as stop, progress:
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            first = at_size(batch, cfg.resolution)  # the batch itself unless a second pass follows
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                corresps = model(first["im_A"], first["im_B"])
            loss, parts = pass_loss(corresps, first, cfg.resolution, loss_cfg)
            if cfg.second_pass:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    second = model(batch["im_A"], batch["im_B"], first_pass={k: corresps[1][k].detach()
                                                                             for k in ("flow", "certainty")})
                loss2, parts2 = pass_loss(second, batch, data_res, loss_cfg)
                loss = loss + loss2
                parts = {**parts, **{f"2nd_{k}": v for k, v in parts2.items()}, "total": float(loss.detach())}
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update(model)
            else:  # never poison the weights; the schedule still advances so resume stays exact
                skipped += 1
            sched.step()
            step += 1
            n_win += 1
            for k, v in parts.items():
                running[k] = running.get(k, 0.0) + v
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rate = n_win / max(now - t_win, 1e-9)
                avg = {k: v / n_win for k, v in running.items()}
                log.write({"step": step, "time": elapsed + now - t0, "lr": opt.param_groups[0]["lr"], **avg})
                info = (f"loss {avg['total']:.3f} cls {avg.get('cls', 0):.3f} reg1 {avg.get('reg1', 0):.4f} "
                        f"| {rate:.2f} it/s")
                if val_res:
                    info += f" | val pck@3 {val_res['pck@3']:.3f}"
                if live:
                    progress.update(task, completed=step, info=info)
                else:
                    console.print(f"step {step}/{cfg.steps} {info}", highlight=False)
                running, t_win, n_win = {}, now, 0
            elif live:
                progress.update(task, completed=step)
            if on_step is not None:
                on_step(step, parts)
            if validator and cfg.val_every and step % cfg.val_every == 0:
                val_res = validator(model if ema is None else ema.averaged(model), device)
                set_training(model, frozen)
                val_log.write({"step": step, "time": elapsed + time.perf_counter() - t0, **val_res})
                console.print(f"[cyan]val @ {step}[/] " + " ".join(f"{k} {v:.4f}" for k, v in val_res.items()),
                              highlight=False)
            if stop.signum is not None:
                stopped_by = stop.signum
                break
            if cfg.max_seconds and time.perf_counter() - t0 >= cfg.max_seconds and step < cfg.steps:
                stopped_by = "max_seconds"
                break
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                checkpoint(step)
        if stopped_by is not None:
            checkpoint(step)
            why = "the time limit" if stopped_by == "max_seconds" else f"signal {stopped_by}"
            console.print(f"[yellow]stopped by {why} at step {step}; checkpoint {last}[/]")
    if stopped_by is None and validator and step == cfg.steps and not (cfg.val_every and step % cfg.val_every == 0):
        val_res = validator(model if ema is None else ema.averaged(model), device)
        val_log.write({"step": step, "time": elapsed + time.perf_counter() - t0, **val_res})
    return {"step": step, "finished": step >= cfg.steps, "stopped_by": stopped_by, "checkpoint": str(last),
            "last_losses": parts, "val": val_res, "skipped_steps": skipped,
            "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m roma_sfm.train.trainer", description="Train RoMa.")
    p.add_argument("--config", help="JSON file of TrainConfig fields (flags override it)")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "OUT_SAFETENSORS"),
                   help="only export a checkpoint's weights (its moving average if it has one) to "
                        ".safetensors and exit")
    p.add_argument("--blend", nargs=4, metavar=("A", "B", "ALPHA", "OUT"),
                   help="only write (1 - ALPHA) * A + ALPHA * B of two .safetensors weights of one model and exit")
    p.add_argument("--average", nargs="+", metavar="PATH",
                   help="OUT A B [C ...]: only write the uniform average (a model soup) of the .safetensors "
                        "weights A, B, ... of one model to OUT and exit")
    optional_types = {"model": json.loads, "depth_index": str, "val_root": str, "encoder_lr": float,
                      "init_from": str}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, tuple):
            p.add_argument(flag, nargs="+", type=type(default[0]) if default else str, default=None)
        elif isinstance(default, dict):
            p.add_argument(flag, type=json.loads, default=None, help="JSON object")
        elif default is None:
            p.add_argument(flag, type=optional_types.get(f.name, str), default=None)
        else:
            p.add_argument(flag, type=type(default), default=None)
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    args = _parser().parse_args(argv)
    values = json.loads(Path(args.config).read_text()) if args.config else {}
    if "amp" in values:  # the field before ``precision`` (train_config.json of older runs)
        amp = values.pop("amp")
        values.setdefault("precision", PRECISION if amp else "fp32")
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    for k in ("train_roots", "scene_roots", "track_indexes", "resolution", "freeze"):
        if k in values:
            values[k] = tuple(values[k])
    return TrainConfig(**values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: ``main(["--steps", "1000", ...])``; see :class:`TrainConfig`."""
    args = _parser().parse_args(argv)
    if args.export:
        export_weights(*args.export)
        return 0
    if args.blend:
        a, b, alpha, out = args.blend
        blend_weights(a, b, float(alpha), out)
        return 0
    if args.average:
        if len(args.average) < 3:
            raise SystemExit("--average needs OUT and at least two weights files")
        out, *members = args.average
        average_weights(members, [1.0 / len(members)] * len(members), out)
        return 0
    res = train(config_from_args(argv))
    print(json.dumps({k: v for k, v in res.items() if k != "last_losses"}, default=str))
    return 0 if res["finished"] or res["stopped_by"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
