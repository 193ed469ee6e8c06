"""Inference API: ``load_matcher`` -> :class:`Matcher` -> :class:`MatchResult`.

Coordinates: warps are normalised (x, y) in [-1, 1] with pixel centres at -1 + 1/W ... (the
reference convention); :meth:`MatchResult.sample` returns pixels of the ORIGINAL images with
x_px = W/2 * (x + 1), i.e. COLMAP's convention (image corner at 0, pixel centres at +0.5).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .io import IMAGENET_MEAN, IMAGENET_STD, ImageLike, as_rgb
from .models.roma import RoMa, finalize
from .presets import (BALANCED, CACHE_MB, DECODE_WORKERS, DEVICE, FIT, NUM_SAMPLES, PHOTOMETRIC, PRECISION,
                      PRECISIONS, ZOOM, ZOOM_ROUNDS, ZOOM_SUPPORT, RomaConfig, get_preset)
from .models.fuse import fuse_batchnorm
from .refine import refine_matches, to_gray, warp_jacobian
from .sampling import grid_density
from .weights import load_model, weights_fingerprint



def resolve_device(device: Union[str, torch.device] = DEVICE) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (None or 0: unchanged), then restored."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


FITS = ("stretch", "pad")


def autocast_dtype(device: torch.device, precision: str = PRECISION) -> Optional[torch.dtype]:
    """The autocast dtype of a ``precision`` (:data:`~roma_sfm.presets.PRECISIONS`) on ``device``;
    None: float32. "auto" autocasts on CUDA only (bfloat16 where supported, else float16)."""
    if check_precision(precision) == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def content_size(hw: tuple[int, int], size: tuple[int, int], fit: str = FIT) -> tuple[int, int]:
    """(h, w) the image of size ``hw`` takes inside an input of ``size`` = (h, w): all of it when
    stretched; when padded, the largest box of the image's aspect that fits (at least 1x1)."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    h, w = size
    if fit == "stretch":
        return h, w
    s = min(h / hw[0], w / hw[1])
    return max(1, min(h, round(hw[0] * s))), max(1, min(w, round(hw[1] * s)))


def content_box(hw: tuple[int, int], size: tuple[int, int], fit: str = FIT) -> tuple[float, float, float, float]:
    """Normalised (x0, y0, x1, y1) of the image inside the input (centred; (-1, -1, 1, 1) when it
    fills it)."""
    ch, cw = content_size(hw, size, fit)
    h, w = size
    x0, y0 = -1 + 2 * ((w - cw) // 2) / w, -1 + 2 * ((h - ch) // 2) / h
    return x0, y0, x0 + 2 * cw / w, y0 + 2 * ch / h


def to_tensor(rgb: np.ndarray, size: tuple[int, int], fit: str = FIT) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,h,w) ImageNet-normalised float of ``size`` = (h, w), bicubic resize.

    ``fit="pad"`` keeps the aspect: the image is centred in the input and the rest is 0 (the mean
    colour after normalisation), so two images of different aspects are not distorted differently.
    """
    ch, cw = content_size(rgb.shape[:2], size, fit)
    if rgb.shape[:2] != (ch, cw):
        rgb = np.asarray(Image.fromarray(rgb).resize((cw, ch), Image.BICUBIC))
    t = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    t = (t - mean) / std
    if (ch, cw) != tuple(size):
        top, left = (size[0] - ch) // 2, (size[1] - cw) // 2
        t = F.pad(t, (left, size[1] - cw - left, top, size[0] - ch - top))
    # plain (C,H,W) layout: the HWC strides of the decoded image would make the encoder's
    # channels-last outputs fall back to the slower default layout (~20 % of a match's time)
    return t.contiguous()


def uncrop_warp(warp: torch.Tensor, cert: torch.Tensor, box_A: Sequence[float], box_B: Sequence[float]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp (...,4) in input coordinates -> coordinates of the images themselves, given each
    image's :func:`content_box`; certainty 0 where either end lies outside its image."""
    lo = torch.tensor([box_A[0], box_A[1], box_B[0], box_B[1]], dtype=warp.dtype)
    hi = torch.tensor([box_A[2], box_A[3], box_B[2], box_B[3]], dtype=warp.dtype)
    warp = 2 * (warp - lo) / (hi - lo) - 1
    cert = cert.masked_fill((warp.abs() > 1).any(dim=-1), 0.0)
    return warp.clamp(-1, 1), cert


