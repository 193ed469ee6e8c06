"""Inference API: shapes, semantics, pixel conventions, determinism, bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import micro_config
from roma_sfm import ImageReadError, MatchResult, random_matcher
from roma_sfm.matcher import Matcher
from roma_sfm.models.fuse import fuse_batchnorm
from roma_sfm.weights import weights_fingerprint
from roma_sfm.models.roma import RoMa
from roma_sfm.models.gp import pixel_grid
from roma_sfm.models.roma import finalize
from roma_sfm.models.transformer import anchor_grid, to_warp


def rand_images(b=1, h=56, w=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g), torch.randn(b, 3, h, w, generator=g)


def test_match_tensors_semantics():
    m = random_matcher(micro_config(), device="cpu")
    A, B = rand_images(2)
    warp, cert = m.match_tensors(A, B)
    assert warp.shape == (2, 56, 70, 4) and cert.shape == (2, 56, 70)
    assert torch.allclose(warp[0, ..., :2], pixel_grid(56, 70))  # A's pixel centres
    assert warp.abs().max() <= 1 and cert.min() >= 0 and cert.max() <= 1
    # certainty is zeroed where the raw warp left the image (the clamped warp sits on the border)
    on_border = (warp[..., 2:].abs() == 1).any(-1)
    assert (cert[on_border] == 0).all()


def test_fused_batchnorm_gives_the_same_matches():
    import copy

    torch.manual_seed(0)
    model = RoMa(micro_config(upsample_res=(112, 140))).eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():  # non-trivial statistics, as a trained model has
        for bn in bns:
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.normal_(1, 0.3)
            bn.bias.normal_(0, 0.3)
    fused = copy.deepcopy(model)
    assert fuse_batchnorm(fused) == len(bns) > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    A, B = rand_images()
    plain = Matcher(model, "cpu", upsample_res=True)
    w0, c0 = plain.match_tensors(A, B)
    w1, c1 = Matcher(fused, "cpu", upsample_res=True).match_tensors(A, B)
    assert torch.allclose(w0, w1, atol=1e-4) and torch.allclose(c0, c1, atol=1e-4)
    # a matcher that fuses its own model keeps the fingerprint of the weights it was given
    own = Matcher(copy.deepcopy(model), "cpu", upsample_res=True, fuse=True)
    assert own.weights_id == plain.weights_id and own.weights_id != weights_fingerprint(own.model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in own.model.modules())
    # a BatchNorm in training mode is left alone
    model.train()
    assert fuse_batchnorm(model) == 0


def test_precision_picks_the_autocast_dtype():
    from roma_sfm.matcher import autocast_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cuda, "bf16") is torch.bfloat16
    assert autocast_dtype(cuda, "fp32") is None
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype(cpu, "fp8")


def test_bf16_matches_follow_the_fp32_ones():
    """bfloat16 autocast on the CPU changes the arithmetic, not the result: the warps agree to a
    fraction of a pixel of the 112 x 140 output where the float32 matcher is certain."""
    torch.manual_seed(0)
    model = RoMa(micro_config(upsample_res=(112, 140))).eval()
    A, B = rand_images()
    fp32 = Matcher(model, "cpu", upsample_res=True)
    bf16 = Matcher(model, "cpu", upsample_res=True, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    w0, c0 = fp32.match_tensors(A, B)
    w1, c1 = bf16.match_tensors(A, B)
    assert w1.dtype == c1.dtype == torch.float32
    assert not torch.equal(w0, w1)  # the autocast did run
    px = (w0 - w1)[..., 2:].abs() * torch.tensor([70.0, 56.0])
    assert px.median() < 0.5 and (c0 - c1).abs().mean() < 0.05


def test_symmetric_is_both_directions_in_one_batch():
    cfg = micro_config()
    one = random_matcher(cfg, device="cpu", seed=3)
    sym = random_matcher(cfg, device="cpu", seed=3, symmetric=True)
    A, B = rand_images()
    w_ab, c_ab = one.match_tensors(A, B)
    w_ba, c_ba = one.match_tensors(B, A)
    w, c = sym.match_tensors(A, B)
    assert w.shape == (1, 56, 140, 4) and c.shape == (1, 56, 140)
    assert torch.allclose(w[:, :, :70], w_ab, atol=1e-5) and torch.allclose(c[:, :, :70], c_ab, atol=1e-5)
    # right half: B->A, stored as (xA, yA, xB, yB) with B on the grid
    assert torch.allclose(w[:, :, 70:, :2], w_ba[..., 2:], atol=1e-5)
    assert torch.allclose(w[:, :, 70:, 2:], w_ba[..., :2], atol=1e-5)


def test_upsample_second_pass_size():
    m = random_matcher(micro_config(upsample_res=(112, 140)), device="cpu", upsample_res=True)
    assert m.upsample_res == (112, 140)
    warp, cert = m.match_tensors(*rand_images())
    assert warp.shape == (1, 112, 140, 4) and cert.shape == (1, 112, 140)
    assert torch.allclose(warp[0, ..., :2], pixel_grid(112, 140))


def test_constructed_identity_gives_identity_warp():
    # anchor logits peaked at each pixel's own position; refiners predicting zero displacement
    h, w = 16, 20
    grid = pixel_grid(h, w)
    d2 = ((grid.reshape(-1, 1, 2) - anchor_grid(64)[None]) ** 2).sum(-1)  # (hw, 4096)
    logits = (-d2 / 1e-4).T.reshape(1, 4096, h, w)
    flow = to_warp(logits).permute(0, 3, 1, 2)
    corresps = {16: {"certainty": torch.full((1, 1, h, w), 5.0)},
                1: {"flow": flow, "certainty": torch.full((1, 1, h, w), 5.0)}}
    warp, cert = finalize(corresps, (h, w))
    assert torch.allclose(warp[..., 2:], warp[..., :2], atol=1 / 64)  # within an anchor cell
    assert torch.allclose(cert, torch.sigmoid(torch.tensor(5.0)))
    res = MatchResult(warp[0], cert[0], (w * 10, h * 10), (w * 10, h * 10))
    ka, kb, _ = res.sample(num=50)
    assert np.abs(ka - kb).max() <= 10 * w / 64 + 1e-4


def identity_result(h, w, size):
    g = pixel_grid(h, w)
    return MatchResult(torch.cat((g, g), -1), torch.ones(h, w), size, size)


def test_pixel_convention_non_square():
    # a 7x5 warp grid on an original 70x50 image (W=70, H=50): grid centres -> (i + 0.5) * 10 px
    res = identity_result(5, 7, (70, 50))
    ka, kb, c = res.sample(num=35, balanced=False)
    assert ka.dtype == np.float32 and ka.shape == (35, 2)
    xs, ys = np.unique(ka[:, 0]), np.unique(ka[:, 1])
    assert np.allclose(xs, (np.arange(7) + 0.5) * 10) and np.allclose(ys, (np.arange(5) + 0.5) * 10)
    assert np.allclose(ka, kb)


def test_lookup_follows_a_known_warp():
    h, w = 30, 40
    g = pixel_grid(h, w)
    shifted = g + torch.tensor([0.1, -0.05])  # B = A shifted by (+0.05 W, -0.025 H) pixels
    res = MatchResult(torch.cat((g, shifted), -1), torch.ones(h, w), (400, 300), (200, 150))
    q = np.array([[100.0, 120.0], [201.5, 33.25]], np.float32)
    kb, c = res.lookup(q)
    # A pixels -> normalised -> shifted -> pixels of B (half the size)
    expect = np.stack(((q[:, 0] / 200 - 1 + 0.1 + 1) * 100, (q[:, 1] / 150 - 1 - 0.05 + 1) * 75), -1)
    assert np.allclose(kb, expect, atol=1e-3) and np.allclose(c, 1)


def test_match_images_of_any_size_and_determinism(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.random((90, 130, 3)) * 255).astype(np.uint8)
    b = (rng.random((200, 60)) * 65535).astype(np.uint16)  # 16-bit grayscale, portrait
    Image.fromarray(a).save(tmp_path / "a.png")
    m1 = random_matcher(micro_config(), device="cpu", seed=7)
    m2 = random_matcher(micro_config(), device="cpu", seed=7)
    r1 = m1.match(tmp_path / "a.png", b)
    r2 = m2.match(a, b)
    assert r1.size_A == (130, 90) and r1.size_B == (60, 200)
    assert torch.equal(r1.warp, r2.warp) and torch.equal(r1.certainty, r2.certainty)
    s1, s2 = r1.sample(num=100, seed=3), r2.sample(num=100, seed=3)
    for x, y in zip(s1, s2):
        assert np.array_equal(x, y)
    ka, kb, c = s1
    if len(ka):
        assert (ka >= 0).all() and (ka[:, 0] <= 130).all() and (ka[:, 1] <= 90).all()
        assert (kb[:, 0] <= 60).all() and (kb[:, 1] <= 200).all()


def test_match_many_equals_match():
    m = random_matcher(micro_config(), device="cpu", seed=2)
    rng = np.random.default_rng(1)
    ims = [(rng.random((60 + 10 * i, 80, 3)) * 255).astype(np.uint8) for i in range(3)]
    pairs = [(ims[0], ims[1]), (ims[1], ims[2]), (ims[2], ims[0])]
    many = list(m.match_many(pairs, batch_size=2))
    assert len(many) == 3
    for (a, b), r in zip(pairs, many):
        single = m.match(a, b)
        assert torch.allclose(single.warp, r.warp, atol=1e-5)
        assert r.size_A == (a.shape[1], a.shape[0])


def test_bad_image_names_the_file(tmp_path):
    m = random_matcher(micro_config(), device="cpu")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        m.match(bad, np.zeros((10, 10, 3), np.uint8))


def test_sample_with_no_certainty_is_empty():
    res = identity_result(4, 4, (8, 8))
    res.certainty.zero_()
    ka, kb, c = res.sample(num=10)
    assert ka.shape == (0, 2) and c.shape == (0,)


def test_grid_density_approximates_the_exact_kde():
    from roma_sfm.sampling import grid_density, kde_density

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(3000, 4, generator=g) * 0.15 + 0.3, torch.rand(3000, 4, generator=g) * 2 - 1])
    x = x.clamp(-1, 1)
    exact, approx = kde_density(x, max_ref=10**6), grid_density(x)
    assert torch.corrcoef(torch.stack([exact, approx]))[0, 1] > 0.95
    ratio = approx / exact
    assert 0.7 < ratio.median() < 1.3
    # the "isolated match" cut of balanced sampling (density < 10) picks nearly the same matches
    assert ((exact < 10) == (approx < 10)).float().mean() > 0.9
    # clustered points are denser than uniform ones, as in the exact KDE
    assert approx[:3000].mean() > 3 * approx[3000:].mean()


def test_letterbox_keeps_the_aspect_and_maps_back_to_the_image():
    from roma_sfm.matcher import content_box, content_size, to_tensor, uncrop_warp
    rgb = np.full((50, 100, 3), 255, np.uint8)  # 2:1 white image into a 56x56 input
    t = to_tensor(rgb, (56, 56), fit="pad")
    assert content_size((50, 100), (56, 56), "pad") == (28, 56) and content_size((50, 100), (56, 56), "stretch") == (56, 56)
    rows = (t[0] != 0).any(dim=1).nonzero()[:, 0]
    assert rows.min() == 14 and rows.max() == 41  # content centred, the rest 0 (the mean colour)
    box = content_box((50, 100), (56, 56), "pad")
    assert np.allclose(box, (-1, -0.5, 1, 0.5))
    # an identity warp over the input, A and B the same letterboxed image: matches inside the
    # content map to the same original pixels; matches in the padding get certainty 0
    g = pixel_grid(56, 56)
    warp, cert = uncrop_warp(torch.cat((g, g), -1), torch.ones(56, 56), box, box)
    assert (cert[:14] == 0).all() and (cert[42:] == 0).all() and (cert[14:42] == 1).all()
    res = MatchResult(warp, cert, (100, 50), (100, 50), box_A=box)
    ka, kb, _ = res.sample(num=200, balanced=False)
    assert len(ka) == 200 and np.allclose(ka, kb) and ka[:, 1].min() > 0 and ka[:, 1].max() < 50
    kb2, c = res.lookup(ka)
    assert np.allclose(kb2, ka, atol=1e-3) and np.allclose(c, 1)


def test_padded_matching_runs_on_mixed_aspects():
    m = random_matcher(micro_config(), device="cpu", fit="pad")
    rng = np.random.default_rng(1)
    a = (rng.random((40, 120, 3)) * 255).astype(np.uint8)
    b = (rng.random((120, 50, 3)) * 255).astype(np.uint8)
    res = m.match(a, b)
    assert res.size_A == (120, 40) and res.size_B == (50, 120)
    # A's rows outside its content (2/3 of the input's height) carry no certainty
    assert (res.certainty[: res.certainty.shape[0] // 4] == 0).all()
    ka, kb, _ = res.sample(num=100)
    assert (ka >= 0).all() and (ka[:, 0] <= 120).all() and (ka[:, 1] <= 40).all()
    assert (kb[:, 0] <= 50).all() and (kb[:, 1] <= 120).all()
    with pytest.raises(ValueError, match="fit must be"):
        random_matcher(micro_config(), device="cpu", fit="crop")


@pytest.mark.parametrize("depth", [0, 1])
def test_coarse_context_sees_the_whole_image(depth):
    """With coarse context a coarse feature depends on pixels far outside the convolutions' window
    (here the opposite corner of a 224 px image); without it, it does not."""
    cfg = micro_config().replace(coarse_context_depth=depth, coarse_context_heads=2)
    torch.manual_seed(0)
    model = RoMa(cfg).eval()
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):  # LayerScale starts near 0: open the blocks
            p.data.fill_(1.0)
    x = torch.randn(1, 3, 224, 224)
    y = x.clone()
    y[..., 168:, 168:] += 5.0
    with torch.no_grad():
        a, b = model.encode(x)[16][..., 0, 0], model.encode(y)[16][..., 0, 0]
    assert (a - b).abs().max() > 1e-4 if depth else torch.equal(a, b)


@pytest.mark.parametrize("scales", [(), (2, 4)])
def test_coarse_extra_scales_see_further(scales):
    """Coarse features of downsampled views (scale-space pooling) widen what a coarse feature sees:
    with them a change in the far corner reaches the feature at (0, 0); without them it does not."""
    torch.manual_seed(0)
    model = RoMa(micro_config(coarse_extra_scales=scales)).eval()
    for mix in model.encoder.conv_coarse.scale_mix:  # zero at the start: open them
        torch.nn.init.normal_(mix.proj.weight)
    x = torch.randn(1, 3, 224, 224)
    y = x.clone()
    y[..., 112:, 112:] += 5.0
    with torch.no_grad():
        a, b = model.encode(x)[16][..., 0, 0], model.encode(y)[16][..., 0, 0]
    assert (a - b).abs().max() > 1e-4 if scales else torch.equal(a, b)


def test_coarse_extra_scales_need_the_conv_encoder():
    with pytest.raises(ValueError, match="coarse_extra_scales"):
        micro_config(coarse_encoder="dinov2", coarse_dim=1024, coarse_extra_scales=(2,))


def zoomed_result(h: int = 40, w: int = 40, z: float = 2.0, a_is_small: bool = True) -> MatchResult:
    """A known warp: B shows A's central 1/z (a_is_small) or A shows B's (otherwise)."""
    g = pixel_grid(h, w)
    warp = torch.cat((g, g * z), -1) if a_is_small else torch.cat((g, g / z), -1)
    cert = (warp.abs() <= 1).all(dim=-1).float()
    return MatchResult(warp.clamp(-1, 1), cert, (400, 300), (400, 300))


@pytest.mark.parametrize("a_is_small", [True, False])
def test_zoom_crop_finds_the_covisible_box(a_is_small):
    from roma_sfm.matcher import zoom_crop

    side, box = zoom_crop(zoomed_result(a_is_small=a_is_small), 1.5, (448, 448))
    assert side == (0 if a_is_small else 1)
    # the central half of the cropped image, grown by the margin, within a grid cell
    assert np.allclose(box, (-0.6, -0.6, 0.6, 0.6), atol=0.06)
    assert zoom_crop(zoomed_result(a_is_small=a_is_small), 2.5, (448, 448)) is None  # below the ratio
    g = pixel_grid(40, 40)
    assert zoom_crop(MatchResult(torch.cat((g, g), -1), torch.ones(40, 40), (400, 300), (400, 300)),
                     1.5, (448, 448)) is None  # one scale


@pytest.mark.parametrize("a_is_small", [True, False])
def test_zoom_in_matches_the_crop_in_full_image_coordinates(a_is_small):
    """The re-match runs on the crop; its matches land inside the crop of the full image, and a
    lookup outside the crop of A has no certainty."""
    rng = np.random.default_rng(0)
    a, b = ((rng.random((300, 400, 3)) * 255).astype(np.uint8) for _ in range(2))
    m = random_matcher(micro_config(), device="cpu", seed=3, zoom=1.5)
    res = m.zoom_in(zoomed_result(a_is_small=a_is_small), a, b)
    ka, kb, _ = res.sample(num=500, balanced=False)
    assert len(ka) > 100 and res.size_A == (400, 300)
    cropped, other = (ka, kb) if a_is_small else (kb, ka)
    assert (cropped[:, 0] > 400 * 0.2 - 1).all() and (cropped[:, 0] < 400 * 0.8 + 1).all()
    assert (cropped[:, 1] > 300 * 0.2 - 1).all() and (cropped[:, 1] < 300 * 0.8 + 1).all()
    assert (other >= 0).all() and (other[:, 0] <= 400).all() and (other[:, 1] <= 300).all()
    if not a_is_small:  # A is not cropped: its grid covers all of it
        assert ka[:, 0].min() < 100 and ka[:, 0].max() > 300
    if a_is_small:
        kb2, c = res.lookup(np.array([[10.0, 10.0], [200.0, 150.0]], np.float32))
        assert c[0] == 0 and c[1] > 0
        # a lookup inside the crop agrees with the warp it was sampled from
        kb3, _ = res.lookup(ka[:5])
        assert np.allclose(kb3, kb[:5], atol=3.0)
    off = random_matcher(micro_config(), device="cpu", seed=3, zoom=0)
    assert off.zoom_in(zoomed_result(a_is_small=a_is_small), a, b).warp.shape == (40, 40, 4)  # unchanged
    with pytest.raises(ValueError, match="zoom"):
        random_matcher(micro_config(), device="cpu", zoom=0.5)


@pytest.mark.parametrize("side", [0, 1])
def test_zoom_in_gives_the_same_matches_in_match_many(monkeypatch, tmp_path, side):
    """match_many re-matches a zoomed pair with the uncropped image's cached features; the result
    equals match()'s, which encodes both afresh."""
    import roma_sfm.matcher as matcher_module

    def crop_once(res, *a, **k):  # the full images only, not again the crop
        return (side, (-0.5, -0.25, 0.5, 0.75)) if res.size_A == res.size_B == (80, 60) else None

    monkeypatch.setattr(matcher_module, "zoom_crop", crop_once)
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    m = random_matcher(micro_config(), device="cpu", seed=4, zoom=1.5)
    pair = (tmp_path / "0.png", tmp_path / "1.png")
    many = list(m.match_many([pair, pair], batch_size=1))
    single = m.match(*pair)
    for r in many:
        assert torch.allclose(single.warp, r.warp, atol=1e-5) and torch.allclose(single.certainty, r.certainty, atol=1e-5)
    # the cropped side's coordinates stay in its box (snapped to whole pixels: 1 px = 2/60 in y)
    cols = slice(0, 2) if side == 0 else slice(2, 4)
    lo, hi, px = torch.tensor([-0.5, -0.25]), torch.tensor([0.5, 0.75]), torch.tensor([2 / 80, 2 / 60])
    assert ((single.warp[..., cols] >= lo - px) & (single.warp[..., cols] <= hi + px)).all()
    if side == 0:  # A's grid spans the crop
        assert single.warp[..., 0].min() < -0.45 and single.warp[..., 1].max() > 0.7


