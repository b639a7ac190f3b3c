"""Tests for features/descriptors.py: SUN, spectral residual, LBP and energy maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import gennorm

from features.descriptors import (
    DescriptorSettings,
    SUNParams,
    compute_descriptor,
    dog_responses,
    fit_generalized_gaussian,
    fit_sun_params,
    lbp_map,
    sun_map,
)
from tests.fakes_images import synthetic_face


def _faces(n: int = 4, size: int = 32) -> list[np.ndarray]:
    return [np.repeat(synthetic_face(size, i, i)[:, :, None], 3, axis=2) for i in range(n)]


@pytest.mark.parametrize("name", ["sun", "spectral_residual", "lbp", "energy"])
def test_descriptor_maps_shape_dtype_range(name: str) -> None:
    faces = _faces()
    params = fit_sun_params(faces) if name == "sun" else None
    for rgb in faces:
        m = compute_descriptor(rgb, DescriptorSettings(kind=name), params)
        assert m.shape == (32, 32) and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() <= 1.0 and m.max() > m.min()


def test_descriptor_errors() -> None:
    with pytest.raises(ValueError, match="DescriptorSettings: kind"):
        DescriptorSettings(kind="hog")
    with pytest.raises(ValueError, match="SUN statistics"):
        compute_descriptor(_faces(1)[0], DescriptorSettings(kind="sun"), None)
    with pytest.raises(FileNotFoundError, match="SUN statistics file"):
        SUNParams.load("/nonexistent/sun.json")


def test_lbp_uniform_codes() -> None:
    flat = np.full((16, 16), 100, dtype=np.uint8)
    # on a flat image every interior pixel has the all-ones uniform code P -> P / (P + 1)
    np.testing.assert_allclose(lbp_map(flat, points=8, radius=1)[2:-2, 2:-2], 8 / 9, rtol=0, atol=1e-6)


@pytest.mark.parametrize("theta", [0.8, 1.0, 2.0])
def test_generalized_gaussian_fit_recovers_parameters(theta: float) -> None:
    samples = gennorm.rvs(theta, scale=0.3, size=200_000, random_state=np.random.default_rng(0))
    t, s = fit_generalized_gaussian(samples)
    assert abs(t - theta) / theta < 0.05 and abs(s - 0.3) / 0.3 < 0.05


def test_dog_bank_shapes() -> None:
    rgb = _faces(1)[0]
    assert dog_responses(rgb, (1.0, 2.0)).shape == (2, 32, 32)
    assert dog_responses(rgb, (1.0, 2.0), channels="opponent").shape == (6, 32, 32)


def test_sun_saliency_peaks_at_a_rare_feature() -> None:
    rng = np.random.default_rng(0)
    train = [
        np.repeat(rng.normal(128, 4, (32, 32)).clip(0, 255).astype(np.uint8)[:, :, None], 3, 2)
        for _ in range(4)
    ]
    params = fit_sun_params(train, sigmas=(1.0, 2.0))
    test = train[0].copy()
    test[14:18, 20:24] = 255  # a bright blob: improbable under the fitted statistics
    s = sun_map(test, params)
    y, x = np.unravel_index(np.argmax(s), s.shape)
    assert 11 <= y <= 20 and 17 <= x <= 26
    assert s[14:18, 20:24].mean() > 5 * s[:8, :8].mean()


def test_sun_params_roundtrip_and_depend_on_training_images(tmp_path: Path) -> None:
    faces = _faces(4)
    a = fit_sun_params(faces[:2], source={"split": "train"})
    b = fit_sun_params(faces[2:])
    assert a.theta != b.theta
    a.save(tmp_path / "p.json")
    loaded = SUNParams.load(tmp_path / "p.json")
    assert loaded == a and loaded.source == {"split": "train"} and len(loaded.theta) == 4
