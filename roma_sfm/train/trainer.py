"""Training loop for RoMa (from scratch on CPU for ``roma-tiny``, or fine-tuning shipped weights).

Use from Python::

    from roma_sfm.train.trainer import TrainConfig, train
    train(TrainConfig(steps=20000, batch_size=4, resolution=(224, 224), out_dir="runs/tiny"))

or from a shell (every :class:`TrainConfig` field is a ``--flag``; ``--config cfg.json`` loads a
file first, flags override it)::

    python -m roma_sfm.train.trainer --steps 20000 --batch-size 4 --resolution 224 224 --out-dir runs/tiny

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
import csv
import dataclasses
import io
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..lock import writes_into
from ..matcher import torch_threads
from ..models.roma import RoMa
from ..presets import RomaConfig, get_preset
from .data import DepthPairs, MixedPairs, SynthConfig, SyntheticPairs
from .scenes import SceneConfig, ScenePairs
from .losses import LossConfig, pck, roma_loss, sparse_loss
from .multiview import TrackPairs

BSDS = "../shared/data/train/bsds500"


@dataclass
class TrainConfig:
    # model: a preset name, optionally overridden by a full RomaConfig dict (RomaConfig.to_dict())
    preset: str = "roma-tiny"
    model: Optional[dict] = None
    # data (training folders only; the evaluation folders are refused by the datasets)
    train_roots: tuple[str, ...] = (f"{BSDS}/train", f"{BSDS}/test")
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
    val_root: Optional[str] = f"{BSDS}/val"
    val_pairs: int = 32  # fixed synthetic pairs (seeds val_seed + i) for PCK
    val_seed: int = 1_000_000
    resolution: tuple[int, int] = (224, 224)  # (H, W), multiples of 56 (patch 14 and stride 8)
    synth: dict = field(default_factory=dict)  # SynthConfig overrides for training
    val_synth: dict = field(default_factory=dict)  # ... for validation: kept apart so PCK stays comparable
    loss: dict = field(default_factory=dict)  # LossConfig overrides
    # optimisation
    steps: int = 100_000
    batch_size: int = 4
    lr: float = 4e-4
    encoder_lr: Optional[float] = None  # None: same as lr (the encoders are trained from scratch)
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
    device: str = "auto"  # "auto" = cuda if available, else cpu
    amp: bool = True  # autocast (bf16, else fp16 + grad scaler) on CUDA only
    init_from: Optional[str] = None  # weights to start from (fresh optimizer); ignored when resuming
    resume: bool = True  # continue from out_dir/last.pt when it exists
    progress: bool = True

    def model_config(self) -> RomaConfig:
        return RomaConfig.from_dict(self.model) if self.model is not None else get_preset(self.preset)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# checkpoints


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _remove_stale_tmp(folder: Path) -> None:
    """Temporary files (``.<name>.tmp<pid>``) of atomic writes that killed runs left in ``folder``."""
    for p in Path(folder).glob(".*.tmp*"):
        if re.fullmatch(r"\..+\.tmp\d+", p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
                   metadata: Optional[dict] = None) -> Path:
    """Training checkpoint -> a roma-sfm checkpoint (:func:`roma_sfm.weights.save_checkpoint`: one
    safetensors file with the preset, the weights in ``dtype`` and metadata), loadable by
    ``load_matcher(path)`` and by ``init_from``."""
    from ..weights import save_checkpoint

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = RoMa(RomaConfig.from_dict(ck["model_cfg"]))
    model.load_state_dict(ck["model"])
    total = _totals(ck)  # over every run since the random start (runs chained by init_from)
    meta = {"step": total["steps"], "train_seconds": total["seconds"],
            "run_step": int(ck["step"]), "run_seconds": float(ck.get("elapsed", 0.0)),
            "training_data": "synthetic pairs from BSDS500 train+test (non-commercial research use)",
            "train_config": ck.get("train_cfg"), **(metadata or {})}
    return save_checkpoint(out, model, meta, dtype=dtype)


def _no_prior() -> dict:
    return {"steps": 0, "seconds": 0.0}


def _totals(ck: dict) -> dict:
    """Steps and seconds of a training checkpoint's run plus those of the runs before it."""
    prior = ck.get("prior", _no_prior())
    return {"steps": int(prior["steps"]) + int(ck["step"]),
            "seconds": float(prior["seconds"]) + float(ck.get("elapsed", 0.0))}


