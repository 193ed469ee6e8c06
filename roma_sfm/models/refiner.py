"""Convolutional refiners (paper Sec. 3.4) and the local correlation they consume."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import RefinerConfig
from .gp import pixel_grid


def local_correlation(f_A: torch.Tensor, f_B: torch.Tensor, warp: torch.Tensor, radius: int,
                      chunk_bytes: int = 8 << 20) -> torch.Tensor:
    """Correlation of f_A with f_B bilinearly sampled on a (2r+1)^2 pixel window around the warp.

    f_A, f_B: (B,C,h,w); warp: (B,2,h,w) normalised coordinates in B (grid_sample convention,
    zeros outside B). Returns (B,(2r+1)^2,h,w) / sqrt(C), window index = iy*(2r+1) + ix.

    The window steps are whole pixels, so every sample's four bilinear corners lie on one
    (2r+2)^2 integer lattice around floor(warp): dot products with those lattice features, then
    the bilinear weights. Same numbers as grid_sample on the 25..225 window positions, but
    gathers contiguous channel vectors (NHWC) ~10x faster on CPU. No gradient flows into f_B.
    """
    b, c, h, w = f_A.shape
    hb, wb = f_B.shape[-2:]
    k, n = 2 * radius + 1, 2 * radius + 2
    # pixel coordinates in B (align_corners=False): u = ((x + 1) * W - 1) / 2
    u = ((warp[:, 0].float() + 1) * wb - 1) / 2
    v = ((warp[:, 1].float() + 1) * hb - 1) / 2
    u0, v0 = torch.floor(u), torch.floor(v)
    fx, fy = (u - u0).reshape(b, h * w, 1, 1), (v - v0).reshape(b, h * w, 1, 1)
    lat = torch.arange(-radius, radius + 2, device=f_A.device)
    xs = u0.long().reshape(b, h * w, 1, 1) + lat.view(1, 1, 1, n)  # (B, hw, 1, n)
    ys = v0.long().reshape(b, h * w, 1, 1) + lat.view(1, 1, n, 1)  # (B, hw, n, 1)
    valid = ((xs >= 0) & (xs < wb) & (ys >= 0) & (ys < hb)).reshape(b, h * w, n * n)
    idx = (ys.clamp(0, hb - 1) * wb + xs.clamp(0, wb - 1)).reshape(b, h * w, n * n)
    fb = f_B.detach().permute(0, 2, 3, 1).reshape(b, hb * wb, c)
    fa = f_A.permute(0, 2, 3, 1).reshape(b, h * w, c) / c**0.5
    rows = max(1, chunk_bytes // max(1, n * n * c * fb.element_size()))
    dots = []
    for i in range(b):
        parts = []
        for s in range(0, h * w, rows):
            g = fb[i][idx[i, s:s + rows].reshape(-1)].reshape(-1, n * n, c)  # (rows, n*n, C)
            parts.append(torch.einsum("pc,pkc->pk", fa[i, s:s + rows], g))
        dots.append(torch.cat(parts))
    d = (torch.stack(dots) * valid).reshape(b, h * w, n, n)
    corr = ((1 - fy) * ((1 - fx) * d[..., :-1, :-1] + fx * d[..., :-1, 1:])
            + fy * ((1 - fx) * d[..., 1:, :-1] + fx * d[..., 1:, 1:]))
    return corr.reshape(b, h, w, k * k).permute(0, 3, 1, 2).to(f_A.dtype)


def dw_block(dim: int, kernel_size: int, bn_momentum: float) -> nn.Sequential:
    """Depthwise kxk conv, BN, ReLU, 1x1 conv (keys .0, .1, .3 as in the checkpoint)."""
    return nn.Sequential(
        nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim),
        nn.BatchNorm2d(dim, momentum=bn_momentum),
        nn.ReLU(inplace=True),
        nn.Conv2d(dim, dim, 1),
    )


BAND_BYTES = 8 << 20  # inference refines large inputs in row bands of about this many bytes


class ConvRefiner(nn.Module):
    """Warp refinement at one scale: stacked features, warped features, displacement embedding and
    local correlation through depthwise blocks to a displacement and a certainty delta.

    Without gradients, an input over ``2 * band_bytes`` is refined in row bands (each with the
    convolutions' halo of rows around it): the same numbers, but each band's activations stay in the
    CPU's cache, which makes the second pass's finest scales several times faster on CPU.
    """

    def __init__(self, cfg: RefinerConfig):
        super().__init__()
        self.corr_radius = cfg.corr_radius
        self.halo = (cfg.kernel_size // 2) * (1 + cfg.hidden_blocks)  # rows each output row depends on
        self.band_bytes = BAND_BYTES
        dim = cfg.in_dim
        self.block1 = dw_block(dim, cfg.kernel_size, cfg.bn_momentum)
        self.hidden_blocks = nn.Sequential(*[dw_block(dim, cfg.kernel_size, cfg.bn_momentum)
                                             for _ in range(cfg.hidden_blocks)])
        self.out_conv = nn.Conv2d(dim, 3, 1)
        self.disp_emb = nn.Conv2d(2, cfg.disp_emb_dim, 1)

    def forward(self, f_A: torch.Tensor, f_B: torch.Tensor, warp: torch.Tensor, scale_factor: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """f_A, f_B: (B,C,h,w); warp (B,2,h,w) -> displacement (B,2,h,w), certainty logit delta (B,1,h,w)."""
        b, _, h, w = f_A.shape
        grid = pixel_grid(h, w, f_A.device).permute(2, 0, 1)[None]
        rows = self.band_rows(f_A)
        if rows >= h:
            d = self.refine(f_A, f_B, warp, grid, scale_factor)
        else:
            bands = []
            for y0 in range(0, h, rows):
                a, z = max(0, y0 - self.halo), min(h, y0 + rows + self.halo)
                out = self.refine(f_A[:, :, a:z], f_B, warp[:, :, a:z], grid[:, :, a:z], scale_factor)
                bands.append(out[:, :, y0 - a:y0 - a + min(rows, h - y0)])
            d = torch.cat(bands, dim=2)
        return d[:, :2], d[:, 2:]

    def band_rows(self, f_A: torch.Tensor) -> int:
        """Rows per band of A's (B,C,h,w) rows: all of them while training or for stacked inputs up to
        ``2 * band_bytes``, else about ``band_bytes`` a band."""
        b, _, h, w = f_A.shape
        row_bytes = b * self.block1[0].in_channels * w * f_A.element_size()  # one row of the stacked input
        if torch.is_grad_enabled() or h * row_bytes <= 2 * self.band_bytes:
            return h
        return max(4 * self.halo, self.band_bytes // row_bytes)

    def refine(self, f_A: torch.Tensor, f_B: torch.Tensor, warp: torch.Tensor, grid: torch.Tensor,
               scale_factor: float) -> torch.Tensor:
        """Rows of A (B,C,r,w), all of B, the rows' warp (B,2,r,w) and pixel grid (1,2,r,w) -> (B,3,r,w)."""
        with torch.no_grad():
            f_B_warped = F.grid_sample(f_B, warp.permute(0, 2, 3, 1), mode="bilinear", align_corners=False)
        disp = self.disp_emb(40 / 32 * scale_factor * (warp - grid))
        parts = [f_A, f_B_warped, disp.to(f_A.dtype)]
        if self.corr_radius:
            parts.append(local_correlation(f_A, f_B, warp, self.corr_radius))
        # channels-last: oneDNN's depthwise and 1x1 convolutions are ~25% faster on CPU
        return self.convs(torch.cat(parts, dim=1).contiguous(memory_format=torch.channels_last))

    def convs(self, d: torch.Tensor) -> torch.Tensor:
        """The convolutions alone: the stacked input (B,C,r,w) -> displacement and certainty (B,3,r,w)."""
        d = self.hidden_blocks(self.block1(d))
        with torch.autocast(device_type=d.device.type, enabled=False):  # the head runs in fp32
            return self.out_conv(d.float())
