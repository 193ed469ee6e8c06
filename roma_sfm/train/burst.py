"""A time-boxed training burst on a borrowed GPU machine, prepared and tested here on the CPU.

Such a machine comes for minutes, bare, with a size limit on what travels to it. So the burst is
two steps: ``pack`` re-encodes the training photos (same pixel sizes, smaller JPEGs) and the track
indexes into one folder that travels with the checkout; ``run``, there, measures how fast it
trains (data included), sizes a cosine schedule to the seconds it has, trains from given weights
with a large batch under autocast (bf16 on CUDA), and writes the moving average and the raw
weights as fp16 safetensors for judging on the CPU benchmarks (docs/design/gpu-burst.md).

    python -m roma_sfm.train.burst pack .burst --data ../shared/data/train --tracks runs/tracks/*.npz
    python3 -m roma_sfm.train.burst run .burst --init-from roma_sfm/weights/roma_tiny.safetensors \\
        --seconds 420 --out "$OUT"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from .checkpoints import export_weights
from .data import check_training_path
from .trainer import TrainConfig, train

# The burst's recipe (TrainConfig fields; data roots come from the pack): the mix of the shipped
# soup's members (run 13: rendered scenes, real tracks, run 4's 2-D warps) at a GPU's batch size.
RECIPE: dict = {
    "resolution": (336, 336), "batch_size": 32, "lr": 2e-4, "warmup_steps": 50, "decay": "cosine",
    "p_scene": 0.6, "p_tracks": 0.2,
    "synth": {"neg_prob": 0.15, "rot_rel": 45, "scale_rel": [0.4, 2.5], "perspective": 0.18},
    "lr_scale": {"encoder.conv_coarse.context": 10}, "ema_decay": 0.998, "precision": "auto",
    "ckpt_every": 200, "log_every": 20, "progress": False,
}
# the pack's layout: photo folders (relative to the pack) for each role
TRAIN_FOLDERS = ("bsds500/train", "bsds500/test")
VAL_FOLDER = "bsds500/val"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JPEG_QUALITY = 85
# share of the time left after the probe that the schedule is sized to (the rest: validation, export,
# a slower stretch); the trainer's max_seconds stops it on time regardless
SCHEDULE_SHARE = 0.85


def pack(dest: Path, data: Path, tracks: Sequence[Path], quality: int = JPEG_QUALITY) -> dict:
    """Copy the training photos of ``data`` (the shared ``train`` folder: bsds500/..., multiview/...)
    into ``dest`` as JPEGs of ``quality`` at their own size, and the track indexes into
    ``dest/tracks`` pointing at the copies. Returns {"images", "bytes"}."""
    dest, data = Path(dest), Path(data)
    check_training_path(data)
    views = sorted(p for p in (data / "multiview").iterdir() if p.is_dir()) if (data / "multiview").is_dir() else []
    folders = [*TRAIN_FOLDERS, VAL_FOLDER] + [p.relative_to(data).as_posix() for p in views]
    count = 0
    for rel in folders:
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for src in sorted((data / rel).iterdir()):
            if src.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = cv2.imread(str(src), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"{src}: not a readable image")
            out = dest / rel / src.name  # the name stays: track indexes list the photos by name
            out.write_bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
            count += 1
    (dest / "tracks").mkdir(exist_ok=True)
    for index in tracks:
        with np.load(index, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        folder = (Path(index).parent / str(arrays["images"])).resolve()
        rel = folder.relative_to((data / "multiview").resolve()).as_posix()
        arrays["images"] = np.array(f"../multiview/{rel}")
        np.savez(dest / "tracks" / Path(index).name, **arrays)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return {"images": count, "bytes": size}


def pack_config(pack_dir: Path, **overrides) -> TrainConfig:
    """The burst's TrainConfig over a pack: ``RECIPE``, the pack's folders, then ``overrides``."""
    pack_dir = Path(pack_dir).resolve()
    roots = tuple(str(pack_dir / f) for f in TRAIN_FOLDERS)
    views = (str(pack_dir / "multiview"),) if (pack_dir / "multiview").is_dir() else ()
    values = {**RECIPE, "train_roots": roots, "scene_roots": roots + views,  # textures: photos of both kinds
              "track_indexes": tuple(str(p) for p in sorted((pack_dir / "tracks").glob("*.npz"))),
              "val_root": str(pack_dir / VAL_FOLDER) if (pack_dir / VAL_FOLDER).is_dir() else None}
    values.update(overrides)
    if not values["track_indexes"]:
        values["p_tracks"] = 0.0
    return TrainConfig(**values)


def step_rate(cfg: TrainConfig, seconds: float) -> float:
    """Optimizer steps per second of ``cfg`` on this machine, data loading included: a throwaway
    run of about ``seconds`` (its start, the workers' and the kernels' warm-up, counts against it, so
    the rate errs low and a schedule sized by it ends in time)."""
    work = tempfile.mkdtemp(prefix="roma-burst-probe-")
    try:
        res = train(dataclasses.replace(cfg, steps=10**7, max_seconds=seconds, val_root=None, out_dir=work,
                                        ckpt_every=10**7, log_every=10**7))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res["step"] / max(res["seconds"], 1e-9)


def run(pack_dir: Path, out: Path, seconds: float, init_from: Optional[str], probe_seconds: float = 20.0,
        workers: Optional[int] = None, **overrides) -> dict:
    """Train for about ``seconds`` in all (the probe included; the export, a few seconds, comes on
    top) and write ``burst-ema.safetensors``,
    ``burst-raw.safetensors`` (fp16), the logs and ``burst.json`` (the sizing and the result) to ``out``;
    the run's own folder (full checkpoint with the optimizer) is a temporary one, left behind."""
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, (os.cpu_count() or 2) - 1) if workers is None else workers
    cfg = pack_config(pack_dir, init_from=init_from, num_workers=workers,
                      out_dir=tempfile.mkdtemp(prefix="roma-burst-"), resume=False, **overrides)
    rate = step_rate(cfg, probe_seconds)
    left = seconds - (time.perf_counter() - t_start)
    steps = max(cfg.warmup_steps + 1, int(SCHEDULE_SHARE * left * rate))
    cfg = dataclasses.replace(cfg, steps=steps, max_seconds=max(left, 1.0),
                              val_every=max(1, steps // 2), ckpt_every=min(cfg.ckpt_every, steps))
    print(f"burst: {rate:.2f} steps/s of {cfg.batch_size} pairs with {workers} workers -> {steps} steps in "
          f"{left:.0f} s", flush=True)
    res = train(cfg)
    last = Path(res["checkpoint"])
    export_weights(str(last), str(out / "burst-ema.safetensors"))
    export_weights(str(last), str(out / "burst-raw.safetensors"), average=False)
    for name in ("log.csv", "val.csv", "train_config.json"):
        if (Path(cfg.out_dir) / name).exists():
            shutil.copy(Path(cfg.out_dir) / name, out / f"burst-{name}")
    summary = {"steps_per_second": rate, "workers": workers, "steps_planned": steps, "step": res["step"],
               "stopped_by": res["stopped_by"], "val": res["val"], "seconds": time.perf_counter() - t_start,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    (out / "burst.json").write_text(json.dumps(summary, indent=2, default=str))
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m roma_sfm.train.burst", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="the training data, re-encoded, into one folder that travels")
    a.add_argument("dest", type=Path)
    a.add_argument("--data", type=Path, required=True, help="the shared data's train folder")
    a.add_argument("--tracks", type=Path, nargs="*", default=[], help="track indexes (.npz) of its multiview sets")
    a.add_argument("--quality", type=int, default=JPEG_QUALITY)
    b = sub.add_parser("run", help="train for --seconds from --init-from; weights and logs into --out")
    b.add_argument("pack", type=Path)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seconds", type=float, required=True)
    b.add_argument("--init-from", default=None)
    b.add_argument("--probe-seconds", type=float, default=20.0)
    b.add_argument("--workers", type=int, default=None)
    b.add_argument("--set", type=json.loads, default={}, help="JSON object of TrainConfig fields over RECIPE")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        print(json.dumps(pack(args.dest, args.data, args.tracks, args.quality)))
        return 0
    res = run(args.pack, args.out, args.seconds, args.init_from, args.probe_seconds, args.workers, **args.set)
    print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
