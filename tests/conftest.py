"""Shared test set-up: quiet TensorFlow logs, the repo root on `sys.path`, the shared data folder."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"

from cli import TINY_CLASSES, TINY_TEST_PER_CLASS, TINY_TRAIN_PER_CLASS, tiny_image  # noqa: E402  (needs sys.path)


@pytest.fixture
def shared_datasets():
    """The offline dataset copies beside the checkout; skips the test when they are absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"optional offline datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test caches decoded data in its session's temporary folder, never in the user's cache."""
    monkeypatch.setenv("DEEPHASH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    """A cache folder of the test's own, `tmp_path / "cache"`, for tests that look inside it; the data tests
    use it for every test (`pytestmark = pytest.mark.usefixtures("cache_in_tmp")`)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPHASH_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory):
    """An image-folder tree `train/<class>/*.png`, `test/<class>/*.png` of 4 easy classes."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", TINY_TRAIN_PER_CLASS), ("test", TINY_TEST_PER_CLASS)):
        for class_index, name in enumerate(TINY_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for item in range(per_class):
                tiny_image(class_index, rng).save(folder / f"{item:03d}.png")
    return root
