"""Transformer match decoder (paper Sec. 3.3) and the anchor-probability -> warp conversion."""
from __future__ import annotations

import torch
from torch import nn

from .dinov2 import Block


class TransformerDecoder(nn.Module):
    """Tokens concat(GP posterior, coarse feature of A), no positional encoding ->
    anchor logits (B, R*R, h, w) and matchability logit (B, 1, h, w)."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, anchor_res: int):
        super().__init__()
        # DINOv2's Block without LayerScale and without qkv bias; torch's LayerNorm eps (1e-5)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=False, layer_scale=False,
                                            norm_eps=1e-5) for _ in range(depth)])
        self.to_out = nn.Linear(dim, anchor_res**2 + 1)
        self.anchor_res = anchor_res

    def forward(self, gp_posterior: torch.Tensor, feat_A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat((gp_posterior, feat_A.to(gp_posterior.dtype)), dim=1)
        b, c, h, w = x.shape
        z = self.to_out(self.blocks(x.flatten(2).transpose(1, 2)))
        out = z.transpose(1, 2).reshape(b, -1, h, w)
        return out[:, :-1], out[:, -1:]


def anchor_grid(res: int, device=None) -> torch.Tensor:
    """Anchor centres (res*res, 2), flat index = row*res + col, (x, y) in (-1, 1)."""
    a = torch.linspace(-1 + 1 / res, 1 - 1 / res, res, device=device)
    gy, gx = torch.meshgrid(a, a, indexing="ij")
    return torch.stack((gx, gy), dim=-1).reshape(res * res, 2)


def to_warp(logits: torch.Tensor) -> torch.Tensor:
    """Anchor logits (B, R*R, h, w) -> warp (B, h, w, 2).

    Probability-weighted mean of the argmax anchor and its 4 neighbours in the flat index
    (+-1, +-R, clamped to the valid range, as the reference does: row-border neighbours wrap).
    """
    b, n, h, w = logits.shape
    res = round(n**0.5)
    prob = logits.float().softmax(dim=1)
    mode = prob.argmax(dim=1)  # (B, h, w)
    index = torch.stack((mode - 1, mode, mode + 1, mode - res, mode + res), dim=1).clamp(0, n - 1)
    p = torch.gather(prob, 1, index)  # (B, 5, h, w)
    anchors = anchor_grid(res, logits.device)[index]  # (B, 5, h, w, 2)
    return (p[..., None] * anchors).sum(dim=1) / p.sum(dim=1)[..., None]
