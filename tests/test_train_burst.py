"""The GPU burst, run here on the CPU: the pack travels small and complete, the run sizes itself to
its seconds and brings back fp16 weights that load."""
import json

import cv2
import numpy as np
import pytest

from roma_sfm.train.burst import pack, pack_config, run
from roma_sfm.train.multiview import TrackIndex
from roma_sfm.weights import load_checkpoint

from test_train_trainer import TINY


def texture(rng, w, h):
    return cv2.resize(rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8), (w, h),
                      interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A small copy of the shared data's train layout (bsds500 splits, one multiview set) and a
    track index of that set outside it, as the training sessions keep them."""
    root = tmp_path_factory.mktemp("shared")
    data, rng = root / "data" / "train", np.random.default_rng(0)
    for rel in ("bsds500/train", "bsds500/test", "bsds500/val"):
        (data / rel).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(data / rel / f"{i}.png"), texture(rng, 200, 150))
    views = data / "multiview" / "street"
    views.mkdir(parents=True)
    names = [f"{i:02d}.jpg" for i in range(3)]
    for n in names:
        cv2.imwrite(str(views / n), texture(rng, 240, 180), [cv2.IMWRITE_JPEG_QUALITY, 98])
    (views / "README.txt").write_text("not a photo")
    xy = rng.uniform([1, 1], [239, 179], (3 * 200, 2)).astype(np.float32)
    (root / "tracks").mkdir()
    np.savez(root / "tracks" / "street.npz", images=np.array("../data/train/multiview/street"),
             names=np.array(names), sizes=np.array([[240, 180]] * 3, np.int32),
             offsets=np.array([0, 200, 400, 600], np.int64), xy=xy,
             point_ids=np.tile(np.arange(200), 3).astype(np.int64), pairs=np.array([[0, 1], [0, 2], [1, 2]], np.int32))
    return data, root / "tracks" / "street.npz"


def test_pack_reencodes_every_photo_and_points_the_tracks_at_the_copies(shared, tmp_path):
    data, index = shared
    stats = pack(tmp_path / "pack", data, [index], quality=80)
    assert stats["images"] == 9 and stats["bytes"] > 0
    for src in data.rglob("*"):
        if src.suffix in (".png", ".jpg"):
            copy = tmp_path / "pack" / src.relative_to(data)
            img = cv2.imread(str(copy))
            assert img is not None and img.shape == cv2.imread(str(src)).shape  # same pixel size, a JPEG
            assert copy.read_bytes()[:2] == b"\xff\xd8"
    assert not list((tmp_path / "pack").rglob("README.txt"))
    ix = TrackIndex(tmp_path / "pack" / "tracks" / "street.npz")
    assert ix.images == (tmp_path / "pack" / "multiview" / "street").resolve()
    assert ix.names == TrackIndex(index).names and np.array_equal(ix.xy, TrackIndex(index).xy)
    cfg = pack_config(tmp_path / "pack", batch_size=8)
    assert cfg.batch_size == 8 and cfg.p_tracks > 0 and len(cfg.track_indexes) == 1
    assert cfg.val_root.endswith("bsds500/val") and any(r.endswith("multiview") for r in cfg.scene_roots)


def test_run_sizes_its_schedule_to_the_seconds_and_writes_fp16_weights(shared, tmp_path):
    data, index = shared
    pack(tmp_path / "pack", data, [index])
    out = tmp_path / "out"
    res = run(tmp_path / "pack", out, seconds=15, init_from=None, probe_seconds=1.0, workers=0,
              model=TINY.to_dict(), resolution=(56, 56), batch_size=2, val_pairs=2, threads=1,
              precision="fp32", tracks={"min_points": 4}, lr_scale={})  # TINY has no coarse context
    # the schedule is sized from the measured rate to end inside the time left after the probe
    assert 0 < res["steps_planned"] <= res["steps_per_second"] * 15
    assert res["step"] == res["steps_planned"] or res["stopped_by"] == "max_seconds"
    assert res["step"] >= res["steps_planned"] // 3  # sized to the machine, not a guess
    assert res["seconds"] < 15 + 10  # the probe, the run and the export inside the budget (+ slack)
    summary = json.loads((out / "burst.json").read_text())
    assert summary["step"] == res["step"]
    if res["step"] == res["steps_planned"]:
        assert "pck@3" in summary["val"]
    for name in ("burst-ema.safetensors", "burst-raw.safetensors"):
        model, meta = load_checkpoint(out / name)
        assert meta["run_step"] == res["step"]
    header = json.loads((out / "burst-raw.safetensors").read_bytes()[8:8 + int.from_bytes(
        (out / "burst-raw.safetensors").read_bytes()[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} <= {"F16", "I64"}
    assert (out / "burst-log.csv").exists() and (out / "burst-train_config.json").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["burst-ema.safetensors", "burst-raw.safetensors", "burst.json", "burst-log.csv", "burst-val.csv",
         "burst-train_config.json"])  # few files: what a borrowed machine may send back
