"""Pair selection: exhaustive, sequential, retrieval, from file, auto; retrieval recall."""
from pathlib import Path

import numpy as np
import pytest

from roma_sfm.pipelines import pairs
from synthetic import random_texture
from roma_sfm.pipelines.utils import read_pairs

SAMPLE = Path(__file__).resolve().parents[1] / "sample_scenes" / "corner" / "images"


def test_exhaustive_and_sequential():
    names = [f"{i:02d}" for i in range(10)]
    ex = pairs.pairs_exhaustive(names)
    assert len(ex) == 45 and len({tuple(sorted(p)) for p in ex}) == 45
    seq = pairs.pairs_sequential(names, window=2, quadratic=False)
    assert seq[:3] == [("00", "01"), ("00", "02"), ("01", "02")] and len(seq) == 9 + 8
    quad = pairs.pairs_sequential(names, window=2, quadratic=True)
    assert ("00", "04") in quad and ("00", "08") in quad and ("00", "03") not in quad
    assert len({tuple(sorted(p)) for p in quad}) == len(quad)
    assert pairs.pairs_sequential(["a"], 3) == [] and pairs.pairs_exhaustive([]) == []


def test_retrieval_dedup_and_recall():
    names = ["a", "b", "c", "d"]
    d = np.eye(4, dtype=np.float32) + 0.5 * np.eye(4, k=1, dtype=np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    p = pairs.pairs_retrieval(names, d, num_matched=1)
    assert len({tuple(sorted(x)) for x in p}) == len(p)  # unordered pairs deduplicated
    assert ("a", "b") in p and ("c", "d") in p
    assert pairs.retrieval_recall(p, [("b", "a")]) == 1.0
    assert pairs.retrieval_recall([("a", "b")], [("a", "b"), ("c", "a")]) == 0.5


def test_retrieval_on_images_finds_neighbours(tmp_path):
    """VLAD on RootSIFT: views of the same texture retrieve each other, not another texture."""
    import cv2

    for scene in range(2):
        tex = random_texture(300, 400, seed=10 + scene)
        for k in range(3):
            crop = cv2.resize(tex[20 * k:200 + 20 * k, 30 * k:300 + 30 * k], (240, 180))
            cv2.imwrite(str(tmp_path / f"s{scene}_{k}.png"), crop)
    out = pairs.main(tmp_path, tmp_path / "pairs.txt", mode="retrieval", num_matched=2)
    gt = [(f"s{s}_{i}.png", f"s{s}_{j}.png") for s in range(2) for i in range(3) for j in range(i + 1, 3)]
    assert pairs.retrieval_recall(out, gt) >= 0.8
    assert read_pairs(tmp_path / "pairs.txt") == out


def test_encoder_hook(tmp_path):
    for i in range(4):
        cv2 = pytest.importorskip("cv2")
        cv2.imwrite(str(tmp_path / f"{i}.png"), random_texture(60, 80, seed=i))
    calls = []

    def encoder(img):  # a "global descriptor" hook, e.g. a matcher's encoder
        calls.append(img.shape)
        return np.array([img.shape[0], img.mean(), 1.0], np.float32)

    out = pairs.main(tmp_path, tmp_path / "p.txt", mode="retrieval", num_matched=1, encoder=encoder)
    assert len(calls) == 4 and len(out) >= 2


def test_file_and_auto(tmp_path):
    assert SAMPLE.is_dir()
    f = tmp_path / "in.txt"
    f.write_text("# comment\n0000.jpg 0001.jpg\n0001.jpg 0000.jpg\n0002.jpg missing.jpg\n")
    out = pairs.main(SAMPLE, tmp_path / "pairs.txt", mode=str(f))
    assert out == [("0000.jpg", "0001.jpg")]
    auto = pairs.main(SAMPLE, tmp_path / "pairs.txt", mode="auto")
    assert len(auto) == 28  # 8 images <= 30: exhaustive
    with pytest.raises(ValueError):
        pairs.main(SAMPLE, tmp_path / "pairs.txt", mode="nonsense")


def test_auto_limit_follows_the_matchers_kind(tmp_path):
    """auto: SIFT pairs all 12 images (<= 30); a dense matcher takes retrieval above 11 images, where
    its top-k lists fewer pairs; an unknown kind is an error."""
    cv2 = pytest.importorskip("cv2")
    for i in range(12):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), random_texture(60, 80, seed=i))

    def encoder(img):
        return np.array([img.mean(), img.std(), 1.0], np.float32)

    assert pairs.auto_limit("sparse") > 12 >= pairs.auto_limit("dense")
    sparse = pairs.main(tmp_path, tmp_path / "p.txt", mode="auto", num_matched=3, encoder=encoder)
    dense = pairs.main(tmp_path, tmp_path / "p.txt", mode="auto", num_matched=3, encoder=encoder, kind="dense")
    assert len(sparse) == 66 and 12 * 3 // 2 <= len(dense) <= 12 * 3 < 66
    assert len(pairs.main(tmp_path, tmp_path / "p.txt", mode="auto", kind="dense", max_exhaustive=12)) == 66
    with pytest.raises(ValueError, match="matcher kind"):
        pairs.main(tmp_path, tmp_path / "p.txt", mode="auto", kind="dens")
