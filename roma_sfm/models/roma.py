"""The RoMa model: encoders + decoder, one- or two-direction matching in one batch."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import RomaConfig
from .decoder import Decoder
from .encoders import Encoder
from .gp import pixel_grid


class RoMa(nn.Module):
    def __init__(self, cfg: RomaConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        in_dims = dict(cfg.fine_dims)
        in_dims[16] = cfg.coarse_dim
        self.decoder = Decoder(cfg, in_dims)

    def forward(self, im_A: torch.Tensor, im_B: torch.Tensor, symmetric: bool = False,
                scale_factor: Optional[float] = None, first_pass: Optional[dict] = None
                ) -> dict[int, dict[str, torch.Tensor]]:
        """im_A, im_B: (B,3,H,W) ImageNet-normalised, H,W multiples of 14.

        Both images go through the encoders as one batch. ``symmetric`` matches A->B and B->A in
        one decoder batch (outputs are (2B,...), A->B first). ``first_pass`` = the finest output
        of a previous pass makes this the high-resolution second pass (no coarse encoder).
        """
        b = im_A.shape[0]
        if scale_factor is None:
            scale_factor = math.sqrt(im_A.shape[-2] * im_A.shape[-1]) / 560
        feats = self.encode(torch.cat((im_A, im_B)), coarse=first_pass is None)
        f_A = {s: f[:b] for s, f in feats.items()}
        f_B = {s: f[b:] for s, f in feats.items()}
        return self.decode(f_A, f_B, symmetric, scale_factor, first_pass)

    def encode(self, x: torch.Tensor, coarse: bool = True) -> dict[int, torch.Tensor]:
        """(B,3,H,W) -> feature pyramid {16, 8, 4, 2, 1}; per image, so it can be cached across pairs."""
        return self.encoder(x, coarse=coarse)

    def decode(self, f_A: dict[int, torch.Tensor], f_B: dict[int, torch.Tensor], symmetric: bool = False,
               scale_factor: float = 1.0, first_pass: Optional[dict] = None, support_B: Sequence[torch.Tensor] = (),
               coarse_only: bool = False) -> dict[int, dict[str, torch.Tensor]]:
        """Pyramids of A and B (as from :meth:`encode`, batch B each) -> coarse-to-fine outputs.

        ``support_B`` (one direction only): B's coarse features at other scales, extra GP support;
        ``coarse_only``: stop after the coarse scale (see :class:`~.decoder.Decoder`).
        """
        if symmetric and support_B:
            raise ValueError("scale support is for one-direction matching")
        if symmetric:
            f_A, f_B = ({s: torch.cat((f_A[s], f_B[s])) for s in f_A},
                        {s: torch.cat((f_B[s], f_A[s])) for s in f_A})
        kw = {}
        if first_pass is not None:
            kw = dict(flow=first_pass["flow"], certainty=first_pass["certainty"])
        return self.decoder(f_A, f_B, scale_factor=scale_factor, support_B=support_B, coarse_only=coarse_only, **kw)


def finalize(corresps: dict, size: tuple[int, int], attenuate: bool = True,
             coarse_certainty: Optional[torch.Tensor] = None, symmetric: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder outputs -> (warp (B,H,W,4), certainty (B,H,W)) with the reference semantics.

    Certainty = sigmoid(finest logit - 0.5 * min(coarse logit, 0)); pixels whose warp leaves
    [-1,1] get certainty 0 and the warp is clamped. Symmetric: (B,H,2W,4), left half A->B,
    right half B->A. The finest scale present is used (the coarse one of a ``coarse_only`` decode).
    """
    h, w = size
    flow = corresps[min(corresps)]["flow"]
    logit = corresps[min(corresps)]["certainty"]
    if flow.shape[-2:] != (h, w):
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        logit = F.interpolate(logit, size=(h, w), mode="bilinear", align_corners=False)
    if attenuate:
        low = coarse_certainty if coarse_certainty is not None else corresps[16]["certainty"]
        low = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        logit = logit - 0.5 * low * (low < 0)
    cert = logit.float().sigmoid()[:, 0]
    flow = flow.float().permute(0, 2, 3, 1)
    cert = cert.masked_fill((flow.abs() > 1).any(dim=-1), 0.0)
    flow = flow.clamp(-1, 1)
    grid = pixel_grid(h, w, flow.device)[None].expand(flow.shape[0], h, w, 2)
    if symmetric:
        a2b, b2a = flow.chunk(2)
        g = grid[: a2b.shape[0]]
        warp = torch.cat((torch.cat((g, a2b), dim=-1), torch.cat((b2a, g), dim=-1)), dim=2)
        cert = torch.cat(cert.chunk(2), dim=2)
    else:
        warp = torch.cat((grid, flow), dim=-1)
    return warp, cert
