"""Tests for cache.py, through the offline copies it caches: hits, keys, location, corrupt and unwritable files."""

import os
import time

import numpy as np
import pytest

import cache
import data
import offline
from tiny_sources import fail_to_decode, tiny_image, write_idx, write_image_tree, write_tar

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


def test_cache_hit_skips_decoding(tmp_path, monkeypatch, cache_in_tmp):
    archive = write_tar(tmp_path / "tiny.tgz", write_image_tree(tmp_path / "copy"), "tiny")
    first = data.load_dataset("cifar10", data_dir=archive)
    # The arrays and the archive's member list; no temporary file left.
    assert sorted(path.name.split("-")[0] + path.suffix for path in cache_in_tmp.iterdir()) == ["archive.npz", "cifar10.npz"]
    monkeypatch.setattr(offline, "_decode_layout", fail_to_decode)
    second = data.load_dataset("cifar10", data_dir=archive)
    np.testing.assert_array_equal(second.x_train, first.x_train)
    np.testing.assert_array_equal(second.y_test, first.y_test)
    assert second.class_names == first.class_names and second.source == first.source


def test_cache_is_per_dataset_name(tmp_path, cache_in_tmp):
    write_idx(tmp_path / "idx")
    assert data.load_dataset("mnist", data_dir=tmp_path / "idx").class_names == data.MNIST_CLASSES
    assert data.load_dataset("fashion_mnist", data_dir=tmp_path / "idx").class_names == data.FASHION_MNIST_CLASSES
    assert len(list(cache_in_tmp.glob("*.npz"))) == 2


def test_cache_invalidated_when_source_changes(tmp_path, monkeypatch):
    write_image_tree(tmp_path / "copy")
    first = data.load_dataset("cifar10", data_dir=tmp_path / "copy")
    image = tmp_path / "copy/train/frog/0.png"
    tiny_image("RGB", (9, 9, 9)).save(image)
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    second = data.load_dataset("cifar10", data_dir=tmp_path / "copy")
    assert first.x_train[3, 0, 0, 0] == 1 and second.x_train[3, 0, 0, 0] == 9


def test_cache_location_default_and_env(tmp_path, monkeypatch):
    write_idx(tmp_path / "mnist")
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data.load_dataset("mnist", data_dir=tmp_path / "mnist")
    assert len(list((tmp_path / "home/.cache/deephash").glob("mnist-*.npz"))) == 1
    data.load_dataset("mnist", data_dir=tmp_path / "mnist", cache_dir=tmp_path / "explicit")
    assert len(list((tmp_path / "explicit").glob("mnist-*.npz"))) == 1


def test_corrupt_cache_is_decoded_again(tmp_path, cache_in_tmp):
    write_idx(tmp_path / "mnist")
    first = data.load_dataset("mnist", data_dir=tmp_path / "mnist")
    (cache_file,) = cache_in_tmp.glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with pytest.warns(UserWarning, match="Ignoring unreadable cache file") as records:
        second = data.load_dataset("mnist", data_dir=tmp_path / "mnist")
    np.testing.assert_array_equal(second.x_train, first.x_train)
    assert records[0].filename == __file__  # points at the caller, not into the data modules


def test_unwritable_cache_only_warns(tmp_path):
    write_idx(tmp_path / "mnist")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.warns(UserWarning, match="Cannot write the data cache"):
        dataset = data.load_dataset("mnist", data_dir=tmp_path / "mnist", cache_dir=tmp_path / "a-file")
    assert dataset.x_train.shape == (6, 28, 28, 1)
