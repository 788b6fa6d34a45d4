"""Drift against a reference profile: quiet on the same distribution, loud on a shifted one."""

from __future__ import annotations

import numpy as np
import pytest

from nbship.monitoring.drift import Profile, Window, feature_groups, psi


@pytest.fixture
def reference() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, size=(2000, 8, 8)).astype(np.float64)
    classes = rng.integers(0, 10, size=2000)
    return images, classes


def test_wide_inputs_are_watched_as_eight_groups_narrow_ones_per_feature() -> None:
    names, values = feature_groups(np.zeros((3, 8, 8)))
    assert len(names) == 8 and values.shape == (3, 8) and names[0] == "f0-f7"
    names, values = feature_groups(np.zeros((3, 4)))
    assert names == ["f0", "f1", "f2", "f3"] and values.shape == (3, 4)


def test_the_same_distribution_is_quiet_a_shifted_one_is_not(
        reference: tuple[np.ndarray, np.ndarray]) -> None:
    images, classes = reference
    profile = Profile.build(images, classes)
    rng = np.random.default_rng(1)
    same = Window(profile)
    same.observe(rng.integers(0, 17, size=(800, 8, 8)).astype(np.float64),
                 rng.integers(0, 10, size=800))
    quiet = same.drift()
    assert quiet["rows"] == 800
    assert max(quiet["input_psi"].values()) < 0.1
    assert max(quiet["input_ks"].values()) < 0.1
    assert quiet["prediction_psi"] < 0.1
    shifted = Window(profile)
    shifted.observe(np.clip(rng.integers(0, 17, size=(800, 8, 8)) + 6, 0, 16).astype(float),
                    np.zeros(800, dtype=int))
    loud = shifted.drift()
    assert min(loud["input_psi"].values()) > 0.5
    assert min(loud["input_ks"].values()) > 0.3
    assert loud["prediction_psi"] > 1.0


def test_the_window_keeps_the_last_rows_only(reference: tuple[np.ndarray, np.ndarray]) -> None:
    images, classes = reference
    window = Window(Profile.build(images, classes), size=100)
    window.observe(np.full((150, 8, 8), 16.0), np.zeros(150, dtype=int))
    window.observe(images[:60], classes[:60])
    values, _ = window.snapshot()
    assert len(values) == 100
    assert (values == 16.0).all(axis=1).sum() == 40


def test_inputs_of_another_shape_are_not_compared(
        reference: tuple[np.ndarray, np.ndarray]) -> None:
    images, classes = reference
    window = Window(Profile.build(images, classes))
    window.observe(np.zeros((5, 3)), np.zeros(5, dtype=int))
    assert window.drift()["rows"] == 0


def test_rows_that_are_not_the_references_are_left_out_without_an_error(
        reference: tuple[np.ndarray, np.ndarray]) -> None:
    """An 8x8 image sent as 8 rows (8 features a row, 8 groups like the reference's 64
    features; one prediction): the window used to raise ValueError after predict() had
    answered, and the server answered 500."""
    images, classes = reference
    window = Window(Profile.build(images, classes))
    assert window.observe(images[0], np.array([3])) is False
    assert window.observe(images[:4], np.array([1, 2])) is False  # not one a row
    assert window.observe(images[:0], np.array([], dtype=int)) is False
    assert window.observe(images[:2], np.zeros((2, 0))) is False
    assert window.drift()["rows"] == 0
    assert window.observe(images[:3], classes[:3]) is True
    assert window.drift()["rows"] == 3


def test_real_valued_predictions_use_quantile_bins() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 3))
    profile = Profile.build(x, x.sum(axis=1) + 0.5)
    assert profile.classes is None and profile.prediction_edges
    window = Window(profile)
    window.observe(x[:500], x[:500].sum(axis=1) + 10)
    assert window.drift()["prediction_psi"] > 1.0


def test_a_profile_round_trips_through_json(reference: tuple[np.ndarray, np.ndarray]) -> None:
    profile = Profile.build(*reference)
    assert Profile.from_json(profile.to_json()) == profile


def test_psi_is_zero_for_equal_distributions() -> None:
    p = np.array([0.2, 0.3, 0.5])
    assert psi(p, p) == 0.0
    assert psi(p, np.array([0.5, 0.3, 0.2])) > 0.3
