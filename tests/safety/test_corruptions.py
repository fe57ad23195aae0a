"""Corruptions: deterministic, valid images, harsher with severity; accuracy table and mCE."""

import json

import numpy as np
import pytest

from tfsafe.errors import InputError
from tfsafe.models import accuracy
from tfsafe.safety.corruptions import CORRUPTIONS, SEVERITIES, corrupt, corruption_accuracy

RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise")


@pytest.fixture(scope="module")
def rgb():
    from scipy.ndimage import gaussian_filter

    # Smooth colour images (not block-aligned) so blur and pixelate have something to change.
    noise = np.random.default_rng(0).random((6, 32, 32, 3))
    smooth = gaussian_filter(noise, sigma=(0, 2, 2, 0))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return smooth.astype(np.float32)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_is_deterministic_and_valid(name, digits, rgb):
    (x, _), _ = digits
    for images in (x[:20], rgb):
        out = corrupt(images, name, 3, seed=1)
        assert out.shape == images.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_array_equal(out, corrupt(images, name, 3, seed=1))
        assert not np.allclose(out, images), f"{name} left the images unchanged"
        if name in RANDOM:
            assert not np.array_equal(out, corrupt(images, name, 3, seed=2))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_makes_it_harsher(name, digits, rgb):
    (x, _), _ = digits
    for images in (x[:50], rgb):
        dist = [float(np.abs(corrupt(images, name, s) - images).mean()) for s in SEVERITIES]
        assert dist[-1] > dist[0], (name, dist)


def test_accuracy_falls_with_severity(trained_cnn, digits):
    _, (xt, yt) = digits
    result = corruption_accuracy(trained_cnn, xt[:300], yt[:300])
    table = result["table"]
    assert set(table) == set(CORRUPTIONS) and all(set(row) == {"1", "2", "3", "4", "5"} for row in table.values())
    by_severity = [np.mean([row[str(s)] for row in table.values()]) for s in SEVERITIES]
    assert all(b <= a + 0.01 for a, b in zip(by_severity, by_severity[1:])), by_severity
    assert by_severity[-1] < by_severity[0] - 0.1
    assert result["clean_accuracy"] == pytest.approx(accuracy(trained_cnn, xt[:300], yt[:300]))
    assert result["mean_accuracy"] == pytest.approx(np.mean(list(result["per_corruption"].values())))
    assert result["mce"] is None
    json.dumps(result)


def test_mce_against_reference(trained_cnn, digits):
    _, (xt, yt) = digits
    x, y = xt[:150], yt[:150]
    names = ("gaussian_noise", "contrast")
    itself = corruption_accuracy(trained_cnn, x, y, reference=trained_cnn, corruptions=names)
    assert itself["mce"] == pytest.approx(1.0)
    assert itself["reference_mean_accuracy"] == pytest.approx(itself["mean_accuracy"])

    def constant(batch):  # always predicts class 0: the worst reasonable reference
        return np.tile(np.eye(10, dtype=np.float32)[0], (len(batch), 1))

    vs_constant = corruption_accuracy(trained_cnn, x, y, reference=constant, corruptions=names)
    assert vs_constant["mce"] < 0.7
    ref_result = corruption_accuracy(constant, x, y, corruptions=names)
    from_dict = corruption_accuracy(trained_cnn, x, y, reference=ref_result, corruptions=names)
    assert from_dict["mce"] == pytest.approx(vs_constant["mce"])
    with pytest.raises(InputError, match="lacks"):
        corruption_accuracy(trained_cnn, x, y, reference=ref_result, corruptions=("jpeg",))


def test_bad_inputs(trained_cnn, digits):
    (x, y), _ = digits
    with pytest.raises(InputError, match="Unknown corruption"):
        corrupt(x[:2], "fog", 1)
    with pytest.raises(InputError, match="severity"):
        corrupt(x[:2], "contrast", 6)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        corrupt(x[:2] * 255, "contrast", 1)
    with pytest.raises(InputError, match="channel"):
        corrupt(x[:2, :, :, 0], "contrast", 1)
    bad = x[:2].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        corrupt(bad, "jpeg", 1)
    with pytest.raises(InputError):
        corruption_accuracy(trained_cnn, x[:5], y[:4])
