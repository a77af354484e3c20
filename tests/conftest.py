"""Shared fixtures. Matplotlib draws off-screen in tests."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import flowsolve as fs  # noqa: E402


@pytest.fixture
def four_points():
    return fs.datasets.four_points()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
