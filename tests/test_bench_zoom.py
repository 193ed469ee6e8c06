"""benchmarks/zoom.py: the zoomed view and its intrinsics agree exactly."""
import cv2
import numpy as np
from bench_loader import load as load_benchmark

zoom = load_benchmark("zoom")


def test_zoomed_image_and_intrinsics_agree():
    rng = np.random.default_rng(0)
    h, w = 120, 180
    img = cv2.resize(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    K = np.array([[150.0, 0, (w - 1) / 2 + 3], [0, 150.0, (h - 1) / 2 - 2], [0, 0, 1]])  # centres at integers
    for z in (2.0, 3.0):
        out, x0, y0 = zoom.zoom_image(img, z, rng)
        K2 = zoom.zoom_intrinsics(K, x0, y0, z)
        # every output pixel shows what the original shows along the same camera ray
        ys, xs = np.mgrid[10:h - 10:7, 10:w - 10:7]
        p = np.stack((xs.ravel(), ys.ravel(), np.ones(xs.size)), 0)
        src = K @ np.linalg.inv(K2) @ p
        src = (src[:2] / src[2]).astype(np.float32)
        expected = cv2.remap(img, src[0][None], src[1][None], cv2.INTER_LINEAR)[0].astype(float)
        got = out[ys.ravel(), xs.ravel()].astype(float)
        assert np.abs(got - expected).mean() < 2.0, z
        shifted = cv2.remap(img, src[0][None] + 1.5, src[1][None], cv2.INTER_LINEAR)[0].astype(float)
        assert np.abs(got - shifted).mean() > 2 * np.abs(got - expected).mean()
