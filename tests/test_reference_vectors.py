"""Every model part reproduces the reference implementation's numbers (../shared/reference)."""
import torch

from roma_sfm.models.gp import GP
from roma_sfm.models.refiner import local_correlation
from roma_sfm.models.roma import RoMa
from roma_sfm.models.transformer import to_warp
from roma_sfm.presets import RefinerConfig, RomaConfig
from roma_sfm.weights import load_strict

TOL = 1e-5


def sub(d, prefix):
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


def test_vit_with_pos_embed_interpolation(vectors):
    # ViT-S-like: dim 32, depth 2, loaded through the public DINOv2 key mapping (prefix encoder.dinov2.)
    cfg = RomaConfig(name="vec-vit", vit_dim=32, vit_depth=2, vit_heads=2, coarse_dim=32,
                     proj_dims={16: 8, 8: 8, 4: 8, 2: 8, 1: 8}, gp_dim=8, dec_dim=16, dec_depth=1, dec_heads=2,
                     refiners={s: RefinerConfig(8, 2, 0, hidden_blocks=0) for s in (16, 8, 4, 2, 1)})
    model = RoMa(cfg).eval()
    load_strict(model, sub(vectors, "vit.state."), source="vit vectors", prefix="encoder.dinov2.")
    x = vectors["vit.input"]  # (2,3,56,70): a non-square 4x5 token grid from a 37x37 pos_embed
    with torch.no_grad():
        tokens = model.encoder.dinov2(x)
    assert tokens.shape == (2, 32, 4, 5)
    assert torch.allclose(tokens.flatten(2).transpose(1, 2), vectors["vit.x_norm_patchtokens"], atol=TOL)


def test_gaussian_process(vectors):
    gp = GP(16).eval()
    load_strict(gp, sub(vectors, "gp.state."), source="gp vectors")
    with torch.no_grad():
        out = gp(vectors["gp.x"], vectors["gp.y"])
    assert torch.allclose(out, vectors["gp.out"], atol=TOL)


def test_to_warp(vectors):
    flow = to_warp(vectors["towarp.logits"])
    assert flow.shape == (2, 3, 4, 2)
    assert torch.allclose(flow, vectors["towarp.flow"], atol=TOL)


def test_local_correlation(vectors):
    out = local_correlation(vectors["corr.f0"], vectors["corr.f1"], vectors["corr.warp"], radius=2)
    assert out.shape == (2, 25, 6, 7)
    assert torch.allclose(out, vectors["corr.out"], atol=TOL)


def vector_decoder_config() -> RomaConfig:
    return RomaConfig(
        name="vec-decoder", coarse_encoder="conv", conv_coarse_dims=(8,), coarse_dim=24,
        vgg_widths=(5, 6, 10, 12), proj_dims={16: 16, 8: 8, 4: 8, 2: 4, 1: 3}, gp_dim=16, dec_dim=32,
        dec_depth=1, dec_heads=2,
        refiners={16: RefinerConfig(16, 8, 7, 2), 8: RefinerConfig(8, 4, 3, 2), 4: RefinerConfig(8, 4, 2, 2),
                  2: RefinerConfig(4, 4, 0, 2), 1: RefinerConfig(3, 2, 0, 2)})


def test_whole_decoder(vectors):
    model = RoMa(vector_decoder_config()).eval()
    # the same mapping as roma_outdoor.pth: decoder.* keys
    state = {"decoder." + k: v for k, v in sub(vectors, "decoder.state.").items()}
    load_strict(model.decoder, sub(state, "decoder."), source="decoder vectors")
    f_A = {int(k): v for k, v in sub(vectors, "decoder.f_A.").items()}
    f_B = {int(k): v for k, v in sub(vectors, "decoder.f_B.").items()}
    with torch.no_grad():
        out = model.decoder(f_A, f_B, scale_factor=float(vectors["decoder.scale_factor"]))
    for s in (16, 8, 4, 2, 1):
        assert torch.allclose(out[s]["flow"], vectors[f"decoder.out.{s}.flow"], atol=TOL), s
        assert torch.allclose(out[s]["certainty"], vectors[f"decoder.out.{s}.certainty"], atol=TOL), s
