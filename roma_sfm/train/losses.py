"""RoMa training losses (paper Sec. 3.5): coarse regression-by-classification + robust fine regression.

Conventions (shared with the model): warps are normalised (x, y) coordinates in image B, pixel
centres at -1 + (2i + 1) / W, i.e. :func:`roma_sfm.models.gp.pixel_grid`.

Ground truth is given once, at full resolution: ``warp`` (B,H,W,2) and ``mask`` (B,H,W) in [0, 1].
It is brought to each scale's grid by *bilinear sampling at that grid's pixel centres* (the model
predicts the warp of exactly those points); the mask is sampled the same way and used as a soft
target for the certainty BCE, while classification / regression only use pixels whose sampled mask
is > 0.99, i.e. whose whole bilinear footprint is covisible (no supervision across occlusion or
image borders).

Robust regression: generalized Charbonnier with a = 0.5 on the end-point error in normalised
coordinates, cs = c * scale. Default c = 1e-4 (what the reference trains with): for errors above
~cs the loss is ~sqrt(epe), so c only moves the sub-pixel transition to a quadratic bowl.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from ..models.gp import pixel_grid


@dataclass(frozen=True)
class LossConfig:
    alpha: float = 0.5  # generalized Charbonnier exponent a
    c: float = 1e-4  # robust scale in normalised coordinates, multiplied by the scale
    ce_weight: float = 0.01  # weight of every certainty / matchability BCE
    # scales <= 8 supervise only pixels whose incoming error (flow_pre_delta) is below
    # local_dist[s] pixels *of that scale*, i.e. local_dist[s] * s full-resolution pixels
    local_dist: dict = field(default_factory=lambda: {8: 8.0, 4: 8.0, 2: 4.0, 1: 4.0})
    valid_threshold: float = 0.99  # sampled mask above this = covisible


def resample_gt(warp: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution GT -> a coarser grid by bilinear sampling at that grid's pixel centres.

    warp: (B,H,W,2) normalised, mask: (B,H,W) -> warp (B,h,w,2), mask (B,h,w) (soft, in [0,1]).
    """
    b = warp.shape[0]
    h, w = size
    if warp.shape[1:3] == (h, w):
        return warp.float(), mask.float()
    grid = pixel_grid(h, w, warp.device)[None].expand(b, h, w, 2)
    w_s = F.grid_sample(warp.permute(0, 3, 1, 2).float(), grid, mode="bilinear", align_corners=False,
                        padding_mode="border")
    m_s = F.grid_sample(mask[:, None].float(), grid, mode="bilinear", align_corners=False,
                        padding_mode="zeros")
    return w_s.permute(0, 2, 3, 1), m_s[:, 0]


def nearest_anchor(warp: torch.Tensor, res: int = 64) -> torch.Tensor:
    """Index (row * res + col) of the anchor nearest each target. warp: (...,2) -> (...) long.

    Anchor centres are linspace(-1 + 1/res, 1 - 1/res, res): the nearest one to x is
    floor((x + 1) * res / 2), clamped to the grid (targets outside B are never supervised).
    """
    ij = torch.floor((warp.float() + 1) * (res / 2)).long().clamp(0, res - 1)
    return ij[..., 1] * res + ij[..., 0]


def charbonnier(epe: torch.Tensor, cs: float, alpha: float = 0.5) -> torch.Tensor:
    """Generalized Charbonnier cs^a * ((epe / cs)^2 + 1)^(a/2), elementwise."""
    return cs**alpha * ((epe / cs) ** 2 + 1) ** (alpha / 2)


