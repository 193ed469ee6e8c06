"""Batch matching of collections: feature cache, streaming, changed images, Ray shards and retries."""
import os
import shutil
import sys
from itertools import combinations
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from conftest import micro_config
from roma_sfm.cli.main import normalise_ray_flag
from roma_sfm.matcher import FeatureCache, random_matcher
from roma_sfm.pipelines import match
from roma_sfm.pipelines import h5io
from roma_sfm.pipelines import matchers
from synthetic import make_homography_scene
from roma_sfm.pipelines.utils import write_pairs


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    make_homography_scene(root / "images", num_images=5, size=(160, 120), seed=4)
    names = sorted(p.name for p in (root / "images").iterdir())
    return root / "images", list(combinations(names, 2))


def _same_files(a: Path, b: Path, pairs) -> None:
    for n0, n1 in pairs:
        for x, y in zip(h5io.read_matches(a, n0, n1), h5io.read_matches(b, n0, n1)):
            assert np.array_equal(x, y), (n0, n1)


def test_feature_cache_gives_the_same_matches(scene):
    images, pairs = scene
    m = random_matcher(micro_config(), device="cpu", seed=3)
    paths = [(str(images / a), str(images / b)) for a, b in pairs]
    for bs in (1, 3):  # cached or not, the same batches give bit-identical results
        plain = list(m.match_many(paths, batch_size=bs, cache_mb=0))
        cached = list(m.match_many(paths, batch_size=bs))
        for x, y in zip(plain, cached):
            assert torch.equal(x.warp, y.warp) and torch.equal(x.certainty, y.certainty)
    # one pair per batch: the order does not matter either (what makes Ray shards reproducible)
    rev = list(m.match_many(paths[::-1], batch_size=1))[::-1]
    for x, y in zip(list(m.match_many(paths, batch_size=1)), rev):
        assert torch.equal(x.warp, y.warp)
    # and it equals matching pair by pair up to float noise (there both images share one encoder batch)
    single = m.match(*paths[0])
    assert torch.allclose(single.warp, plain[0].warp, atol=1e-4)


def test_feature_cache_is_bounded_lru():
    feats = {1: torch.zeros(1000)}  # 4000 bytes
    cache = FeatureCache(max_bytes=10_000)
    for k in range(5):
        cache.put(k, feats)
    assert cache.bytes <= 10_000 and len(cache.items) == 2
    assert cache.get(0) is None and cache.get(4) is not None
    big = FeatureCache(max_bytes=100)
    big.put("x", feats)  # larger than the budget: not kept
    assert big.get("x") is None and big.bytes == 0


def test_pairs_file_is_streamed_and_resumed(scene, tmp_path):
    images, pairs = scene
    pf = tmp_path / "pairs.txt"
    write_pairs(pairs[:4], pf)
    out = tmp_path / "m.h5"
    st = match.main(pf, images, out, "sift", progress=False)
    assert (st.num_matched, st.num_resumed) == (4, 0)
    write_pairs(pairs, pf)
    st = match.main(pf, images, out, "sift", progress=False)
    assert (st.num_matched, st.num_resumed) == (len(pairs) - 4, 4)
    assert len(h5io.list_pairs(out)) == len(pairs)


def test_changed_image_is_matched_again(scene, tmp_path):
    src, pairs = scene
    images = tmp_path / "images"
    shutil.copytree(src, images)
    out = tmp_path / "m.h5"
    match.main(pairs, images, out, "sift", progress=False)
    before = h5io.read_matches(out, "000.png", "001.png")
    im = cv2.imread(str(images / "001.png"))
    cv2.imwrite(str(images / "001.png"), cv2.flip(im, 1))  # same name, other content
    st = match.main(pairs, images, out, "sift", progress=False)
    involved = sum("001.png" in p for p in pairs)
    assert (st.num_matched, st.num_resumed) == (involved, len(pairs) - involved)
    after = h5io.read_matches(out, "000.png", "001.png")
    assert not np.array_equal(before[1], after[1])
    st = match.main(pairs, images, out, "sift", progress=False)  # now up to date
    assert (st.num_matched, st.num_resumed) == (0, len(pairs))


