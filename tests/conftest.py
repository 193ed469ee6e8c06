import os
from pathlib import Path

import pytest
import torch

from roma_sfm.presets import RefinerConfig, RomaConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROMA_SFM_SHARED", ROOT.parent / "shared"))
VECTORS = SHARED / "reference" / "roma_vectors.pt"
DATA = SHARED / "data"


def micro_config(**kw) -> RomaConfig:
    """A few-thousand-parameter model with the paper's structure, for fast tests."""
    base = dict(
        name="micro", coarse_encoder="conv", conv_coarse_dims=(16,), coarse_dim=16,
        vgg_widths=(4, 8, 8, 16), vgg_convs=(1, 1, 1, 1),
        proj_dims={16: 8, 8: 8, 4: 4, 2: 4, 1: 2}, gp_dim=8, dec_dim=16, dec_depth=1, dec_heads=2,
        refiners={16: RefinerConfig(8, 4, 2, hidden_blocks=1), 8: RefinerConfig(8, 4, 1, hidden_blocks=1),
                  4: RefinerConfig(4, 2, 1, hidden_blocks=1), 2: RefinerConfig(4, 2, 0, hidden_blocks=1),
                  1: RefinerConfig(2, 2, 0, hidden_blocks=1)},
        coarse_res=(56, 70), upsample_res=None, symmetric=False, needs_dinov2_weights=False,
    )
    base.update(kw)
    return RomaConfig(**base)


@pytest.fixture
def micro():
    return micro_config()


@pytest.fixture(scope="session")
def vectors():
    if not VECTORS.is_file():
        pytest.skip(f"reference vectors not found at {VECTORS} (../shared is absent)")
    return torch.load(VECTORS, weights_only=True)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