def prior_training(init_from: str) -> dict:
    """Steps and seconds behind the weights of ``init_from`` (a roma-sfm checkpoint's metadata, or a
    training checkpoint's own counters); zeros for plain state dicts."""
    if str(init_from).endswith(".safetensors"):
        from ..weights import CheckpointError, read_checkpoint_info

        try:
            meta = read_checkpoint_info(init_from)[1]
        except CheckpointError:
            return _no_prior()
        return {"steps": int(meta.get("step", 0)), "seconds": float(meta.get("train_seconds", 0.0))}
    obj = torch.load(init_from, map_location="cpu", weights_only=True)
    return _totals(obj) if isinstance(obj, dict) and "optimizer" in obj else _no_prior()


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


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples; a batch mixing dense (warp, mask) and sparse (kpts_*) samples gets empty
    stand-ins for what a sample lacks, and ``dense`` (B,) saying which samples have a real warp."""
    if len({frozenset(s) for s in samples}) > 1:
        H, W = samples[0]["im_A"].shape[-2:]
        K = next(len(s["kpts_valid"]) for s in samples if "kpts_valid" in s)
        blank = {"warp": torch.zeros(H, W, 2), "mask": torch.zeros(H, W), "kpts_A": torch.zeros(K, 2),
                 "kpts_B": torch.zeros(K, 2), "kpts_valid": torch.zeros(K, dtype=torch.bool)}
        samples = [{**blank, **s, "dense": torch.tensor(float("warp" in s))} for s in samples]
    elif "warp" not in samples[0]:
        samples = [{**s, "warp": torch.zeros(*s["im_A"].shape[-2:], 2), "mask": torch.zeros(s["im_A"].shape[-2:]),
                    "dense": torch.tensor(0.0)} for s in samples]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


class _CsvLog:
    """Append-only CSV; on resume, rows after the checkpoint's step are dropped (they were lost), and
    so is a last line without its newline (a kill in the middle of an append)."""

    def __init__(self, path: Path, columns: Sequence[str], keep_until: Optional[int]):
        self.path, self.columns = path, list(columns)
        rows = []
        if keep_until is not None and path.exists():
            text = path.read_text()
            lines = text.splitlines(keepends=True)
            if lines and not lines[-1].endswith("\n"):
                lines = lines[:-1]
            rows = [r for r in csv.DictReader(lines) if int(r["step"]) <= keep_until]
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, self.columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        _atomic_write_text(path, buf.getvalue())  # a kill now must not lose the rows kept

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


# ------------------------------------------------------------------------------------------------
# validation


class Validator:
    """Fixed held-out synthetic pairs (val_root, seeds val_seed + i) -> PCK@1/3/5 px and loss."""

    def __init__(self, cfg: TrainConfig, loss_cfg: LossConfig):
        ds = SyntheticPairs(cfg.val_root, cfg.resolution, seed=cfg.val_seed, length=cfg.val_pairs,
                            cfg=SynthConfig(**cfg.val_synth))
        self.batches = [collate([ds[i] for i in range(j, min(j + cfg.batch_size, cfg.val_pairs))])
                        for j in range(0, cfg.val_pairs, cfg.batch_size)]
        self.loss_cfg = loss_cfg

    @torch.no_grad()
    def __call__(self, model: RoMa, device: torch.device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        n = 0
        for b in self.batches:
            b = {k: v.to(device) for k, v in b.items()}
            out = model(b["im_A"], b["im_B"])
            _, parts = roma_loss(out, b["warp"], b["mask"], self.loss_cfg)
            res = pck(out[1]["flow"], b["warp"], b["mask"])
            res["loss"] = parts["total"]
            k = b["im_A"].shape[0]
            for key, v in res.items():
                sums[key] = sums.get(key, 0.0) + v * k
            n += k
        model.train(was_training)
        return {k: v / n for k, v in sums.items()}


# ------------------------------------------------------------------------------------------------
# training


def build_model(cfg: TrainConfig) -> RoMa:
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    return RoMa(cfg.model_config())


def build_optimizer(model: RoMa, cfg: TrainConfig) -> torch.optim.AdamW:
    enc = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")]
    dec = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    enc_lr = cfg.lr if cfg.encoder_lr is None else cfg.encoder_lr
    return torch.optim.AdamW([{"params": dec, "lr": cfg.lr}, {"params": enc, "lr": enc_lr}],
                             weight_decay=cfg.weight_decay)


def train(cfg: TrainConfig, on_step: Optional[Callable[[int, dict], None]] = None) -> dict:
    """Train (or continue training) a RoMa model; returns a summary dict.

    ``on_step(step, parts)`` is called after every optimizer step (``step`` = steps done so far).
    """
    with torch_threads(max(cfg.threads, 0)):
        return _train(cfg, on_step)


@writes_into(lambda cfg, *args, **kwargs: cfg.out_dir)  # one training per out_dir (roma_sfm.lock)
def _train(cfg: TrainConfig, on_step: Optional[Callable[[int, dict], None]]) -> dict:
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    H, W = cfg.resolution
    if H % 56 or W % 56:
        raise ValueError(f"resolution must be multiples of 56 (patch 14 and stride 8), got {cfg.resolution}")
    device = _device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    loss_cfg = LossConfig(**cfg.loss)

    model = build_model(cfg).to(device)
    model.train()
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start, elapsed = 0, 0.0
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
        prior = dict(ck.get("prior", _no_prior()))
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        prior = _no_prior()
        if cfg.init_from:
            model.load_state_dict(load_weights(cfg.init_from))
            prior = prior_training(cfg.init_from)
    _remove_stale_tmp(out_dir)
    _atomic_write_text(out_dir / "train_config.json", json.dumps(cfg.to_dict(), indent=2))

    def checkpoint(step: int) -> None:
        atomic_save({
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "elapsed": elapsed + time.perf_counter() - t0,
            "rng": get_rng_state(), "train_cfg": cfg.to_dict(), "model_cfg": model.cfg.to_dict(),
            "prior": prior,
        }, last)

    synth = SyntheticPairs(cfg.train_roots, cfg.resolution, seed=cfg.seed, length=cfg.steps * cfg.batch_size,
                           cfg=SynthConfig(**cfg.synth))
    base = synth
    if cfg.p_scene > 0:
        scenes = ScenePairs(cfg.scene_roots or cfg.train_roots, cfg.resolution, seed=cfg.seed + 7_777_777,
                            cfg=SceneConfig(**cfg.scenes))
        base = MixedPairs(synth, scenes, cfg.p_scene, cfg.seed + 1)
    depth = DepthPairs(cfg.depth_index, cfg.resolution) if cfg.depth_index else None
    dataset = MixedPairs(base, depth, cfg.p_depth, cfg.seed)
    if cfg.track_indexes and cfg.p_tracks > 0:
        tracks = TrackPairs(cfg.track_indexes, cfg.resolution, seed=cfg.seed + 3_333_333)
        dataset = MixedPairs(dataset, tracks, cfg.p_tracks, cfg.seed + 2)
    loader = DataLoader(dataset, batch_sampler=StepBatches(start, cfg.steps, cfg.batch_size),
                        num_workers=cfg.num_workers, collate_fn=collate, worker_init_fn=_worker_init,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    validator = Validator(cfg, loss_cfg) if cfg.val_root else None

    scales = sorted(model.cfg.refiners, reverse=True)
    loss_cols = ["total", "cls", "gm_cert"] + [f"reg{s}" for s in scales] + [f"cert{s}" for s in scales]
    log = _CsvLog(out_dir / "log.csv", ["step", "time", "lr"] + loss_cols, start if resumed else None)
    val_log = _CsvLog(out_dir / "val.csv", ["step", "time", "pck@1", "pck@3", "pck@5", "loss"],
                      start if resumed else None)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    live = cfg.progress and console.is_terminal
    progress = Progress(TextColumn("[bold]{task.completed}/{task.total}"), BarColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console, disable=not live)
    task = progress.add_task("train", total=cfg.steps, completed=start, info="")
    console.print(f"[bold]training[/] {model.cfg.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
                  f"params) on {device}, {cfg.resolution[0]}x{cfg.resolution[1]}, batch {cfg.batch_size}, "
                  f"steps {start} -> {cfg.steps}{' (resumed)' if resumed else ''}, out {out_dir}")

    t0 = time.perf_counter()
    t_win, n_win = time.perf_counter(), 0
    running: dict[str, float] = {}
    val_res: dict[str, float] = {}
    step, parts = start, {}
    skipped = 0
    stopped_by: Optional[int] = None
    with _StopFlag() as stop, progress:
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                corresps = model(batch["im_A"], batch["im_B"])
            loss, parts = roma_loss(corresps, batch["warp"], batch["mask"], loss_cfg, batch.get("dense"))
            if "kpts_valid" in batch and batch["kpts_valid"].any():
                sp, sp_parts = sparse_loss(corresps, batch["kpts_A"], batch["kpts_B"], batch["kpts_valid"],
                                           cfg.resolution, loss_cfg)
                loss = loss + sp
                parts = {**parts, **sp_parts, "total": float(loss.detach())}
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
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
                val_res = validator(model, device)
                val_log.write({"step": step, "time": elapsed + time.perf_counter() - t0, **val_res})
                console.print(f"[cyan]val @ {step}[/] " + " ".join(f"{k} {v:.4f}" for k, v in val_res.items()),
                              highlight=False)
            if stop.signum is not None:
                stopped_by = stop.signum
                break
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                checkpoint(step)
        if stopped_by is not None:
            checkpoint(step)
            console.print(f"[yellow]stopped by signal {stopped_by} at step {step}; checkpoint {last}[/]")
    if stopped_by is None and validator and step == cfg.steps and not (cfg.val_every and step % cfg.val_every == 0):
        val_res = validator(model, device)
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
                   help="only export a checkpoint's weights to .safetensors and exit")
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
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    for k in ("train_roots", "scene_roots", "track_indexes", "resolution"):
        if k in values:
            values[k] = tuple(values[k])
    return TrainConfig(**values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: ``main(["--steps", "1000", ...])``; see :class:`TrainConfig`."""
    args = _parser().parse_args(argv)
    if args.export:
        export_weights(*args.export)
        return 0
    res = train(config_from_args(argv))
    print(json.dumps({k: v for k, v in res.items() if k != "last_losses"}, default=str))
    return 0 if res["finished"] or res["stopped_by"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
