"""Model presets: data, not code paths.

Every size of the model is a field of :class:`RomaConfig`; the model code reads nothing else.
``roma-outdoor`` / ``roma-indoor`` are the paper's model (and the layout of the public
checkpoints); ``roma-tiny`` is the compact CPU preset with the same structure.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

# inference defaults, shared by the matchers, the match step and the CLI
NUM_SAMPLES = 10000  # matches sampled per pair from a dense warp (a sparse matcher keeps its best this many)
DECODE_WORKERS = 2  # threads decoding images ahead of the model
DEVICE = "auto"  # CUDA with autocast when present, else CPU
BALANCED = True  # sample matches spread over the image (KDE-balanced), not only the most certain
CACHE_MB = 512  # memory for per-image encoder features reused across pairs
ZOOM = 1.6  # re-match on the covisible crop when one image shows the other's content this much larger (0: off)
ZOOM_ROUNDS = 2  # with the zoom on, re-matches of one pair at most, each on a crop of the last
ZOOM_SUPPORT = (2, 3)  # with the zoom on, a failed match searches these downsampling factors of each image
# arithmetic of the matcher: "auto" (CUDA: bfloat16/float16 autocast; CPU: float32), "fp32" (float32
# everywhere), "bf16" (bfloat16 autocast also on CPUs, faster on CPUs with bf16 units, slightly less accurate)
PRECISION = "auto"
PRECISIONS = ("auto", "fp32", "bf16")
PHOTOMETRIC = True  # move each sampled match's B end to where its patch fits best (roma_sfm.refine)
FIT = "stretch"  # how an image fills the matcher's input: "stretch" (resize to it) or "pad" (keep aspect, letterbox)


@dataclass(frozen=True)
class RefinerConfig:
    """One convolutional refiner (paper Sec. 3.4)."""

    feat_dim: int  # projected feature channels of A (and B) at this scale
    disp_emb_dim: int  # displacement embedding channels
    corr_radius: int = 0  # local correlation radius (0: no correlation)
    hidden_blocks: int = 8
    kernel_size: int = 5
    bn_momentum: float = 0.01

    @property
    def in_dim(self) -> int:
        corr = (2 * self.corr_radius + 1) ** 2 if self.corr_radius else 0
        return 2 * self.feat_dim + self.disp_emb_dim + corr


@dataclass(frozen=True)
class RomaConfig:
    name: str
    # coarse encoder: "dinov2" (a ViT with patch 14) or "conv" (a strided CNN on the fine pyramid)
    coarse_encoder: str = "dinov2"
    vit_dim: int = 1024
    vit_depth: int = 24
    vit_heads: int = 16
    vit_mlp_ratio: float = 4.0
    vit_pos_grid: int = 37  # pos_embed made for 518 px = 37x37 tokens
    conv_coarse_dims: tuple[int, ...] = ()  # for coarse_encoder == "conv": channels of the stride-16 layers
    coarse_dim: int = 1024  # channels the coarse encoder outputs
    coarse_context_depth: int = 0  # for "conv": Transformer blocks over the coarse grid (global context)
    coarse_context_heads: int = 8
    # for "conv": downsampling factors of extra views of the image whose coarse features are added
    # (scale-space pooling for large zoom between the two images); () = the full view only
    coarse_extra_scales: tuple[int, ...] = ()
    # fine encoder: VGG19-BN stages (convs per stage, channels) up to stride 8
    vgg_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    vgg_convs: tuple[int, int, int, int] = (2, 2, 4, 4)
    # projections (scale -> out channels); input channels follow from the encoders
    proj_dims: dict = field(default_factory=lambda: {16: 512, 8: 512, 4: 256, 2: 64, 1: 9})
    # Gaussian-process match encoder
    gp_dim: int = 512
    gp_temperature: float = 0.2
    gp_noise: float = 0.1
    # Transformer match decoder
    dec_dim: int = 1024  # = gp_dim + proj_dims[16]
    dec_depth: int = 5
    dec_heads: int = 8
    dec_mlp_ratio: float = 4.0
    anchor_res: int = 64  # 64x64 anchors
    # refiners, coarse to fine
    refiners: dict = field(
        default_factory=lambda: {
            16: RefinerConfig(512, 128, 7),
            8: RefinerConfig(512, 64, 3),
            4: RefinerConfig(256, 32, 2),
            2: RefinerConfig(64, 16, 0),
            1: RefinerConfig(9, 6, 0),
        }
    )
    refine_init: float = 4.0
    # a refiner set of its own (scales below 16) for the second, high-resolution pass; off: both
    # passes share one set, as in the reference
    second_pass_refiners: bool = False
    # inference defaults
    coarse_res: tuple[int, int] = (560, 560)
    upsample_res: Optional[tuple[int, int]] = (864, 864)
    symmetric: bool = True
    attenuate_certainty: bool = True
    sample_threshold: float = 0.05
    # a public checkpoint users may own for this preset (never downloaded)
    checkpoint_name: Optional[str] = None
    needs_dinov2_weights: bool = True

    def __post_init__(self):
        if self.coarse_encoder == "dinov2" and self.coarse_dim != self.vit_dim:
            raise ValueError(f"{self.name}: coarse_dim must equal vit_dim with a DINOv2 encoder")
        if self.dec_dim != self.gp_dim + self.proj_dims[16]:
            raise ValueError(f"{self.name}: dec_dim must be gp_dim + proj_dims[16]")
        for s, r in self.refiners.items():
            if r.feat_dim != self.proj_dims[s]:
                raise ValueError(f"{self.name}: refiner {s} feat_dim != proj_dims[{s}]")
        if self.coarse_extra_scales and self.coarse_encoder != "conv":
            raise ValueError(f"{self.name}: coarse_extra_scales needs the conv coarse encoder")
        if self.coarse_res[0] % 14 or self.coarse_res[1] % 14:  # the upsample pass has no ViT
            raise ValueError(f"{self.name}: coarse_res must be multiples of 14, got {self.coarse_res}")

    @property
    def fine_dims(self) -> dict[int, int]:
        """Channels of the fine (VGG) pyramid per stride."""
        w = self.vgg_widths
        return {1: w[0], 2: w[1], 4: w[2], 8: w[3]}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["refiners"] = {str(k): asdict(v) for k, v in self.refiners.items()}
        d["proj_dims"] = {str(k): v for k, v in self.proj_dims.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RomaConfig":
        d = dict(d)
        d["refiners"] = {int(k): RefinerConfig(**v) for k, v in d["refiners"].items()}
        d["proj_dims"] = {int(k): int(v) for k, v in d["proj_dims"].items()}
        names = {f.name for f in fields(cls)}
        for k in list(d):
            if k not in names:
                raise ValueError(f"unknown preset field '{k}'")
            if isinstance(d[k], list):
                d[k] = tuple(d[k])
        return cls(**d)

    def replace(self, **kw) -> "RomaConfig":
        return replace(self, **kw)


ROMA_OUTDOOR = RomaConfig(name="roma-outdoor", checkpoint_name="roma_outdoor.pth")
ROMA_INDOOR = RomaConfig(name="roma-indoor", checkpoint_name="roma_indoor.pth")

# Compact CPU preset: same structure, narrow VGG, a convolutional coarse encoder on the stride-8
# features with two Transformer blocks after it (a ViT does not train from scratch on 2 CPU cores),
# small GP/Transformer, 1-3 hidden blocks per refiner.
ROMA_TINY = RomaConfig(
    name="roma-tiny",
    coarse_encoder="conv",
    conv_coarse_dims=(128, 192, 192),
    coarse_dim=192,
    coarse_context_depth=2,  # global context over the coarse grid (step 15 968 on)
    vgg_widths=(16, 32, 64, 128),
    vgg_convs=(1, 1, 2, 2),
    proj_dims={16: 128, 8: 96, 4: 48, 2: 24, 1: 8},
    gp_dim=128,
    dec_dim=256,
    dec_depth=3,
    dec_heads=8,
    refiners={
        16: RefinerConfig(128, 32, 4, hidden_blocks=3),
        8: RefinerConfig(96, 32, 3, hidden_blocks=2),
        4: RefinerConfig(48, 16, 2, hidden_blocks=2),
        2: RefinerConfig(24, 8, 0, hidden_blocks=1),
        1: RefinerConfig(8, 4, 0, hidden_blocks=1),
    },
    coarse_res=(448, 448),
    upsample_res=(672, 672),  # the pipeline's second pass (x1.5, like the paper's 560 -> 864)
    symmetric=False,
    needs_dinov2_weights=False,
)

PRESETS: dict[str, RomaConfig] = {p.name: p for p in (ROMA_OUTDOOR, ROMA_INDOOR, ROMA_TINY)}

DEFAULT_PRESET = "roma-tiny"


def get_preset(name: str) -> RomaConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset '{name}'; available: {', '.join(PRESETS)}") from None
