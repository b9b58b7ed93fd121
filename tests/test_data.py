"""Tests for data.py: the entry points' names and arguments, and keras.datasets with a stand-in."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import data
from tiny_sources import write_class_folders

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


# --- basic use -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_import_starts_no_keras():
    code = ("import sys, data, offline, own_images, cache, protocols; "
            "sys.exit(int('keras' in sys.modules or 'tensorflow' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(data.__file__)).returncode == 0


def test_datasets_constant():
    assert data.DATASETS == ("cifar10", "mnist", "fashion_mnist")


# --- keras.datasets, with a stand-in so no download is tried --------------------------------------------


def fake_keras(monkeypatch, load_data):
    datasets = types.SimpleNamespace(mnist=types.SimpleNamespace(load_data=load_data))
    monkeypatch.setitem(sys.modules, "keras", types.SimpleNamespace(datasets=datasets))


def test_keras_datasets_shapes(monkeypatch):
    split = (np.zeros((3, 28, 28), np.uint8), np.array([1, 2, 3], np.uint8))
    fake_keras(monkeypatch, lambda: (split, split))
    dataset = data.load_dataset("mnist")
    assert dataset.x_train.shape == (3, 28, 28, 1) and dataset.y_train.dtype == np.int64
    assert dataset.source == "keras.datasets.mnist"


def test_keras_download_failure(monkeypatch):
    def fail():
        raise Exception("URL fetch failure on https://example.invalid/mnist.npz: None -- no network")

    fake_keras(monkeypatch, fail)
    with pytest.raises(data.DataError, match="Downloading mnist .* failed .*--data-dir"):
        data.load_dataset("mnist")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="cifar10, mnist, fashion_mnist, or folder:PATH or list:DIR .*Received: name='svhn'"):
        data.load_dataset("svhn")
    with pytest.raises(ValueError, match="Received: name='svhn'"):
        data.check_data_dir(".", "svhn")


# --- names and arguments of own data ----------------------------------------------------------------------


def test_parse_dataset_name_and_slug(tmp_path):
    assert data.parse_dataset_name("folder:a/b") == ("folder", "a/b")
    assert data.parse_dataset_name("list:/x") == ("list", "/x")
    assert data.parse_dataset_name("mnist") == (None, None)
    assert data.dataset_slug(f"folder:{tmp_path}/My Photos (2024)/") == "folder-My_Photos_2024"
    assert data.dataset_slug("list:.") == f"list-{os.path.basename(os.getcwd())}"
    assert data.dataset_slug("fashion_mnist") == "fashion_mnist"
    with pytest.raises(ValueError, match="name folder:PATH needs a path after 'folder:'"):
        data.parse_dataset_name("folder:")


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("cifar10", {"image_size": 64}, "image_size applies to folder: and list: datasets only. Received: image_size=64"),
        ("folder:x", {"data_dir": "y"}, "data_dir applies to the named datasets only"),
        ("folder:x", {"image_root": "y"}, "image_root applies to list: datasets only"),
        ("list:x", {"test_fraction": 0.5}, "test_fraction applies to folder: datasets only"),
        ("folder:x", {"image_size": 4}, "image_size must be an integer from 8 to 1024. Received: image_size=4"),
        ("folder:x", {"test_fraction": 0.0}, "test_fraction must be a number above 0 and below 1"),
        ("folder:x", {"seed": -1}, "seed must be an integer at least 0"),
    ],
)
def test_own_data_arguments_invalid(tmp_path, name, kwargs, message):
    write_class_folders(tmp_path / "x", {"a": 2, "b": 2})
    os.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        data.load_dataset(name, **kwargs)
