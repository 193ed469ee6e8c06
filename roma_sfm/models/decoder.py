"""RoMa's coarse-to-fine decoder: projections, GP, Transformer anchors, refiners."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import RomaConfig
from .gp import GP
from .refiner import ConvRefiner
from .transformer import TransformerDecoder, to_warp

Pyramid = dict[int, torch.Tensor]


def projection(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out))


class Decoder(nn.Module):
    def __init__(self, cfg: RomaConfig, in_dims: dict[int, int]):
        super().__init__()
        self.cfg = cfg
        self.embedding_decoder = TransformerDecoder(cfg.dec_dim, cfg.dec_depth, cfg.dec_heads, cfg.dec_mlp_ratio,
                                                    cfg.anchor_res)
        self.gps = nn.ModuleDict({"16": GP(cfg.gp_dim, cfg.gp_temperature, cfg.gp_noise)})
        self.proj = nn.ModuleDict({str(s): projection(in_dims[s], d) for s, d in cfg.proj_dims.items()})
        self.conv_refiner = nn.ModuleDict({str(s): ConvRefiner(r) for s, r in cfg.refiners.items()})
        if cfg.second_pass_refiners:  # the second pass refines at another pixel scale than the first
            self.conv_refiner_hr = nn.ModuleDict({str(s): ConvRefiner(r) for s, r in cfg.refiners.items()
                                                  if s != 16})
        self.scales = sorted(cfg.refiners, reverse=True)  # 16, 8, 4, 2, 1

    def forward(self, f_A: Pyramid, f_B: Pyramid, scale_factor: float = 1.0,
                flow: Optional[torch.Tensor] = None, certainty: Optional[torch.Tensor] = None,
                support_B: Sequence[torch.Tensor] = (), coarse_only: bool = False
                ) -> dict[int, dict[str, torch.Tensor]]:
        """Feature pyramids of A and B -> per-scale outputs.

        Without ``flow`` the coarse scale runs the GP + Transformer; with ``flow`` / ``certainty``
        (the finest output of a first pass) only the refiners 8, 4, 2, 1 run (second pass).
        Every scale returns ``flow`` (B,2,h,w), normalised (x,y) in B, and ``certainty`` (B,1,h,w),
        the accumulated logit; the coarse scale also returns ``gm_cls`` / ``gm_certainty`` and every
        refined scale ``flow_pre_delta``, for the losses. ``support_B``: coarse (stride-16)
        features of B at other scales, extra GP support (:class:`GP`). ``coarse_only``: stop after
        the coarse scale.
        """
        second_pass = flow is not None
        scales = [s for s in self.scales if s != 16] if second_pass else self.scales
        refiners = self.conv_refiner_hr if second_pass and self.cfg.second_pass_refiners else self.conv_refiner
        h1, w1 = f_A[1].shape[-2:]
        out: dict[int, dict[str, torch.Tensor]] = {}
        if second_pass:
            size = f_A[scales[0]].shape[-2:]
            flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
            certainty = F.interpolate(certainty, size=size, mode="bilinear", align_corners=False)
        for i, s in enumerate(scales):
            out[s] = {}
            fa, fb = self.proj[str(s)](f_A[s]), self.proj[str(s)](f_B[s])
            if s == 16:
                posterior = self.gps["16"](fa, fb, [self.proj["16"](t) for t in support_B])
                cls, certainty = self.embedding_decoder(posterior, fa)
                flow = to_warp(cls).permute(0, 3, 1, 2).detach()
                out[s].update(gm_cls=cls, gm_certainty=certainty)
            out[s]["flow_pre_delta"] = flow
            delta, delta_cert = refiners[str(s)](fa, fb, flow, scale_factor)
            flow = flow + s * torch.stack((delta[:, 0] / (self.cfg.refine_init * w1),
                                           delta[:, 1] / (self.cfg.refine_init * h1)), dim=1)
            certainty = certainty + delta_cert
            out[s].update(flow=flow, certainty=certainty)
            if coarse_only:
                break
            if i + 1 < len(scales):  # stages are detached: each refiner learns from its own loss
                size = f_A[scales[i + 1]].shape[-2:]
                flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=False).detach()
                certainty = F.interpolate(certainty, size=size, mode="bilinear", align_corners=False).detach()
        return out


def seed_second_pass_refiners(state: dict[str, torch.Tensor], missing: Sequence[str]) -> dict[str, torch.Tensor]:
    """Copies of the shared refiners for the second-pass set that a model's ``state`` lacks (names in
    ``missing``), so a model grown with ``second_pass_refiners`` starts as the one it grew from."""
    shared = {k: k.replace(".conv_refiner_hr.", ".conv_refiner.", 1) for k in missing if ".conv_refiner_hr." in k}
    return {k: state[src].clone() for k, src in shared.items() if src in state}