def test_gp_extra_support_lends_its_own_coordinates():
    """A feature of A that only the extra support (B at another scale) describes gets that
    support's coordinates from the posterior; without it, none."""
    from roma_sfm.models.gp import GP

    torch.manual_seed(0)
    gp = GP(gp_dim=16, temperature=0.05)
    eye = torch.eye(6)
    y = eye[:4].T.reshape(1, 6, 2, 2)  # B: four features on a 2x2 grid
    extra = eye[4].reshape(1, 6, 1, 1)  # B downsampled: one feature at the image centre
    x = eye[4].reshape(1, 6, 1, 1)  # A shows the downsampled view's content
    with torch.no_grad():
        target = gp.embed_coords(1, 1, 1, "cpu").flatten()
        with_extra = gp(x, y, [extra]).flatten()
        without = gp(x, y).flatten()
    # one support point that matches exactly: its embedding, shrunk by the GP's noise term
    assert torch.allclose(with_extra, target / (1 + gp.noise), atol=0.02)
    assert without.abs().max() < 0.05 * target.abs().max()


def test_coarse_only_decoding_stops_at_the_coarse_scale():
    model = RoMa(micro_config()).eval()
    A, B = rand_images()
    with torch.no_grad():
        f_A, f_B = model.encode(A), model.encode(B)
        out = model.decode(f_A, f_B, coarse_only=True)
        full = model.decode(f_A, f_B)
    assert set(out) == {16}
    assert torch.allclose(out[16]["flow"], full[16]["flow"], atol=1e-6)


