"""Shared fixtures: the real Kaggle sample beside the repo, and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Small CPU tests on few cores: spinning OpenMP threads waste them (see kaggle_utils.train).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = Path(os.environ.get("CARVANA_SAMPLE", REPO.parent / "shared" / "carvana_sample"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real competition slice (../shared/carvana_sample); skip where a checkout lacks it."""
    if not (REAL_SAMPLE / "train_masks.csv").exists():
        pytest.skip(f"real Carvana sample not found at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory) -> Path:
    """A tiny synthetic Carvana (4 train cars, 1 test car) at 160x240, shared by the session."""
    from kaggle_utils.synthetic import generate

    out = tmp_path_factory.mktemp("synthetic_small")
    return generate(out, n_train_cars=4, n_test_cars=1, size=(160, 240), seed=0)
