"""Feature encoders: the VGG19-BN fine pyramid and the coarse encoders (DINOv2 or a small CNN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import RomaConfig
from .dinov2 import Block, DinoVisionTransformer


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


class CoarseContext(nn.Module):
    """Transformer blocks over the coarse grid: every coarse feature sees the whole image.

    The convolutions alone see a fixed window, so one surface zoomed 3x gives unrelated features;
    DINOv2 has global attention. A zero-initialised depthwise conv gives the tokens their position
    (as a conditional positional encoding), and LayerScale starts each block near the identity, so
    weights trained without these blocks load and match as before.
    """

    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        nn.init.zeros_(self.pos.weight)
        nn.init.zeros_(self.pos.bias)
        self.blocks = nn.Sequential(*[Block(dim, heads, norm_eps=1e-5) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,C,h,w) -> (B,C,h,w)."""
        x = x + self.pos(x)
        b, c, h, w = x.shape
        t = self.blocks(x.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(b, c, h, w)


class ConvCoarseEncoder(nn.Module):
    """Coarse features from the stride-8 map: strided convs, then resampled to the patch-14 grid,
    optionally followed by :class:`CoarseContext`.

    Stands in for DINOv2 where no pretrained ViT exists; trainable from scratch.
    """

    def __init__(self, in_dim: int, dims: tuple[int, ...], out_dim: int, context_depth: int = 0,
                 context_heads: int = 8, num_extra_scales: int = 0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_dim
        for i, c in enumerate(dims):
            layers += [nn.Conv2d(c_in, c, 3, stride=2 if i == 0 else 1, padding=1), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            c_in = c
        layers.append(nn.Conv2d(c_in, out_dim, 1))
        self.layers = nn.Sequential(*layers)
        self.scale_mix = nn.ModuleList(ScaleMix(out_dim) for _ in range(num_extra_scales))
        self.context = CoarseContext(out_dim, context_depth, context_heads) if context_depth else None

    def forward(self, f8: torch.Tensor, grid: tuple[int, int], extra: tuple[torch.Tensor, ...] = ()
                ) -> torch.Tensor:
        """f8: (B,C,H/8,W/8) -> (B,out_dim,H/14,W/14).

        ``extra``: the stride-8 maps of downsampled copies of the image, one per ``scale_mix``;
        their coarse features (same layers) are added through it.
        """
        x = F.interpolate(self.layers(f8), size=grid, mode="bilinear", align_corners=False)
        for mix, f in zip(self.scale_mix, extra, strict=True):
            x = x + mix(F.interpolate(self.layers(f), size=grid, mode="bilinear", align_corners=False))
        return x if self.context is None else self.context(x)


class ScaleMix(nn.Module):
    """A zero-initialised 1x1 conv that adds the coarse features of a downsampled view.

    The same layers describe the image at several scales, so a surface seen 2x larger in the other
    image meets its own description one octave down (scale-space pooling, as in DSP-SIFT). Zero at
    the start, so weights trained without it load and match as before.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,C,h,w) -> (B,C,h,w)."""
        return self.proj(x)


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
            self.conv_coarse = ConvCoarseEncoder(cfg.vgg_widths[3], cfg.conv_coarse_dims, cfg.coarse_dim,
                                                 cfg.coarse_context_depth, cfg.coarse_context_heads,
                                                 len(cfg.coarse_extra_scales))
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
                extra = tuple(self.cnn(downsample(x, k).contiguous(memory_format=torch.channels_last))[8]
                              for k in self.cfg.coarse_extra_scales)
                feats[16] = self.conv_coarse(feats[8], grid, extra)
        return feats


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,H/factor,W/factor), area-averaged (no aliasing)."""
    return F.interpolate(x, size=(max(x.shape[-2] // factor, 8), max(x.shape[-1] // factor, 8)), mode="area")