def test_to_tensor_gives_the_plain_layout():
    """Decoded images are HWC; the model input must not keep those strides (they make the
    encoder's outputs lose the channels-last layout the refiners are fast on)."""
    from roma_sfm.matcher import to_tensor

    rgb = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    for fit in ("stretch", "pad"):
        assert to_tensor(rgb, (56, 56), fit).is_contiguous()


@pytest.mark.parametrize("found_by", [0, 1])
@pytest.mark.parametrize("crop_side", [0, 1])
def test_scale_search_when_the_match_finds_too_little(monkeypatch, found_by, crop_side):
    """A match with too few certain matches to measure a scale triggers the scale search: coarse
    matches A->B, then B->A, each with the other image's scale support; the first that finds a
    zoom gives the crop, on the image it names, and the pair is matched again on it."""
    import roma_sfm.matcher as matcher_module

    rng = np.random.default_rng(0)
    a, b = (rng.random((300, 400, 3)) * 255).astype(np.uint8), (rng.random((240, 320, 3)) * 255).astype(np.uint8)
    first = MatchResult(identity_result(30, 40, (400, 300)).warp, torch.zeros(30, 40), (400, 300), (320, 240))
    seen = []
    m = random_matcher(micro_config(), device="cpu", seed=5, zoom=1.5)

    def fake_crop(res, zoom, size, fit="stretch"):
        if res is first or res.warp.shape[0] != m.coarse_res[0] // 14:  # only the search's coarse matches
            return None
        direction = 0 if res.size_A == (400, 300) else 1  # x = A for A->B
        seen.append(direction)
        return (crop_side, (-0.5, -0.5, 0.5, 0.5)) if direction == found_by else None

    monkeypatch.setattr(matcher_module, "zoom_crop", fake_crop)
    monkeypatch.setattr(matcher_module, "zoom_scale", lambda res, *a, **k: None if res is first else 1.0)
    out = m.zoom_in(first, a, b)
    assert seen == [0, 1][:found_by + 1]
    cropped = (found_by, 1 - found_by)[crop_side]  # the search's side 0 is its x
    ka, kb, _ = out.sample(num=300, balanced=False)
    pts, (w, h) = (ka, (400, 300)) if cropped == 0 else (kb, (320, 240))
    assert len(pts) > 50
    assert (pts[:, 0] > 0.25 * w - 1).all() and (pts[:, 0] < 0.75 * w + 1).all()
    assert (pts[:, 1] > 0.25 * h - 1).all() and (pts[:, 1] < 0.75 * h + 1).all()
    # a re-match that still finds too little is dropped: the pair keeps its first match
    monkeypatch.setattr(matcher_module, "zoom_scale", lambda res, *a, **k: None)
    assert m.zoom_in(first, a, b) is first
    assert random_matcher(micro_config(), device="cpu", seed=5, zoom=0).zoom_in(first, a, b) is first


@pytest.mark.parametrize("rounds", [1, 2])
def test_zoom_in_crops_again_while_still_zoomed(monkeypatch, rounds):
    """A re-match that still shows a zoom is cropped again (a crop of the crop), up to ``rounds``."""
    import roma_sfm.matcher as matcher_module

    monkeypatch.setattr(matcher_module, "zoom_crop", lambda res, *a, **k: (0, (-0.5, -0.5, 0.5, 0.5)))
    rng = np.random.default_rng(1)
    a, b = ((rng.random((300, 400, 3)) * 255).astype(np.uint8) for _ in range(2))
    m = random_matcher(micro_config(), device="cpu", seed=6, zoom=1.5)
    ka, _, _ = m.zoom_in(identity_result(30, 40, (400, 300)), a, b, rounds=rounds).sample(num=300, balanced=False)
    half = 0.5 ** rounds  # the central half of A, then the central half of that
    assert len(ka) > 50
    assert (abs(ka[:, 0] - 200) <= 200 * half + 1).all() and (abs(ka[:, 1] - 150) <= 150 * half + 1).all()
    assert abs(ka[:, 0] - 200).max() > 200 * half * 0.8  # and it spans that crop
