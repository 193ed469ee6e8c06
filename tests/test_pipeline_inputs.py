"""Bad inputs never stop a run: clear messages, skipped files listed in report.json."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from roma_sfm.pipelines import reconstruct
from synthetic import random_texture
from roma_sfm.pipelines.utils import scan_images

SCENE = Path(__file__).resolve().parents[1] / "sample_scenes" / "corner" / "images"
BAD = {"corrupt.jpg", "truncated.jpg", "zero.png", "fake.jpg", "notes.txt"}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """5 good sample images, 3 unusual but valid ones (16-bit, grayscale, EXIF-rotated), 5 bad files."""
    d = tmp_path_factory.mktemp("messy")
    for i in range(5):
        shutil.copy(SCENE / f"{i:04d}.jpg", d / f"{i:04d}.jpg")
    rgb = np.asarray(Image.open(SCENE / "0005.jpg").convert("RGB"))
    cv2.imwrite(str(d / "0005_16bit.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    Image.open(SCENE / "0006.jpg").convert("L").save(d / "0006_gray.png")
    # stored rotated, displayed upright: orientation 6 = rotate 90 deg clockwise to display
    src = Image.open(SCENE / "0007.jpg")
    exif = src.getexif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(np.asarray(src), 1)).save(d / "0007_rotated.jpg", exif=exif, quality=95)
    raw = (SCENE / "0000.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    (d / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "zero.png").write_bytes(b"")
    (d / "fake.jpg").write_text("this is not an image")
    (d / "notes.txt").write_text("camera notes")
    return d


def test_scan_lists_reasons(messy):
    scan = scan_images(messy)
    assert set(scan.skipped) == BAD
    assert "empty" in scan.skipped["zero.png"] and "extension" in scan.skipped["notes.txt"]
    assert scan.sizes["0007_rotated.jpg"] == (480, 360)  # EXIF rotation applied
    assert scan.sizes["0005_16bit.png"] == (480, 360) and len(scan.names) == 8


def test_messy_folder_reconstructs(messy, tmp_path):
    rep = reconstruct.main(messy, tmp_path, matcher="sift", progress=False, num_threads=1)
    assert rep["status"] == "ok", rep["message"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert set(on_disk["images_skipped"]) == BAD and on_disk["images_given"] == 13
    # the unusual but valid images are used and registered
    assert {"0005_16bit.png", "0006_gray.png", "0007_rotated.jpg"} <= set(rep["registered"])
    assert rep["images_registered"] >= 7


def _expect_failure(images, out, words):
    rep = reconstruct.main(images, out, matcher="sift", progress=False, num_threads=1)
    assert rep["status"] == "failed" and all(w in rep["message"] for w in words), rep["message"]
    assert json.loads((out / "report.json").read_text())["status"] == "failed"
    return rep


def test_empty_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    _expect_failure(tmp_path / "imgs", tmp_path / "out", ["no readable image"])


def test_missing_folder(tmp_path):
    _expect_failure(tmp_path / "nope", tmp_path / "out", ["does not exist"])


def test_only_bad_files(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"")
    rep = _expect_failure(tmp_path / "imgs", tmp_path / "out", ["no readable image", "1 skipped"])
    assert "a.jpg" in rep["images_skipped"]


def test_single_image(tmp_path):
    (tmp_path / "imgs").mkdir()
    shutil.copy(SCENE / "0000.jpg", tmp_path / "imgs")
    _expect_failure(tmp_path / "imgs", tmp_path / "out", ["only one readable image"])


def test_non_overlapping_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), random_texture(240, 320, seed=100 + i))
    rep = _expect_failure(tmp_path / "imgs", tmp_path / "out", ["overlap"])
    assert rep["images_registered"] == 0 and len(rep["images_unregistered"]) == 3
