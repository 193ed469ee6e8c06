"""Training losses against hand-computed values."""
import math

import pytest
import torch

from roma_sfm.models.gp import pixel_grid
from roma_sfm.train.losses import (LossConfig, charbonnier, coarse_loss, fine_loss, nearest_anchor, pck,
                                   pixel_epe, resample_gt, roma_loss)


def test_nearest_anchor_hand_values():
    a = 1 / 64  # anchor centres are -1 + (2k+1)/64
    pts = torch.tensor([[-1 + a, -1 + a],  # anchor (row 0, col 0)
                        [-1 + a, -1 + 3 * a],  # row 1, col 0 -> 64
                        [1 - a, 1 - a],  # last anchor
                        [0.01, -0.01],  # col 32, row 31
                        [-1.0, 1.0]])  # on the border: clamped into the grid
    assert nearest_anchor(pts).tolist() == [0, 64, 4095, 31 * 64 + 32, 63 * 64 + 0]


def test_nearest_anchor_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(500, 2, generator=g) * 2 - 1
    lin = torch.linspace(-1 + 1 / 64, 1 - 1 / 64, 64)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    anchors = torch.stack((gx, gy), -1).reshape(-1, 2)
    brute = torch.cdist(pts, anchors).argmin(dim=1)
    assert torch.equal(nearest_anchor(pts), brute)


def test_charbonnier_hand_values():
    # 0.1^0.5 * (3^2 + 1)^0.25
    assert float(charbonnier(torch.tensor(0.3), 0.1, 0.5)) == pytest.approx(math.sqrt(0.1) * 10**0.25, rel=1e-6)
    assert float(charbonnier(torch.tensor(0.0), 0.04, 0.5)) == pytest.approx(0.2, rel=1e-6)
    # far from cs it is ~ sqrt(epe): what makes the regression robust
    assert float(charbonnier(torch.tensor(0.25), 1e-6, 0.5)) == pytest.approx(0.5, rel=1e-4)


def test_coarse_loss_hand_values():
    b, h, w = 1, 2, 2
    warp = torch.zeros(b, h, w, 2)
    warp[0, 0, 0] = torch.tensor([-1 + 1 / 64, -1 + 1 / 64])  # anchor 0; the others: anchor 32*64+32
    target = torch.full((h, w), 32 * 64 + 32)
    target[0, 0] = 0
    logits = torch.zeros(b, 4096, h, w)
    L = 3.0
    for i in range(h):
        for j in range(w):
            logits[0, target[i, j], i, j] = L
    logits[0, :, 1, 1] = torch.randn(4096) * 50  # garbage on the non-covisible pixel
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    cert = torch.zeros(b, 1, h, w)
    out = coarse_loss(logits, cert, warp, mask)
    assert float(out["cls"]) == pytest.approx(math.log(4095 + math.exp(L)) - L, rel=1e-5)
    assert float(out["gm_cert"]) == pytest.approx(math.log(2), rel=1e-6)  # logit 0 vs any {0,1} target


def test_fine_loss_hand_values():
    h, w = 2, 3
    warp = torch.zeros(1, h, w, 2)
    flow = torch.zeros(1, 2, h, w)
    flow[0, 0, 0, 0] = 0.3  # epe 0.3
    flow[0, :, 0, 1] = torch.tensor([0.3, 0.4])  # epe 0.5
    flow[0, 0, 1, 2] = 10.0  # huge error, but not covisible
    weight = torch.ones(1, h, w)
    weight[0, 1, 2] = 0
    cs = 1e-2 * 4
    out = fine_loss(flow, torch.zeros(1, 1, h, w), warp, weight, scale=4, cfg=LossConfig(c=1e-2))
    vals = [math.sqrt(cs) * ((e / cs) ** 2 + 1) ** 0.25 for e in (0.3, 0.5, 0, 0, 0)]
    assert float(out["reg"]) == pytest.approx(sum(vals) / 5, rel=1e-5)
    assert float(out["cert"]) == pytest.approx(math.log(2), rel=1e-6)


def test_resample_gt_is_exact_for_affine_warps_and_conservative_mask():
    H, W = 32, 48
    A = torch.tensor([[0.9, 0.1], [-0.2, 1.1]])
    t = torch.tensor([0.05, -0.1])
    warp = (pixel_grid(H, W) @ A.T + t)[None]
    mask = torch.ones(1, H, W)
    mask[0, :, :12] = 0  # the left quarter is not covisible
    w_s, m_s = resample_gt(warp, mask, (8, 12))
    expected = pixel_grid(8, 12) @ A.T + t  # bilinear sampling of an affine field is exact
    assert torch.allclose(w_s[0], expected, atol=1e-5)
    assert (m_s[0, :, :3] < 0.99).all() and (m_s[0, :, 3:] > 0.99).all()
    # a coarse pixel whose footprint straddles the border is not fully covisible
    w2, m2 = resample_gt(warp, mask, (16, 16))  # 16 columns over 48: centres at 1.5 + 3k
    assert (m2[0, :, 3] < 0.99).all() and (m2[0, :, 4] > 0.99).all()


