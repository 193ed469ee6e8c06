"""Seconds per pair for each preset (random weights: timing does not depend on them).

    python benchmarks/speed.py [--repeats 3] [--write-readme] [--skip-full] [--compile]

Rows: the paper preset at 560 px one direction single pass (the issue's target setting), the
paper preset with the reference defaults (560 + 864 upsampling, symmetric), and the compact
preset at `load_matcher()`'s and at the pipeline's default settings. Images are 768x512 (the evaluation scenes' size), matched through
Matcher.match, i.e. including resizing and normalisation.

``--onnx`` times the compact preset's convolutional parts (the VGG pyramid on both images, the
refiners' convolution stacks) in PyTorch and in ONNX Runtime (an optional package), at both passes'
sizes, and what a pair would take with them swapped: the "ONNX Runtime" lever, measured, not taken.

``--compile`` instead times the compact preset's rows eager and with its encoder and decoder under
``torch.compile`` (the first call, which compiles, timed on its own; inductor's on-disk cache makes a
second process faster), the "faster CPU inference" lever the pipeline does not take by default.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from readme import TARGET, publish

from roma_sfm import random_matcher
from roma_sfm.models.dinov2 import DinoVisionTransformer
from roma_sfm.models.refiner import ConvRefiner
from roma_sfm.models.roma import RoMa
from roma_sfm.presets import get_preset

ROWS = [
    ("roma-tiny", "`load_matcher()` default (448 px, one direction, single pass)", {}),
    ("roma-tiny", "pipeline default (448 + second pass at 672, one direction)", dict(upsample_res=True)),
    ("roma-outdoor", "560 px, one direction, single pass", dict(symmetric=False, upsample_res=None)),
    ("roma-outdoor", "reference defaults (560 + 864, symmetric)", dict(symmetric=True, upsample_res=True)),
]


def timings(fn, repeats: int) -> tuple[list[float], float]:
    """Seconds of ``repeats`` calls of ``fn()`` after a warm-up call, and the warm-up's own seconds."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times, first


def median_time(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    return float(np.median(timings(fn, repeats)[0]))


def time_row(preset: str, kwargs: dict, repeats: int, compiled: bool = False,
             band_bytes: Optional[int] = None) -> tuple[float, float, float]:
    """Mean and std of the seconds per pair after a warm-up, and the warm-up's own seconds.

    ``band_bytes``: the refiners' band size instead of the default (a huge value: no bands).
    """
    m = random_matcher(preset, device="cpu", **kwargs)
    if band_bytes is not None:
        for module in m.model.modules():
            if isinstance(module, ConvRefiner):
                module.band_bytes = band_bytes
    if compiled:
        m.model.encoder = torch.compile(m.model.encoder, dynamic=False)
        m.model.decoder = torch.compile(m.model.decoder, dynamic=False)
    rng = np.random.default_rng(0)
    a = (rng.random((512, 768, 3)) * 255).astype(np.uint8)
    b = (rng.random((512, 768, 3)) * 255).astype(np.uint8)
    times, first = timings(lambda: m.match(a, b), repeats)
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


class ConvStack(torch.nn.Module):
    """A refiner's convolutions (:meth:`ConvRefiner.convs`) as a module to export."""

    def __init__(self, refiner: ConvRefiner):
        super().__init__()
        self.refiner = refiner

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return self.refiner.convs(d)


class Pyramid(torch.nn.Module):
    """The VGG pyramid with a tuple output (ONNX export takes no dict)."""

    def __init__(self, cnn: torch.nn.Module):
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.cnn(x)
        return tuple(feats[s] for s in sorted(feats))


def onnx_table(repeats: int, threads: int) -> list[str]:
    """PyTorch against ONNX Runtime on roma-tiny's convolutional parts at the pipeline's default sizes."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed (pip install onnxruntime onnx): nothing to compare")
        return []
    m = random_matcher("roma-tiny", device="cpu", upsample_res=True)
    model = m.model
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    parts = []
    for name, (h, w) in (("first pass", m.coarse_res), ("second pass", m.upsample_res)):
        parts.append((f"{name}: VGG pyramid, both images", Pyramid(model.encoder.cnn), torch.randn(2, 3, h, w)))
        for s in sorted((int(k) for k in model.decoder.conv_refiner), reverse=True):
            if name == "second pass" and s == 16:
                continue  # the second pass starts at stride 8
            r = model.decoder.conv_refiner[str(s)]
            x = torch.randn(1, r.block1[0].in_channels, h // s, w // s)
            parts.append((f"{name}: refiner {s} convolutions", ConvStack(r), x))
    lines = ["| part | input | PyTorch ms | ONNX Runtime ms | speed-up | max abs difference |",
             "|---|---|---|---|---|---|"]
    total_pt = total_ort = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, module, x) in enumerate(parts):
            path = Path(tmp) / f"part{i}.onnx"
            torch.onnx.export(module, (x,), str(path), opset_version=18, dynamo=False)
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x.numpy()}
            xc = x.contiguous(memory_format=torch.channels_last)  # as the model runs them
            with torch.inference_mode():
                t_pt = median_time(lambda: module(xc), repeats)
                ref = module(xc)
            t_ort = median_time(lambda: sess.run(None, feed), repeats)
            ref = ref if isinstance(ref, tuple) else (ref,)
            diff = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(sess.run(None, feed), ref))
            total_pt, total_ort = total_pt + t_pt, total_ort + t_ort
            lines.append(f"| {name} | {tuple(x.shape)} | {t_pt * 1e3:.1f} | {t_ort * 1e3:.1f} | "
                         f"{t_pt / t_ort:.2f}x | {diff:.1e} |")
            print(lines[-1], flush=True)
    pair, _, _ = time_row("roma-tiny", dict(upsample_res=True), repeats, band_bytes=1 << 62)
    banded, _, _ = time_row("roma-tiny", dict(upsample_res=True), repeats)
    lines.append(f"| all of the above | | {total_pt * 1e3:.0f} | {total_ort * 1e3:.0f} | "
                 f"{total_pt / total_ort:.2f}x | |")
    lines += ["", f"A whole pair at the pipeline default (448 + 672, one direction), its refiners without row bands, "
              f"takes {pair:.2f} s in PyTorch, of which these parts are {total_pt / pair:.0%}; with them in ONNX "
              f"Runtime it would take {pair - total_pt + total_ort:.2f} s ({(total_ort - total_pt) / pair:+.0%}). "
              f"With the refiners' row bands (the default) it takes {banded:.2f} s ({banded / pair - 1:+.0%}). "
              f"Measured with `python "
              f"benchmarks/speed.py --onnx` on {threads} CPU threads, torch {torch.__version__}, onnxruntime "
              f"{ort.__version__}, fp32, random weights, median of {repeats} after a warm-up."]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-full", action="store_true", help="skip the slow reference-defaults row")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--compile", action="store_true", help="time roma-tiny eager and under torch.compile")
    ap.add_argument("--onnx", action="store_true", help="time roma-tiny's conv parts in PyTorch and ONNX Runtime")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.onnx:
        lines = onnx_table(max(args.repeats, 5), args.threads)
        if lines:
            publish("speed-onnx", lines, TARGET if args.write_readme else None)
        return
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
