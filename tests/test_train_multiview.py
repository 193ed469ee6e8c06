"""Sparse supervision from a reconstruction's tracks: the index, the pairs, the point-sampled loss."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from roma_sfm.pipelines.evaluate import read_poses_gt
from roma_sfm.train.losses import LossConfig, charbonnier, roma_loss, sparse_loss
from roma_sfm.train.multiview import TrackIndex, TrackPairs, write_track_index
from roma_sfm.train.trainer import TrainConfig, collate, train

from conftest import ROOT
from test_train_trainer import TINY

SCENE = ROOT / "sample_scenes" / "corner"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    out = tmp_path_factory.mktemp("mv")
    subprocess.run([sys.executable, "-m", "roma_sfm.cli.main", "reconstruct", str(SCENE / "images"), "-o",
                    str(out / "rec"), "--matcher", "sift", "--pairs", "exhaustive"], check=True,
                   capture_output=True)
    stats = write_track_index(out / "rec" / "sparse" / "0", SCENE / "images", out / "tracks.npz")
    assert stats["images"] >= 6 and stats["pairs"] >= 5
    return out / "tracks.npz"


def test_track_correspondences_obey_the_true_epipolar_geometry(index):
    ix = TrackIndex(index)
    gt = read_poses_gt(SCENE / "poses_gt.txt")
    for i, j in ix.pairs[:6]:
        a, b = ix.correspondences(int(i), int(j))
        assert len(a) >= 30
        ca, cb = gt[ix.names[i]], gt[ix.names[j]]
        R = cb.R @ ca.R.T
        t = cb.t - R @ ca.t
        E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ R
        F = np.linalg.inv(cb.K).T @ E @ np.linalg.inv(ca.K)
        # GT cx, cy have pixel centres at integers; the index is in COLMAP's convention (+0.5)
        ha = np.c_[a - 0.5, np.ones(len(a))]
        hb = np.c_[b - 0.5, np.ones(len(b))]
        lines = ha @ F.T
        dist = np.abs((hb * lines).sum(1)) / np.hypot(lines[:, 0], lines[:, 1])
        assert np.median(dist) < 2.0, (ix.names[i], ix.names[j], np.median(dist))
        # a wrong pairing of the same points is far off the lines
        assert np.median(np.abs((np.roll(hb, 7, 0) * lines).sum(1)) / np.hypot(lines[:, 0], lines[:, 1])) > 5


@pytest.mark.parametrize("free_aspect", [False, True])
def test_track_pairs_keep_correspondences_through_crop_and_resize(index, free_aspect):
    ds = TrackPairs(index, (112, 140), seed=1, augment=False, min_crop=0.6, max_points=64, free_aspect=free_aspect)
    ix = ds.indexes[0]
    for n in range(4):
        s = ds.pair(n)
        v = s["kpts_valid"]
        assert v.sum() >= ds.min_points and s["im_A"].shape == (112, 140, 3)
        assert (np.abs(s["kpts_A"][v]) < 1).all() and (np.abs(s["kpts_B"][v]) < 1).all()
        assert not s["kpts_A"][~v].any()
    a, b = ds.pair(3), ds.pair(3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert ix.images.is_dir()


def test_random_crop_free_aspect_draws_each_side_apart():
    from roma_sfm.train.multiview import random_crop

    rng = np.random.default_rng(0)
    kept = [random_crop(rng, (400, 300), 0.5) for _ in range(50)]
    free = [random_crop(rng, (400, 300), 0.5, free_aspect=True) for _ in range(50)]
    for x0, y0, w, h in kept + free:
        assert 200 <= w <= 400 and 150 <= h <= 300 and x0 + w <= 400 and y0 + h <= 300
    assert max(abs(w / h - 4 / 3) for _, _, w, h in kept) < 0.02  # the photo's aspect
    aspects = [w / h for _, _, w, h in free]
    assert min(aspects) < 1.0 and max(aspects) > 1.8


def test_sparse_loss_is_the_dense_loss_sampled_at_the_points():
    torch.manual_seed(0)
    B, K, h, w = 2, 50, 16, 20
    gt = torch.rand(B, 2, h, w) * 1.6 - 0.8  # a dense warp at the model's grid
    kA = torch.rand(B, K, 2) * 1.6 - 0.8
    kB = torch.nn.functional.grid_sample(gt, kA[:, None], align_corners=False)[:, :, 0].transpose(1, 2)
    valid = torch.ones(B, K, dtype=torch.bool)
    cfg = LossConfig()
    losses = []
    for offset in (0.0, 0.01, 0.05):
        out = {1: {"flow": gt + offset, "certainty": torch.zeros(B, 1, h, w)}}
        total, parts = sparse_loss(out, kA, kB, valid, (h, w), cfg)
        expected = charbonnier(torch.tensor(offset * 2**0.5), cfg.c).item()
        assert parts["sp_reg1"] == pytest.approx(expected, rel=1e-3, abs=1e-6)
        losses.append(total.item())
    assert losses[0] < losses[1] < losses[2]
    # invalid points do not count
    out = {1: {"flow": gt.clone(), "certainty": torch.zeros(B, 1, h, w)}}
    bad = kB.clone()
    bad[:, :10] += 0.5
    v2 = valid.clone()
    v2[:, :10] = False
    assert sparse_loss(out, kA, bad, v2, (h, w), cfg)[1]["sp_reg1"] == pytest.approx(
        charbonnier(torch.tensor(0.0), cfg.c).item(), abs=1e-6)

def test_mixed_batches_keep_sparse_samples_out_of_the_dense_certainty():
    H = W = 8
    dense = {"im_A": torch.zeros(3, H, W), "im_B": torch.zeros(3, H, W), "warp": torch.zeros(H, W, 2),
             "mask": torch.ones(H, W)}
    sparse = {"im_A": torch.zeros(3, H, W), "im_B": torch.zeros(3, H, W), "kpts_A": torch.zeros(4, 2),
              "kpts_B": torch.zeros(4, 2), "kpts_valid": torch.ones(4, dtype=torch.bool)}
    batch = collate([dense, sparse])
    assert batch["dense"].tolist() == [1.0, 0.0] and batch["kpts_valid"].tolist() == [[False] * 4, [True] * 4]
    assert not batch["mask"][1].any()

    def loss(cert_of_sparse):
        cert = torch.zeros(2, 1, H, W)
        cert[1] = cert_of_sparse
        out = {1: {"flow": torch.zeros(2, 2, H, W), "certainty": cert}}
        return roma_loss(out, batch["warp"], batch["mask"], LossConfig(), batch["dense"])[0].item()

    assert loss(-5.0) == pytest.approx(loss(5.0))  # the sparse sample's certainty is not supervised here


def test_training_on_tracks(index, tmp_path):
    cfg = TrainConfig(model=TINY.to_dict(), train_roots=(str(SCENE / "images"),), val_root=None,
                      resolution=(56, 56), batch_size=2, steps=2, warmup_steps=1, num_workers=0, progress=False,
                      out_dir=str(tmp_path / "run"), track_indexes=(str(index),), p_tracks=0.5, seed=4, threads=1,
                      tracks={"min_crop": 0.5, "free_aspect": True})
    res = train(cfg)
    assert res["finished"] and res["skipped_steps"] == 0 and np.isfinite(res["last_losses"]["total"])
    with pytest.raises(TypeError):  # an unknown TrackPairs option is an error, not ignored
        train(TrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "run2"), "tracks": {"min_crops": 0.5}}))