def _fake_corresps(warp: torch.Tensor, scales=(16, 8, 4, 2, 1)) -> dict:
    """Perfect predictions at every scale (anchor logits +20 at the GT anchor)."""
    b, H, W, _ = warp.shape
    out = {}
    for s in scales:
        h, w = (H // 14, W // 14) if s == 16 else (H // s, W // s)
        gt, _ = resample_gt(warp, torch.ones(b, H, W), (h, w))
        flow = gt.permute(0, 3, 1, 2).clone().requires_grad_(True)
        d = {"flow": flow, "flow_pre_delta": flow.detach().clone(),
             "certainty": torch.full((b, 1, h, w), 20.0, requires_grad=True)}
        if s == 16:
            cls = torch.zeros(b, 4096, h, w)
            cls.scatter_(1, nearest_anchor(gt)[:, None], 20.0)
            d["gm_cls"] = cls.requires_grad_(True)
            d["gm_certainty"] = torch.full((b, 1, h, w), 20.0, requires_grad=True)
        out[s] = d
    return out


def test_roma_loss_perfect_prediction_is_the_floor_and_backprops():
    H, W = 56, 56
    warp = (pixel_grid(H, W) * 0.8 + 0.05)[None].repeat(2, 1, 1, 1)
    mask = torch.ones(2, H, W)
    cfg = LossConfig(c=1e-3)
    corr = _fake_corresps(warp)
    total, parts = roma_loss(corr, warp, mask, cfg)
    floor = sum(math.sqrt(cfg.c * s) for s in (16, 8, 4, 2, 1))  # charbonnier(0) = cs^a per scale
    # cls: log(4095 + e^20) - 20 ~ 8.5e-6; BCE(20, 1) ~ 2e-9
    assert parts["cls"] == pytest.approx(0.0, abs=1e-4)
    assert float(total.detach()) == pytest.approx(floor, rel=1e-3)
    total.backward()
    for s, d in corr.items():
        assert torch.isfinite(d["flow"].grad).all()
    assert corr[16]["gm_cls"].grad is not None


def test_local_window_excludes_pixels_far_from_the_previous_estimate():
    H, W = 56, 56
    warp = pixel_grid(H, W)[None]
    mask = torch.ones(1, H, W)
    cfg = LossConfig(c=1e-3)
    corr = _fake_corresps(warp)
    # scale 4: the incoming estimate of the left half is off by 40 px (> 8 px of scale 4 = 32 px),
    # and the refined flow there is garbage: it must be ignored by the regression...
    pre = corr[4]["flow_pre_delta"]
    pre[:, 0, :, :7] += 40 * 2 / W
    with torch.no_grad():
        corr[4]["flow"][:, 0, :, :7] += 1.0
    _, parts = roma_loss(corr, warp, mask, cfg)
    assert parts["reg4"] == pytest.approx(math.sqrt(cfg.c * 4), rel=1e-4)
    # ... and the certainty must learn "not reliable" there (target 0 vs logit 20: BCE = 20 on half)
    assert parts["cert4"] == pytest.approx(0.5 * 20.0, rel=1e-3)
    # 20 px off (< 32 px) is still inside the window: now the garbage is supervised
    corr = _fake_corresps(warp)
    corr[4]["flow_pre_delta"][:, 0, :, :7] += 20 * 2 / W
    with torch.no_grad():
        corr[4]["flow"][:, 0, :, :7] += 1.0
    _, parts = roma_loss(corr, warp, mask, cfg)
    assert parts["reg4"] > 0.4


def test_pixel_epe_and_pck():
    H, W = 4, 8
    warp = pixel_grid(H, W)[None]
    flow = warp.permute(0, 3, 1, 2).clone()
    flow[0, 0, 0, :4] += 2 * 2 / W  # 2 px in x
    flow[0, 1, 1, :4] += 4 * 2 / H  # 4 px in y
    flow[0, 0, 2, :] += 100.0  # non-covisible row
    mask = torch.ones(1, H, W)
    mask[0, 2] = 0
    e = pixel_epe(flow, warp, (H, W))
    assert e[0, 0, 0] == pytest.approx(2.0, rel=1e-5) and e[0, 1, 0] == pytest.approx(4.0, rel=1e-5)
    r = pck(flow, warp, mask)
    assert r["pck@1"] == pytest.approx(16 / 24)
    assert r["pck@3"] == pytest.approx(20 / 24)
    assert r["pck@5"] == pytest.approx(1.0)