def test_disk_full_keeps_what_was_written(scene, tmp_path, monkeypatch):
    images, pairs = scene
    out = tmp_path / "m.h5"
    match.main(pairs[:3], images, out, "sift", progress=False)
    real_savez = np.savez
    calls = []

    def full(fh, **kw):  # the 3rd journal write of the next run hits a full disk
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_savez(fh, **kw)

    monkeypatch.setattr(h5io.np, "savez", full)
    with pytest.raises(OSError, match="free some space and run the same command again"):
        match.main(pairs, images, out, "sift", progress=False)
    monkeypatch.setattr(h5io.np, "savez", real_savez)
    assert not list(h5io.journal_dir(out).glob("*.tmp"))  # no half-written entry left behind
    st = match.main(pairs, images, out, "sift", progress=False)
    assert st.num_resumed == 3 + 2 and st.num_matched == len(pairs) - 5  # the 2 written before the failure kept
    with h5py.File(out, "r") as f:
        assert f.attrs["coordinates"] == h5io.COORDINATES


def test_leftover_shards_of_a_killed_run_are_recovered(scene, tmp_path):
    images, pairs = scene
    out = tmp_path / "m.h5"
    shards = h5io.shards_dir(out)
    shards.mkdir()
    match.main(pairs[:3], images, shards / "shard-000000.h5", "sift", progress=False)
    match.main(pairs[3:5], images, shards / "shard-000001.h5", "sift", progress=False, num_samples=50)  # other config
    st = match.main(pairs, images, out, "sift", progress=False)
    assert (st.num_resumed, st.num_matched) == (3, len(pairs) - 3)
    assert not shards.exists() or not any(shards.iterdir())
    ref = tmp_path / "ref.h5"
    match.main(pairs, images, ref, "sift", progress=False)
    _same_files(out, ref, pairs)


def test_ray_flag_address_is_optional():
    assert normalise_ray_flag(["match", "imgs", "--ray"]) == ["match", "imgs", "--ray", "local"]
    assert normalise_ray_flag(["match", "--ray", "-o", "x.h5", "imgs"])[:3] == ["match", "--ray", "local"]
    assert normalise_ray_flag(["match", "--ray", "10.0.0.1:6379"]) == ["match", "--ray", "10.0.0.1:6379"]
    assert normalise_ray_flag(["match", "--ray", "auto", "imgs"]) == ["match", "--ray", "auto", "imgs"]
    assert normalise_ray_flag(["match", "--ray", "imgs"]) == ["match", "--ray", "local", "imgs"]


class CrashOnceMatcher(matchers.SiftMatcher):
    """SIFT that kills its worker process the first time it matches a given pair (a marker file
    makes it crash once only), to exercise Ray's retry of a failed worker's shard."""

    def __init__(self, marker: str, crash_on: str):
        super().__init__()
        self.marker, self.crash_on = marker, crash_on

    def __getstate__(self):
        return {**super().__getstate__(), "marker": self.marker, "crash_on": self.crash_on}

    @property
    def name(self) -> str:  # the same signature as plain SIFT: results must be identical
        return matchers.SiftMatcher.name.fget(self)

    def match(self, a, b):
        if Path(b).name == self.crash_on and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)  # the worker dies mid-shard
        return super().match(a, b)


def test_ray_matches_equal_single_process_and_survive_a_dead_worker(scene, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install roma-sfm[ray])")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    images, pairs = scene
    ref = tmp_path / "single.h5"
    match.main(pairs, images, ref, "sift", progress=False)
    try:
        out = tmp_path / "ray.h5"
        st = match.main(pairs, images, out, "sift", progress=False, ray="local", ray_workers=2, shard_size=3)
        assert (st.num_matched, st.num_failed) == (len(pairs), 0)
        _same_files(out, ref, pairs)
        # a worker that dies: Ray restarts it and the shard is retried (resuming from its shard file)
        out2 = tmp_path / "ray2.h5"
        crash = CrashOnceMatcher(str(tmp_path / "crashed"), crash_on="003.png")
        st = match.main(pairs, images, out2, crash, progress=False, ray="local", ray_workers=2, shard_size=3)
        assert (tmp_path / "crashed").exists(), "the worker never crashed; the test proves nothing"
        assert (st.num_matched, st.num_failed) == (len(pairs), 0)
        _same_files(out2, ref, pairs)
        assert not h5io.shards_dir(out2).exists()
    finally:
        ray.shutdown()


class ThreadRecordingMatcher(matchers.SiftMatcher):
    """SIFT that notes torch's intra-op thread count at each pair."""

    seen: list = []

    def match(self, a, b):
        self.seen.append(torch.get_num_threads())
        return super().match(a, b)


def test_threads_option_sets_torch_threads_while_matching_only(scene, tmp_path):
    images, pairs = scene
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that 1 differs from the count outside
    try:
        m = ThreadRecordingMatcher()
        m.seen = []
        match.main(pairs[:3], images, tmp_path / "m.h5", m, progress=False, threads=1)
        assert m.seen == [1, 1, 1]
        assert torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(before)
