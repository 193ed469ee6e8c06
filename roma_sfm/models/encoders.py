"""Feature encoders: the VGG19-BN fine pyramid and the coarse encoders (DINOv2 or a small CNN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import RomaConfig
from .dinov2 import DinoVisionTransformer


class VGG19Pyramid(nn.Module):
    """VGG19-BN ``features`` (torchvision indexing, so ``layers.<i>`` keys match the checkpoint).

    Returns the maps just before each max-pool: strides 1, 2, 4, 8.
    """

    def __init__(self, widths=(64, 128, 256, 512), convs=(2, 2, 4, 4)):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for stage, (c, n) in enumerate(zip(widths, convs)):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(n):
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """x: (B,3,H,W) -> {1: (B,c1,H,W), 2: (B,c2,H/2,W/2), 4: ..., 8: ...}."""
        feats, scale = {}, 1
        for layer in self.layers:
            if isinstance(layer, nn.MaxPool2d):
                feats[scale] = x
                scale *= 2
            x = layer(x)
        feats[scale] = x
        return feats


class ConvCoarseEncoder(nn.Module):
    """Coarse features from the stride-8 map: strided convs, then resampled to the patch-14 grid.

    Stands in for DINOv2 where no pretrained ViT exists; trainable from scratch.
    """

    def __init__(self, in_dim: int, dims: tuple[int, ...], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_dim
        for i, c in enumerate(dims):
            layers += [nn.Conv2d(c_in, c, 3, stride=2 if i == 0 else 1, padding=1), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            c_in = c
        layers.append(nn.Conv2d(c_in, out_dim, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, f8: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """f8: (B,C,H/8,W/8) -> (B,out_dim,H/14,W/14)."""
        x = self.layers(f8)
        return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


class Encoder(nn.Module):
    """Image -> feature pyramid {16 (patch-14 grid), 8, 4, 2, 1}."""

    def __init__(self, cfg: RomaConfig):
        super().__init__()
        self.cfg = cfg
        self.cnn = VGG19Pyramid(cfg.vgg_widths, cfg.vgg_convs)
        if cfg.coarse_encoder == "dinov2":
            self.dinov2 = DinoVisionTransformer(cfg.vit_dim, cfg.vit_depth, cfg.vit_heads, cfg.vit_mlp_ratio,
                                                pos_grid=cfg.vit_pos_grid)
            self.dinov2.requires_grad_(False)  # frozen, as in the paper
        elif cfg.coarse_encoder == "conv":
            self.conv_coarse = ConvCoarseEncoder(cfg.vgg_widths[3], cfg.conv_coarse_dims, cfg.coarse_dim)
        else:
            raise ValueError(f"unknown coarse encoder '{cfg.coarse_encoder}'")

    def forward(self, x: torch.Tensor, coarse: bool = True) -> dict[int, torch.Tensor]:
        """x: (B,3,H,W), H,W multiples of 14. ``coarse=False`` skips the coarse encoder (second pass)."""
        # channels-last: faster oneDNN convolutions on CPU; downstream code is layout-agnostic
        feats = self.cnn(x.contiguous(memory_format=torch.channels_last))
        if coarse:
            grid = (x.shape[-2] // 14, x.shape[-1] // 14)
            if self.cfg.coarse_encoder == "dinov2":
                with torch.no_grad():
                    self.dinov2.eval()  # frozen: never in train mode
                    feats[16] = self.dinov2(x)
            else:
                feats[16] = self.conv_coarse(feats[8], grid)
        return feats
