"""Image reading: formats users have, and clear errors naming the file."""
import numpy as np
import pytest
from PIL import Image

from roma_sfm.io import ImageReadError, as_rgb, image_size, read_image


def test_grayscale_rgba_16bit(tmp_path):
    g = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)
    Image.fromarray(g).save(tmp_path / "g.png")
    rgba = np.dstack([g, g, g, np.full_like(g, 7)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray((g.astype(np.uint16) * 257)).save(tmp_path / "s16.png")
    for name in ("g.png", "a.png", "s16.png"):
        im = read_image(tmp_path / name)
        assert im.shape == (20, 30, 3) and im.dtype == np.uint8, name
        assert np.abs(im[..., 0].astype(int) - g).max() <= 1, name


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :5] = 255  # left stripe
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the stripe is now at the top
    assert image_size(tmp_path / "r.jpg") == (20, 40)


@pytest.mark.parametrize("content,reason", [(b"", "empty"), (b"hello, not an image", "not a readable image")])
def test_bad_files_name_the_file(tmp_path, content, reason):
    p = tmp_path / "bad file.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as e:
        read_image(p)
    assert str(p) in str(e.value) and e.value.path == str(p)


def test_truncated_and_missing(tmp_path):
    arr = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="trunc.png"):
        read_image(tmp_path / "trunc.png")
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_arrays_and_floats():
    f = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = as_rgb(f)
    assert out.shape == (3, 4, 3) and out[0, 0, 0] == 0 and out[-1, -1, 2] == 255
