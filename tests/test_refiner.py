"""The refiner's banded inference: row bands with their halo give the whole input's numbers."""
import pytest
import torch

from roma_sfm.models.refiner import ConvRefiner
from roma_sfm.presets import RefinerConfig


def inputs(h: int, w: int, c: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f_A = torch.randn(2, c, h, w, generator=g)
    f_B = torch.randn(2, c, 20, 28, generator=g)
    warp = torch.rand(2, 2, h, w, generator=g) * 2.2 - 1.1  # some of it outside B
    return f_A, f_B, warp


@pytest.mark.parametrize("corr_radius,hidden_blocks", [(0, 1), (2, 2)])
def test_bands_give_the_whole_inputs_numbers(corr_radius, hidden_blocks):
    torch.manual_seed(0)
    refiner = ConvRefiner(RefinerConfig(6, 4, corr_radius, hidden_blocks=hidden_blocks)).eval()
    f_A, f_B, warp = inputs(45, 23, 6)
    with torch.no_grad():
        whole = refiner(f_A, f_B, warp, 0.7)
        refiner.band_bytes = 64  # bands of the fewest rows the halo allows, and a shorter last one
        assert refiner.band_rows(f_A) < 45
        banded = refiner(f_A, f_B, warp, 0.7)
    for a, b in zip(whole, banded):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_no_bands_while_training():
    refiner = ConvRefiner(RefinerConfig(6, 4, 1, hidden_blocks=1))
    refiner.band_bytes = 64
    f_A, f_B, warp = inputs(45, 23, 6)
    assert refiner.band_rows(f_A) == 45
    with torch.no_grad():
        assert refiner.band_rows(f_A) < 45
