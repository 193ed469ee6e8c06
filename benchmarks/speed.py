"""Seconds per pair for each preset (random weights: timing does not depend on them).

    python benchmarks/speed.py [--repeats 3] [--write-readme] [--skip-full] [--compile]

Rows: the paper preset at 560 px one direction single pass (the issue's target setting), the
paper preset with the reference defaults (560 + 864 upsampling, symmetric), and the compact
preset at `load_matcher()`'s and at the pipeline's default settings. Images are 768x512 (the evaluation scenes' size), matched through
Matcher.match, i.e. including resizing and normalisation.

``--compile`` instead times the compact preset's rows eager and with its encoder and decoder under
``torch.compile`` (the first call, which compiles, timed on its own; inductor's on-disk cache makes a
second process faster), the "faster CPU inference" lever the pipeline does not take by default.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from readme import TARGET, publish

from roma_sfm import random_matcher
from roma_sfm.models.dinov2 import DinoVisionTransformer
from roma_sfm.models.roma import RoMa
from roma_sfm.presets import get_preset

ROWS = [
    ("roma-tiny", "`load_matcher()` default (448 px, one direction, single pass)", {}),
    ("roma-tiny", "pipeline default (448 + second pass at 672, one direction)", dict(upsample_res=True)),
    ("roma-outdoor", "560 px, one direction, single pass", dict(symmetric=False, upsample_res=None)),
    ("roma-outdoor", "reference defaults (560 + 864, symmetric)", dict(symmetric=True, upsample_res=True)),
]


def time_row(preset: str, kwargs: dict, repeats: int, compiled: bool = False) -> tuple[float, float, float]:
    """Mean and std of the seconds per pair after a warm-up, and the warm-up's own seconds."""
    m = random_matcher(preset, device="cpu", **kwargs)
    if compiled:
        m.model.encoder = torch.compile(m.model.encoder, dynamic=False)
        m.model.decoder = torch.compile(m.model.decoder, dynamic=False)
    rng = np.random.default_rng(0)
    a = (rng.random((512, 768, 3)) * 255).astype(np.uint8)
    b = (rng.random((512, 768, 3)) * 255).astype(np.uint8)
    t = time.perf_counter()
    m.match(a, b)  # warm-up
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        m.match(a, b)
        times.append(time.perf_counter() - t)
    return float(np.mean(times)), float(np.std(times)), first


def compile_table(repeats: int, threads: int) -> list[str]:
    lines = ["| preset | setting | eager s / pair | `torch.compile` s / pair | its first call (compiles) |",
             "|---|---|---|---|---|"]
    for preset, setting, kw in ROWS:
        if preset != "roma-tiny":
            continue
        eager, _, _ = time_row(preset, kw, repeats)
        comp, _, first = time_row(preset, kw, repeats, compiled=True)
        lines.append(f"| {preset} | {setting} | {eager:.2f} | {comp:.2f} ({comp / eager - 1:+.0%}) | {first:.0f} s |")
        print(lines[-1], flush=True)
    lines += ["", f"Measured with `python benchmarks/speed.py --compile` on {threads} CPU threads, torch "
              f"{torch.__version__}, fp32, 768x512 images, {repeats} repeats after the compiling call."]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true", help="skip the slow reference-defaults row")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--compile", action="store_true", help="time roma-tiny eager and under torch.compile")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.compile:
        publish("speed-compile", compile_table(args.repeats, args.threads), TARGET if args.write_readme else None)
        return
    lines = ["| preset | setting | s / pair (mean ± std) | parameters |", "|---|---|---|---|"]
    for preset, setting, kw in ROWS:
        if args.skip_full and kw.get("upsample_res") is True:
            continue
        mean, std, _ = time_row(preset, kw, args.repeats)
        with torch.device("meta"):
            n = sum(p.numel() for p in RoMa(get_preset(preset)).parameters())
        lines.append(f"| {preset} | {setting} | {mean:.2f} ± {std:.2f} | {n / 1e6:.1f} M |")
        print(lines[-1], flush=True)
    # the floor of the paper model: its frozen ViT-L/14 on the two 560x560 images alone
    cfg = get_preset("roma-outdoor")
    vit = DinoVisionTransformer(cfg.vit_dim, cfg.vit_depth, cfg.vit_heads, cfg.vit_mlp_ratio).eval()
    x = torch.randn(2, 3, 560, 560)
    with torch.inference_mode():
        vit(x)
        t = time.perf_counter()
        vit(x)
        t_vit = time.perf_counter() - t
    gflop = 2 * 2 * 24 * 1601 * (12 * 1024**2 + 2 * 1601 * 1024) / 1e9
    lines.append(f"| (DINOv2 ViT-L/14 alone) | both 560x560 images, {gflop:.0f} GFLOP | {t_vit:.2f} | 304.4 M |")
    print(lines[-1], flush=True)
    cpu = platform.processor() or platform.machine()
    lines.append("")
    lines.append(f"Measured with `python benchmarks/speed.py` on {args.threads} CPU threads ({cpu}), "
                 f"torch {torch.__version__}, fp32, 768x512 images, {args.repeats} repeats after a warm-up.")
    publish("speed-table", lines, TARGET if args.write_readme else None)


if __name__ == "__main__":
    main()