@dataclass
class MatchResult:
    """Dense matches of one pair. ``warp`` (H,W,4) normalised (xA,yA,xB,yB) — (H,2W,4) when
    symmetric, right half B->A — and ``certainty`` (H,W[*2]) in [0,1], on the CPU."""

    warp: torch.Tensor
    certainty: torch.Tensor
    size_A: tuple[int, int]  # (W, H) of the original image A
    size_B: tuple[int, int]
    sample_threshold: float = 0.05
    symmetric: bool = False
    box_A: tuple[float, float, float, float] = (-1.0, -1.0, 1.0, 1.0)  # A inside the warp's grid (content_box)
    # the decoded images (RGB arrays), when the matcher refines sampled matches on them (photometric)
    images: Optional[tuple[np.ndarray, np.ndarray]] = field(default=None, repr=False)

    def to_pixels(self, matches: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(N,4) normalised -> pixels of the originals, COLMAP convention: ((N,2), (N,2)) float32."""
        wa, ha = self.size_A
        wb, hb = self.size_B
        a = torch.stack((wa / 2 * (matches[:, 0] + 1), ha / 2 * (matches[:, 1] + 1)), dim=-1)
        b = torch.stack((wb / 2 * (matches[:, 2] + 1), hb / 2 * (matches[:, 3] + 1)), dim=-1)
        return a.float().numpy(), b.float().numpy()

    def sample(self, num: int = NUM_SAMPLES, balanced: bool = BALANCED, seed: Optional[int] = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw matches by certainty (reference "threshold_balanced" sampling).

        Certainties above the threshold count as 1; 4*num candidates are drawn, then ``num`` of
        them with probability 1/(1+KDE density) so matches spread over the image. With ``images``
        set, each match's B end is then refined on them (:func:`roma_sfm.refine.refine_matches`).
        Returns kpts_A (N,2), kpts_B (N,2) in original pixels (float32) and certainties (N,).
        """
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        matches = self.warp.reshape(-1, 4).float()
        cert = self.certainty.reshape(-1).float()
        weights = cert.clone()
        weights[weights > self.sample_threshold] = 1
        n_nonzero = int((weights > 0).sum())
        if n_nonzero == 0 or num <= 0:
            empty = np.zeros((0, 2), np.float32)
            return empty, empty.copy(), np.zeros((0,), np.float32)
        n_cand = min((4 if balanced else 1) * num, n_nonzero)
        idx = torch.multinomial(weights, n_cand, replacement=False, generator=gen)
        if balanced:
            density = grid_density(matches[idx], std=0.1)
            p = 1 / (density + 1)
            p[density < 10] = 1e-7  # isolated matches: almost never (they are rarely right)
            keep = torch.multinomial(p, min(num, n_cand), replacement=False, generator=gen)
            idx = idx[keep]
        ka, kb = self.to_pixels(matches[idx])
        if self.images is not None:
            jac = warp_jacobian(self.lookup, ka)
            kb, _ = refine_matches(to_gray(self.images[0]), to_gray(self.images[1]), ka, kb, jac)
        return ka, kb, cert[idx].numpy().astype(np.float32)

    def lookup(self, kpts_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Re-query the dense A->B warp at arbitrary pixel positions of A (bilinear).

        kpts_A: (N,2) pixels of original A -> kpts_B (N,2) pixels of original B, certainty (N,).
        """
        w = self.warp.shape[1] // 2 if self.symmetric else self.warp.shape[1]
        field = torch.cat((self.warp[:, :w, 2:].permute(2, 0, 1), self.certainty[None, :, :w]), dim=0)
        wa, ha = self.size_A
        k = torch.as_tensor(np.asarray(kpts_A, np.float32)).reshape(-1, 2)
        x0, y0, x1, y1 = self.box_A
        g = torch.stack((x0 + k[:, 0] / wa * (x1 - x0), y0 + k[:, 1] / ha * (y1 - y0)), dim=-1)[None, None]
        s = F.grid_sample(field[None].float(), g, mode="bilinear", align_corners=False, padding_mode="border")[0, :, 0]
        wb, hb = self.size_B
        kb = torch.stack((wb / 2 * (s[0] + 1), hb / 2 * (s[1] + 1)), dim=-1)
        cert = s[2].masked_fill((g[0, 0].abs() > 1).any(dim=-1), 0.0)  # outside the warp's grid (a zoomed crop)
        return kb.numpy().astype(np.float32), cert.numpy().astype(np.float32)


class Matcher:
    """A RoMa model plus its inference settings.

    ``fuse``: fold BatchNorm into the convolutions (:func:`fuse_batchnorm`, in place: only for a
    model the matcher owns, as in :func:`load_matcher`). ``weights_id`` fingerprints the weights
    as given, so fused and unfused matchers of one checkpoint sign their matches alike.
    """

    def __init__(self, model: RoMa, device: Union[str, torch.device] = DEVICE,
                 coarse_res: Optional[tuple[int, int]] = None, upsample_res: Optional[tuple[int, int]] = None,
                 symmetric: Optional[bool] = None, metadata: Optional[dict] = None, fuse: bool = False,
                 fit: str = FIT, zoom: float = ZOOM, precision: str = PRECISION, photometric: bool = PHOTOMETRIC):
        cfg = model.cfg
        self.cfg = cfg
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.weights_id = weights_fingerprint(self.model)
        if fuse:
            fuse_batchnorm(self.model)
        self.coarse_res = tuple(coarse_res or cfg.coarse_res)
        if self.coarse_res[0] % 14 or self.coarse_res[1] % 14:
            raise ValueError(f"coarse_res must be multiples of 14, got {self.coarse_res}")
        self.upsample_res = _pair(cfg.upsample_res if upsample_res is True else upsample_res)
        self.symmetric = cfg.symmetric if symmetric is None else bool(symmetric)
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
        self.fit = fit
        self.zoom = check_zoom(zoom)
        self.photometric = bool(photometric)
        self.metadata = metadata or {}
        self.amp_dtype = autocast_dtype(self.device, precision)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def precision(self) -> str:
        """The arithmetic the matches come from: "fp32", "bf16" or "fp16" (part of their signature)."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @torch.inference_mode()
    def match_tensors(self, im_A: torch.Tensor, im_B: torch.Tensor,
                      im_A_hr: Optional[torch.Tensor] = None, im_B_hr: Optional[torch.Tensor] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Match ImageNet-normalised (B,3,H,W) tensors, H and W multiples of 14.

        Returns ``warp`` (B,H,W,4) normalised (xA,yA,xB,yB) and ``certainty`` (B,H,W) in [0,1]
        (symmetric: (B,H,2W,4) / (B,H,2W)) — the semantics of the reference ``match(batched=True)``.
        With ``upsample_res`` set, a second pass runs at that size on ``im_A_hr``/``im_B_hr`` (or
        on the inputs resized) and the outputs have the upsampled size.
        """
        if im_A.shape != im_B.shape:
            raise ValueError(f"batched matching needs equal shapes, got {tuple(im_A.shape)} and {tuple(im_B.shape)}")
        h, w = im_A.shape[-2:]
        if h % 14 or w % 14:
            raise ValueError(f"image size must be a multiple of 14, got {h}x{w}")
        b = im_A.shape[0]
        im_A, im_B = im_A.to(self.device), im_B.to(self.device)

        def split(feats: dict) -> tuple[dict, dict]:
            return {s: f[:b] for s, f in feats.items()}, {s: f[b:] for s, f in feats.items()}

        def second_pass() -> tuple[dict, dict]:
            A_hr, B_hr = im_A_hr, im_B_hr
            if A_hr is None:
                A_hr, B_hr = (F.interpolate(x, size=self.upsample_res, mode="bicubic", align_corners=False,
                                            antialias=True) for x in (im_A, im_B))
            with self._autocast():
                return split(self.model.encode(torch.cat((A_hr, B_hr)).to(self.device), coarse=False))

        with self._autocast():
            f_A, f_B = split(self.model.encode(torch.cat((im_A, im_B))))
        return self._decode(f_A, f_B, (h, w), second_pass)

    def _decode(self, f_A: dict, f_B: dict, size: tuple[int, int],
                second_pass: Callable[[], tuple[dict, dict]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder pyramids of A and B (batch B each, coarse size ``size``) -> (warp, certainty);
        ``second_pass()`` gives the fine pyramids at ``upsample_res`` when that is set."""
        with self._autocast():
            corresps = self.model.decode(f_A, f_B, self.symmetric, math.sqrt(size[0] * size[1]) / 560)
            coarse_cert = corresps[16]["certainty"]
            if self.upsample_res:
                size = tuple(self.upsample_res)
                f_A, f_B = second_pass()
                corresps = self.model.decode(f_A, f_B, self.symmetric, math.sqrt(size[0] * size[1]) / 560,
                                             first_pass=corresps[1])
            warp, cert = finalize(corresps, size, attenuate=self.cfg.attenuate_certainty,
                                  coarse_certainty=coarse_cert, symmetric=self.symmetric)
        return warp.float(), cert.float()

    def _results(self, warp: torch.Tensor, cert: torch.Tensor, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                 size: Optional[tuple[int, int]] = None) -> list[MatchResult]:
        """Warps of input size ``size`` (default: the final pass's) -> results in the images' coordinates."""
        warp, cert = warp.cpu(), cert.cpu()
        size = size or self.upsample_res or self.coarse_res
        results = []
        for i, (a, b) in enumerate(pairs):
            box_A, box_B = content_box(a.shape[:2], size, self.fit), content_box(b.shape[:2], size, self.fit)
            w, c = uncrop_warp(warp[i], cert[i], box_A, box_B) if self.fit != "stretch" else (warp[i], cert[i])
            results.append(MatchResult(w, c, (a.shape[1], a.shape[0]), (b.shape[1], b.shape[0]),
                                       self.cfg.sample_threshold, self.symmetric, box_A))
        return results

    @torch.inference_mode()
    def _match_pairs(self, rgbs: Sequence[tuple[np.ndarray, np.ndarray]],
                     keys: Sequence[tuple[Optional[str], Optional[str]]], cache: "FeatureCache") -> list[MatchResult]:
        """Match a batch of decoded pairs; each image's features come from ``cache`` under its key."""
        def stack(side: int, hr: bool) -> dict:
            feats = [self._features(rgb[side], key[side], cache, hr) for rgb, key in zip(rgbs, keys)]
            return {s: torch.cat([f[s] for f in feats]) for s in feats[0]}

        warp, cert = self._decode(stack(0, False), stack(1, False), self.coarse_res,
                                  lambda: (stack(0, True), stack(1, True)))
        out = [self.zoom_in(r, a, b, cache, key) for r, (a, b), key in zip(self._results(warp, cert, rgbs), rgbs, keys)]
        return [replace(r, images=pair) for r, pair in zip(out, rgbs)] if self.photometric else out

    def match(self, a: ImageLike, b: ImageLike) -> MatchResult:
        """Match two images (paths, PIL images or arrays of any size, aspect, bit depth)."""
        pair = (as_rgb(a), as_rgb(b))
        return self._match_pairs([pair], [("A", "B")], FeatureCache(int(CACHE_MB * 2**20)))[0]

    @torch.inference_mode()
    def zoom_in(self, res: MatchResult, rgb_A: np.ndarray, rgb_B: np.ndarray,
                cache: Optional["FeatureCache"] = None, keys: tuple[Optional[str], Optional[str]] = (None, None),
                rounds: int = ZOOM_ROUNDS, search: bool = True) -> MatchResult:
        """Match again on the covisible crop when one image shows the other's content at least
        ``zoom`` times larger (as the matcher sees them); ``res`` itself otherwise.

        The scale comes from ``res``'s certain matches; the smaller-scale image is cropped to the
        box they cover, so the second match sees both at about one scale and with more pixels on
        the shared part. The result's coordinates are those of the full images. The uncropped
        image's features come from ``cache`` under its key when they are there. When ``res`` has
        too few certain matches to measure a scale, the box comes from :meth:`_scale_search`
        (unless ``search`` is False), and its re-match is kept only if it finds enough certain
        matches itself. A re-match that still shows a zoom is cropped again, up to ``rounds``.
        """
        if not self.zoom or res.symmetric or rounds < 1:
            return res
        cache = cache if cache is not None else FeatureCache(0)
        size = self.upsample_res or self.coarse_res
        crop = zoom_crop(res, self.zoom, size, self.fit)
        searched = search and crop is None and bool(self.support_factors) and zoom_scale(res, size, self.fit) is None
        if searched:  # the match found too little: a zoom beyond what it bridges?
            crop = self._scale_search(rgb_A, rgb_B, cache, keys)
        if crop is None:
            return res
        side, (x0, y0, x1, y1) = crop
        rgb = rgb_A if side == 0 else rgb_B
        h, w = rgb.shape[:2]
        px = (round((x0 + 1) / 2 * w), round((y0 + 1) / 2 * h), round((x1 + 1) / 2 * w), round((y1 + 1) / 2 * h))
        box = (2 * px[0] / w - 1, 2 * px[1] / h - 1, 2 * px[2] / w - 1, 2 * px[3] / h - 1)  # on whole pixels
        part = np.ascontiguousarray(rgb[px[1]:px[3], px[0]:px[2]])
        rgbs = [(part, rgb_B) if side == 0 else (rgb_A, part)]
        keys = (None, keys[1]) if side == 0 else (keys[0], None)

        def pyramids(hr: bool) -> tuple[dict, dict]:
            return tuple(self._features(rgbs[0][i], keys[i], cache, hr) for i in (0, 1))

        sub = self._results(*self._decode(*pyramids(False), self.coarse_res, lambda: pyramids(True)), rgbs)[0]
        if searched and zoom_scale(sub, size, self.fit) is None:
            return res  # the crop did not make the pair matchable: not a zoom
        if rounds > 1:  # still zoomed (a first crop from coarse matches is loose): crop the crop
            sub = self.zoom_in(sub, *rgbs[0], cache, keys, rounds - 1, search=False)
        lo = torch.tensor(box[:2], dtype=sub.warp.dtype)
        span = torch.tensor((box[2] - box[0], box[3] - box[1]), dtype=sub.warp.dtype)
        warp = sub.warp.clone()
        cols = slice(0, 2) if side == 0 else slice(2, 4)
        warp[..., cols] = lo + (warp[..., cols] + 1) / 2 * span
        box_A = sub.box_A
        if side == 0:  # A's corners (-1, 1) in the crop's coordinates, then in the grid of its warp
            b_lo, b_hi = torch.tensor(sub.box_A[:2]), torch.tensor(sub.box_A[2:])
            corners = [2 * (c - lo.double()) / span.double() - 1 for c in (-1.0, 1.0)]
            box_A = tuple(torch.cat([b_lo + (c + 1) / 2 * (b_hi - b_lo) for c in corners]).tolist())
        return MatchResult(warp, sub.certainty, res.size_A, res.size_B, res.sample_threshold, False, box_A)

    @property
    def support_factors(self) -> tuple[int, ...]:
        """Downsampling factors of the scale support: on with the zoom, for one-direction matching."""
        return ZOOM_SUPPORT if self.zoom and not self.symmetric else ()

    @torch.inference_mode()
    def _support(self, rgbs: Sequence[np.ndarray], keys: Sequence[Optional[str]], cache: "FeatureCache"
                ) -> list[torch.Tensor]:
        """Scale support of a batch of images: per factor of :attr:`support_factors`, the coarse
        features (N,C,h,w) of the images downsampled by it. The scale search's coarse match offers
        them to the GP beside the full-size features, so a part shown 2-3x smaller in the other
        image still meets a description of its own scale (the coarse features are not scale
        invariant)."""
        if not self.support_factors:
            return []
        per_image = []
        for rgb, key in zip(rgbs, keys):
            feats = cache.get((key, "support")) if key is not None else None
            if feats is None:
                with self._autocast():
                    feats = {k: self.model.encode(to_tensor(rgb, size, self.fit)[None].to(self.device))[16]
                             for k, size in zip(self.support_factors, support_sizes(self.coarse_res, self.support_factors))}
                if key is not None:
                    cache.put((key, "support"), feats)
            per_image.append(feats)
        return [torch.cat([f[k] for f in per_image]) for k in self.support_factors]

    def _scale_search(self, rgb_A: np.ndarray, rgb_B: np.ndarray, cache: "FeatureCache",
                      keys: tuple[Optional[str], Optional[str]]) -> Optional[tuple[int, tuple[float, ...]]]:
        """The crop of :func:`zoom_crop` from coarse matches with scale support, when the full match
        found too few certain matches to measure a scale (a zoom beyond what the coarse features
        bridge): A to B with B's support first, then B to A with A's support."""
        rgbs = (rgb_A, rgb_B)
        feats = [self._features(rgbs[i], keys[i], cache, False) for i in (0, 1)]
        for side in (0, 1):
            x, y = side, 1 - side  # match image x to image y, y's scale support
            with self._autocast():
                out = self.model.decode(feats[x], feats[y], False, math.sqrt(self.coarse_res[0] * self.coarse_res[1]) / 560,
                                        support_B=self._support([rgbs[y]], [keys[y]], cache), coarse_only=True)
            grid = out[16]["flow"].shape[-2:]
            warp, cert = finalize(out, grid, attenuate=False)
            coarse = self._results(warp, cert, [(rgbs[x], rgbs[y])], self.coarse_res)[0]
            crop = zoom_crop(coarse, self.zoom, self.coarse_res, self.fit)
            if crop is not None:  # its side 0 is x, 1 is y
                return (x, y)[crop[0]], crop[1]
        return None

    @torch.inference_mode()
    def _features(self, rgb: np.ndarray, key: Optional[str], cache: "FeatureCache", hr: bool) -> dict:
        """Encoder pyramid of one image (batch 1, so that it does not depend on the batch it came
        in: the same pair gives the same matches in any batch, shard or order)."""
        feats = cache.get((key, hr)) if key is not None else None
        if feats is None:
            x = to_tensor(rgb, self.upsample_res if hr else self.coarse_res, self.fit)[None].to(self.device)
            with self._autocast():
                feats = self.model.encode(x, coarse=not hr)
            if key is not None:
                cache.put((key, hr), feats)
        return feats

    def match_many(self, pairs: Iterable[tuple[ImageLike, ImageLike]], batch_size: int = 4,
                   num_workers: int = DECODE_WORKERS, cache_mb: float = CACHE_MB) -> Iterator[MatchResult]:
        """Match many pairs in batches. Yields results in input order.

        The next batch's images are decoded in ``num_workers`` threads while the model runs, and
        the encoder pyramid of every image given by path is cached (LRU, at most ``cache_mb`` MB),
        so an image that recurs in nearby pairs (retrieval and sequential pairs list each image's
        pairs together) is encoded once. Memory does not grow with the number of pairs. Results
        depend only on the pair, not on the batch or order (images are encoded one at a time).
        """
        cache = FeatureCache(int(cache_mb * 2**20))

        def load(pair):
            return as_rgb(pair[0]), as_rgb(pair[1])

        def key(x) -> Optional[str]:
            return os.fspath(x) if isinstance(x, (str, os.PathLike)) else None

        def batches():
            batch = []
            for p in pairs:
                batch.append(p)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

        def run(batch, rgbs) -> list[MatchResult]:
            return self._match_pairs(rgbs, [(key(p[0]), key(p[1])) for p in batch], cache)

        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            pending = None
            for batch in batches():
                future = (batch, [pool.submit(load, p) for p in batch])
                if pending is not None:
                    yield from run(pending[0], [f.result() for f in pending[1]])
                pending = future
            if pending is not None:
                yield from run(pending[0], [f.result() for f in pending[1]])


def check_precision(precision: str) -> str:
    """``precision`` as given; ValueError unless it is one of :data:`~roma_sfm.presets.PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def check_zoom(zoom: float) -> float:
    """``zoom`` as a float; ValueError unless it is 0 (off) or above 1."""
    if zoom and not zoom > 1:
        raise ValueError(f"zoom must be 0 (off) or above 1, not {zoom:g}")
    return float(zoom)


def support_sizes(coarse_res: tuple[int, int], factors: Sequence[int]) -> list[tuple[int, int]]:
    """Input sizes (h, w) of the scale support: ``coarse_res`` divided by each factor, on
    multiples of 14 (the coarse grid)."""
    return [tuple(max(14, round(r / k / 14) * 14) for r in coarse_res) for k in factors]


ZOOM_MIN_CERTAINTY = 0.5  # matches this certain measure the scale and the covisible box
ZOOM_MARGIN = 0.1  # the crop box grows by this share of its side on each side


def _certain_matches(res: MatchResult) -> tuple[torch.Tensor, int]:
    """The A->B matches (M,4) of certainty >= ZOOM_MIN_CERTAINTY, and how many matches there are."""
    w = res.warp.shape[1] // 2 if res.symmetric else res.warp.shape[1]
    warp = res.warp[:, :w].reshape(-1, 4).float()
    return warp[res.certainty[:, :w].reshape(-1).float() >= ZOOM_MIN_CERTAINTY], len(warp)


def zoom_scale(res: MatchResult, size: tuple[int, int], fit: str = FIT) -> Optional[float]:
    """How much larger B shows the content the two images share than A does, in the matcher's
    input ``size``: the median ratio of distances between random pairs of certain matches (input
    pixels). None when too few matches are certain to tell."""
    good, total = _certain_matches(res)
    if len(good) < 0.01 * total or len(good) < 64:
        return None
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(len(good), (2, 4096), generator=gen)
    (ha, wa), (hb, wb) = (content_size((res.size_A[1], res.size_A[0]), size, fit),
                          content_size((res.size_B[1], res.size_B[0]), size, fit))
    unit = torch.tensor((wa / 2, ha / 2, wb / 2, hb / 2))  # input pixels per normalised unit
    d = (good[idx[0]] - good[idx[1]]) * unit
    da, db = d[:, :2].norm(dim=-1), d[:, 2:].norm(dim=-1)
    ok = (da > 4) & (db > 4)
    if int(ok.sum()) < 64:
        return None
    return float((db[ok] / da[ok]).median())


def zoom_crop(res: MatchResult, zoom: float, size: tuple[int, int], fit: str = FIT
              ) -> Optional[tuple[int, tuple[float, float, float, float]]]:
    """Which image to crop, and where, for :meth:`Matcher.zoom_in`: ``(side, (x0, y0, x1, y1))``
    with side 0 (A) or 1 (B) and the box normalised in that image; None when the two images'
    content has about one scale (:func:`zoom_scale` below ``zoom``) or too few matches are certain
    to tell. The box spans the 2nd-98th percentiles of the cropped side's certain matches.
    """
    scale = zoom_scale(res, size, fit)
    if scale is None:
        return None
    if scale >= zoom:
        side = 0  # B shows A's part larger: crop A to it
    elif scale <= 1 / zoom:
        side = 1
    else:
        return None
    pts = _certain_matches(res)[0][:, 2 * side: 2 * side + 2]
    lo, hi = torch.quantile(pts, 0.02, dim=0), torch.quantile(pts, 0.98, dim=0)
    pad = ZOOM_MARGIN * (hi - lo)
    lo, hi = (lo - pad).clamp(-1, 1), (hi + pad).clamp(-1, 1)
    if bool(((hi - lo) < 0.1).any()):
        return None
    return side, (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


class FeatureCache:
    """LRU of per-image encoder pyramids bounded in bytes (tensors stay on their device)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: "OrderedDict[object, tuple[dict, int]]" = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key) -> Optional[dict]:
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return self.items[key][0]
        self.misses += 1
        return None

    def put(self, key, feats: dict) -> None:
        size = sum(f.numel() * f.element_size() for f in feats.values())
        if size > self.max_bytes:
            return
        self.items[key] = (feats, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, s) = self.items.popitem(last=False)
            self.bytes -= s


def load_matcher(name_or_path: Optional[Union[str, os.PathLike]] = None, weights=None, dinov2_weights=None,
                 coarse_res: Optional[Union[int, tuple[int, int]]] = None,
                 upsample_res: Optional[Union[int, tuple[int, int]]] = None, symmetric: Optional[bool] = None,
                 device: Union[str, torch.device] = DEVICE, fit: str = FIT, zoom: float = ZOOM,
                 precision: str = PRECISION, photometric: bool = PHOTOMETRIC) -> Matcher:
    """Load a matcher.

    ``name_or_path``: None (the project's shipped model), a preset name (``roma-outdoor`` /
    ``roma-indoor`` need the public ``weights`` and ``dinov2_weights`` files, or find them in
    $ROMA_SFM_WEIGHTS / ~/.cache/roma_sfm), a project ``.safetensors`` checkpoint, or a public
    ``.pth``. ``coarse_res`` and ``symmetric`` default to the preset's. ``upsample_res``: None runs
    the single pass at ``coarse_res``; True uses the preset's second-pass size (864 for the paper
    model); an int or (h, w) sets it. ``fit``: "stretch" resizes every image to the input size, "pad" keeps
    its aspect (letterbox, :func:`to_tensor`). ``zoom``: match again on the covisible crop when one
    image shows the other's content this many times larger (:meth:`Matcher.zoom_in`; 0: never).
    ``precision``: "auto" (autocast on CUDA), "fp32" or "bf16" (autocast on any device, :func:`autocast_dtype`).
    ``photometric``: refine each sampled match on the images (:mod:`roma_sfm.refine`).
    """
    model, meta = load_model(name_or_path, weights, dinov2_weights)
    return Matcher(model, device, _pair(coarse_res), upsample_res, symmetric, meta, fuse=True, fit=fit, zoom=zoom,
                   precision=precision, photometric=photometric)


def random_matcher(preset: Union[str, RomaConfig], device=DEVICE, seed: int = 0, **kw) -> Matcher:
    """A matcher with random weights (timing, tests)."""
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    return Matcher(RoMa(cfg), device, **{"fuse": True, **kw})


def _pair(x):
    if x is None or x is False or x == 0:
        return None
    if isinstance(x, int):
        return (x, x)
    return tuple(int(v) for v in x)
