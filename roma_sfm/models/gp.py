"""Gaussian-process match encoder (paper Sec. 3.3): posterior mean of B's embedded coordinates."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def pixel_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised pixel-centre coordinates (h, w, 2) as (x, y) in (-1, 1): -1 + 1/w ... 1 - 1/w."""
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=device, dtype=dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)


def cosine_kernel(x: torch.Tensor, y: torch.Tensor, temperature: float, eps: float = 1e-6) -> torch.Tensor:
    """K(x, y) = exp((cos(x, y) - 1) / T). x: (B,N,C), y: (B,M,C) -> (B,N,M)."""
    c = torch.einsum("bnd,bmd->bnm", x, y) / (x.norm(dim=-1)[..., None] * y.norm(dim=-1)[:, None] + eps)
    return torch.exp((c - 1.0) / temperature)


class GP(nn.Module):
    def __init__(self, gp_dim: int, temperature: float = 0.2, noise: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.noise = noise
        self.pos_conv = nn.Conv2d(2, gp_dim, 1)

    def embed_coords(self, b: int, h: int, w: int, device) -> torch.Tensor:
        """Fourier basis of B's grid: cos(8 pi Conv1x1(coords)) -> (B, D, h, w)."""
        coords = pixel_grid(h, w, device).permute(2, 0, 1)[None].expand(b, 2, h, w)
        return torch.cos(8 * math.pi * self.pos_conv(coords))

    def forward(self, x: torch.Tensor, y: torch.Tensor, extra: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """x: (B,C,h1,w1) features of A, y: (B,C,h2,w2) of B -> posterior mean (B,D,h1,w1).

        ``extra``: more support, (B,C,h,w) features of B itself at other scales (e.g. of B
        downsampled), each on its own grid over the same image, so a part of A that appears
        smaller than in B still meets a description of its own scale.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):  # the solve needs fp32
            return self._posterior(x.float(), [t.float() for t in (y, *extra)])

    def _posterior(self, x: torch.Tensor, ys: list[torch.Tensor]) -> torch.Tensor:
        b, _, h1, w1 = x.shape
        f = torch.cat([self.embed_coords(b, *t.shape[-2:], x.device).flatten(2).transpose(1, 2)
                       for t in ys], dim=1)  # (B, M, D)
        x = x.flatten(2).transpose(1, 2)
        y = torch.cat([t.flatten(2).transpose(1, 2) for t in ys], dim=1)
        k_yy = cosine_kernel(y, y, self.temperature)
        k_xy = cosine_kernel(x, y, self.temperature)
        k_yy = k_yy + self.noise * torch.eye(y.shape[1], device=x.device, dtype=k_yy.dtype)
        # K_yy + sigma I is symmetric positive definite: a Cholesky solve, stabler than an inverse
        chol = torch.linalg.cholesky(k_yy)
        mu = k_xy @ torch.cholesky_solve(f, chol)
        return mu.transpose(1, 2).reshape(b, -1, h1, w1)