def _masked_mean(x: torch.Tensor, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of x over m; an empty mask gives a graph-connected zero (keeps backward uniform)."""
    if m.any():
        return x[m].mean()
    return like.sum() * 0.0


def sample_bce(logit: torch.Tensor, target: torch.Tensor, dense: Optional[torch.Tensor]) -> torch.Tensor:
    """BCE over all pixels, or, with per-sample weights ``dense`` (B,), only over the samples that
    carry a dense ground truth (sparse samples know nothing of the pixels between their points)."""
    if dense is None:
        return F.binary_cross_entropy_with_logits(logit, target)
    per = F.binary_cross_entropy_with_logits(logit, target, reduction="none").flatten(1).mean(1)
    return (per * dense).sum() / dense.sum().clamp(min=1.0)


def coarse_loss(gm_cls: torch.Tensor, gm_certainty: torch.Tensor, warp: torch.Tensor, mask: torch.Tensor,
                cfg: LossConfig = LossConfig(), dense: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Anchor classification + matchability BCE at the coarse scale.

    gm_cls: (B,R*R,h,w) anchor logits, gm_certainty: (B,1,h,w) logit; warp (B,h,w,2), mask (B,h,w)
    already at the coarse grid. Returns {"cls": CE over covisible pixels, "gm_cert": BCE}.
    """
    res = round(gm_cls.shape[1] ** 0.5)
    target = nearest_anchor(warp, res)
    ce = F.cross_entropy(gm_cls.float(), target, reduction="none")  # (B,h,w)
    valid = mask > cfg.valid_threshold
    cert = sample_bce(gm_certainty[:, 0].float(), mask, dense)
    return {"cls": _masked_mean(ce, valid, gm_cls), "gm_cert": cert}


def fine_loss(flow: torch.Tensor, certainty: torch.Tensor, warp: torch.Tensor, weight: torch.Tensor,
              scale: int, cfg: LossConfig = LossConfig(), dense: Optional[torch.Tensor] = None
              ) -> dict[str, torch.Tensor]:
    """Robust regression + certainty BCE at one refiner scale.

    flow: (B,2,h,w), certainty: (B,1,h,w) logit, warp: (B,h,w,2), weight: (B,h,w) soft target
    (covisibility, already restricted to the local window). Returns {"reg": ..., "cert": ...}.
    """
    epe = (flow.float().permute(0, 2, 3, 1) - warp).norm(dim=-1)
    reg = charbonnier(epe, cfg.c * scale, cfg.alpha)
    cert = sample_bce(certainty[:, 0].float(), weight, dense)
    return {"reg": _masked_mean(reg, weight > cfg.valid_threshold, flow), "cert": cert}


def pixel_epe(flow: torch.Tensor, warp: torch.Tensor, full_size: tuple[int, int]) -> torch.Tensor:
    """End-point error in full-resolution pixels. flow: (B,2,h,w), warp (B,h,w,2) -> (B,h,w)."""
    H, W = full_size
    d = flow.float().permute(0, 2, 3, 1) - warp
    return torch.hypot(d[..., 0] * (W / 2), d[..., 1] * (H / 2))


def roma_loss(corresps: dict[int, dict[str, torch.Tensor]], warp: torch.Tensor, mask: torch.Tensor,
              cfg: LossConfig = LossConfig(), dense: Optional[torch.Tensor] = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_coarse + L_fine over all scales of the model output.

    corresps: model output (see :class:`roma_sfm.models.roma.RoMa`); warp: (B,H,W,2) normalised GT
    A->B at the input resolution; mask: (B,H,W) covisibility in {0,1} (or soft); dense: (B,) 1 for
    the samples whose warp and mask are real (None: all), 0 for samples with sparse GT only.
    Returns the total loss and detached float parts for logging.
    """
    full = warp.shape[1:3]
    total = warp.new_zeros(())
    parts: dict[str, float] = {}
    for s in sorted(corresps, reverse=True):
        out = corresps[s]
        w_s, m_s = resample_gt(warp, mask, out["flow"].shape[-2:])
        if "gm_cls" in out:
            c = coarse_loss(out["gm_cls"], out["gm_certainty"], w_s, m_s, cfg, dense)
            total = total + c["cls"] + cfg.ce_weight * c["gm_cert"]
            parts["cls"] = float(c["cls"].detach())
            parts["gm_cert"] = float(c["gm_cert"].detach())
        weight = m_s
        if s in cfg.local_dist and "flow_pre_delta" in out:
            # only refine where the previous stage already landed within the refiner's reach
            prev = pixel_epe(out["flow_pre_delta"].detach(), w_s, full)
            weight = m_s * (prev < cfg.local_dist[s] * s).float()
        f = fine_loss(out["flow"], out["certainty"], w_s, weight, s, cfg, dense)
        total = total + f["reg"] + cfg.ce_weight * f["cert"]
        parts[f"reg{s}"] = float(f["reg"].detach())
        parts[f"cert{s}"] = float(f["cert"].detach())
    parts["total"] = float(total.detach())
    return total, parts


def at_points(x: torch.Tensor, kpts: torch.Tensor) -> torch.Tensor:
    """Bilinear values of a map at normalised points. x: (B,C,h,w), kpts: (B,K,2) -> (B,K,C)."""
    out = F.grid_sample(x.float(), kpts[:, None].float(), mode="bilinear", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


def sparse_loss(corresps: dict[int, dict[str, torch.Tensor]], kpts_A: torch.Tensor, kpts_B: torch.Tensor,
                valid: torch.Tensor, full_size: tuple[int, int], cfg: LossConfig = LossConfig()
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's losses sampled at known correspondences (e.g. the tracks of a reconstruction).

    kpts_A, kpts_B: (B,K,2) normalised, valid: (B,K) bool, full_size: (H, W) of the input. At every
    scale: anchor classification (coarse), robust regression inside the refiner's local window and
    a certainty BCE whose target is that window (points the previous stage missed are negatives).
    """
    total = kpts_A.new_zeros(())
    parts: dict[str, float] = {}
    H, W = full_size
    half = kpts_A.new_tensor([W / 2, H / 2])
    for s in sorted(corresps, reverse=True):
        out = corresps[s]
        if "gm_cls" in out:
            res = round(out["gm_cls"].shape[1] ** 0.5)
            ce = F.cross_entropy(at_points(out["gm_cls"], kpts_A).transpose(1, 2), nearest_anchor(kpts_B, res),
                                 reduction="none")
            bce = F.binary_cross_entropy_with_logits(at_points(out["gm_certainty"], kpts_A)[..., 0],
                                                     torch.ones_like(ce), reduction="none")
            cls, gm_cert = _masked_mean(ce, valid, ce), _masked_mean(bce, valid, bce)
            total = total + cls + cfg.ce_weight * gm_cert
            parts["sp_cls"] = float(cls.detach())
        near = valid
        if s in cfg.local_dist and "flow_pre_delta" in out:
            prev = ((at_points(out["flow_pre_delta"].detach(), kpts_A) - kpts_B) * half).norm(dim=-1)
            near = valid & (prev < cfg.local_dist[s] * s)
        epe = (at_points(out["flow"], kpts_A) - kpts_B).norm(dim=-1)
        reg = _masked_mean(charbonnier(epe, cfg.c * s, cfg.alpha), near, epe)
        bce = F.binary_cross_entropy_with_logits(at_points(out["certainty"], kpts_A)[..., 0], near.float(),
                                                 reduction="none")
        total = total + reg + cfg.ce_weight * _masked_mean(bce, valid, bce)
        parts[f"sp_reg{s}"] = float(reg.detach())
    parts["sp_total"] = float(total.detach())
    return total, parts


@torch.no_grad()
def pck(flow: torch.Tensor, warp: torch.Tensor, mask: torch.Tensor, thresholds=(1.0, 3.0, 5.0)
        ) -> dict[str, float]:
    """Percentage of covisible pixels whose warp error is below each threshold (full-res pixels).

    flow: (B,2,H,W) finest prediction, warp: (B,H,W,2), mask: (B,H,W).
    """
    epe = pixel_epe(flow, warp.float(), warp.shape[1:3])
    valid = mask > 0.5
    e = epe[valid]
    if e.numel() == 0:
        return {f"pck@{t:g}": float("nan") for t in thresholds}
    return {f"pck@{t:g}": float((e < t).float().mean()) for t in thresholds}
