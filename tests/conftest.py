"""Shared test set-up: quiet TensorFlow logs, the repo root on `sys.path`, the shared data folder."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture
def shared_datasets():
    """The offline dataset copies beside the checkout; skips the test when they are absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"optional offline datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS
