"""Density estimates behind RoMa's balanced sampling: matches are drawn with probability
1 / (1 + density), so that they spread over the image instead of piling up where certainty is high.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F


def kde_density(x: torch.Tensor, std: float = 0.1, max_ref: int = 2500, chunk: int = 512,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gaussian KDE of each row of x (N, D) over all rows -> (N,), as sum_j exp(-|x - x_j|^2 / 2 std^2).

    Above ``max_ref`` rows the sum runs over a random subset, scaled by N / max_ref: an unbiased
    estimate at O(N * max_ref) instead of O(N^2). :func:`grid_density` is the O(N) approximation
    that sampling uses.
    """
    ref = x
    if x.shape[0] > max_ref:
        ref = x[torch.randperm(x.shape[0], generator=generator)[:max_ref]]
    scale = x.shape[0] / ref.shape[0]
    ref_sq = (ref * ref).sum(1)[None]
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], chunk):
        xi = x[i:i + chunk]
        d2 = torch.addmm(ref_sq, xi, ref.T, beta=1.0, alpha=-2.0).add_((xi * xi).sum(1)[:, None])
        out[i:i + chunk] = d2.mul_(-0.5 / std**2).exp_().sum(dim=1)
    return out.mul_(scale)


@functools.lru_cache(maxsize=8)
def _cell_weights(reach: int = 3, samples: int = 20001) -> torch.Tensor:
    """E[exp(-((o + u1 - u2) h)^2 / 2 std^2)] for cell offsets o = -reach..reach, cells of width
    h = std and u1, u2 uniform in a cell: the expected Gaussian weight between two points ``o``
    cells apart along one axis (u1 - u2 has the triangular density 1 - |t| on [-1, 1])."""
    t = torch.linspace(-1, 1, samples, dtype=torch.float64)
    tri = (1 - t.abs()) / (1 - t.abs()).sum()
    return torch.stack([(tri * torch.exp(-0.5 * (o + t) ** 2)).sum() for o in range(-reach, reach + 1)]).float()


def grid_density(x: torch.Tensor, lo: float = -1.0, hi: float = 1.0, std: float = 0.1) -> torch.Tensor:
    """O(N) approximation of :func:`kde_density` for points in [lo, hi]^D (D <= 4): points are
    counted in cells of width ``std`` and the counts blurred along each axis with the expected
    Gaussian weight between cells (so it matches the exact KDE in expectation over positions).
    x (N, D) -> (N,). Far cheaper than the exact sum over reference points, for the same sampling."""
    n, d = x.shape
    g = int(math.ceil((hi - lo) / std))
    cells = ((x - lo) / std).floor().long().clamp_(0, g - 1)
    flat = torch.zeros((), dtype=torch.long)
    for k in range(d):
        flat = flat * g + cells[:, k]
    hist = torch.bincount(flat, minlength=g**d).to(x.dtype).reshape((1, 1) + (g,) * d)
    w = _cell_weights().to(x.dtype)
    reach = (len(w) - 1) // 2
    for axis in range(d):  # separable blur, zero outside the box
        moved = hist.movedim(2 + axis, -1)
        shape = moved.shape
        line = F.conv1d(moved.reshape(-1, 1, g), w.view(1, 1, -1), padding=reach)
        hist = line.reshape(shape).movedim(-1, 2 + axis)
    return hist.reshape(-1)[flat]
