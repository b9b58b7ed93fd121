"""Tests for offline.py: every offline layout on tiny data written here, in folders and archives, and its errors."""

import os
import pickle
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

import data
import offline
from tiny_sources import (CIFAR_SIZE, CLASSES, MNIST_SIZE, expected_tree_arrays, idx_bytes, write_cifar_batches,
                          write_idx, write_image_tree, write_tar)

pytestmark = pytest.mark.usefixtures("cache_in_tmp")


# --- basic use -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top", ["", "cifar-10-batches-py"])
def test_cifar_batches(tmp_path, top):
    written = write_cifar_batches(tmp_path / "copy" / top)
    dataset = data.load_dataset("cifar10", data_dir=tmp_path / "copy")
    assert dataset.x_train.shape == (10, 32, 32, 3) and dataset.x_test.shape == (2, 32, 32, 3)
    assert dataset.x_train.dtype == np.uint8 and dataset.y_train.dtype == np.int64
    rows, labels = written["data_batch_2"]
    # A row holds the red plane, then the green one, then the blue one, each row-major.
    np.testing.assert_array_equal(dataset.x_train[2, 0, 1], rows[0, [1, 1025, 2049]])
    np.testing.assert_array_equal(dataset.y_train[2:4], labels)
    np.testing.assert_array_equal(dataset.y_test, written["test_batch"][1])
    assert dataset.class_names == data.CIFAR10_CLASSES
    assert data.check_data_dir(tmp_path / "copy") == data.CIFAR_BATCHES


def test_cifar_batches_in_archive(tmp_path):
    write_cifar_batches(tmp_path / "copy")
    archive = write_tar(tmp_path / "cifar-10-python.tar.gz", tmp_path / "copy", "cifar-10-batches-py")
    from_archive = data.load_dataset("cifar10", data_dir=archive)
    from_folder = data.load_dataset("cifar10", data_dir=tmp_path / "copy")
    np.testing.assert_array_equal(from_archive.x_train, from_folder.x_train)
    np.testing.assert_array_equal(from_archive.y_test, from_folder.y_test)


@pytest.mark.parametrize("top", ["", "tiny-jpeg"])
def test_image_tree_mixed_modes_to_rgb(tmp_path, top):
    write_image_tree(tmp_path / "copy" / top)
    dataset = data.load_dataset("cifar10", data_dir=tmp_path / "copy")
    assert dataset.class_names == CLASSES
    for split in ("train", "test"):
        pixels, labels = expected_tree_arrays(split)
        np.testing.assert_array_equal(getattr(dataset, f"x_{split}"), pixels)
        np.testing.assert_array_equal(getattr(dataset, f"y_{split}"), labels)
    assert data.check_data_dir(tmp_path / "copy", "cifar10") == data.IMAGE_FOLDERS


def test_image_tree_as_grey_for_mnist(tmp_path):
    write_image_tree(tmp_path / "copy", size=MNIST_SIZE)
    dataset = data.load_dataset("mnist", data_dir=tmp_path / "copy")
    assert dataset.x_train.shape == (4, 28, 28, 1)
    assert dataset.x_train[1, 0, 0, 0] == 40  # train/dog/a.png, an L image, sorted before b.png
    assert dataset.x_train[2, 0, 0, 0] == 18  # train/dog/b.png, RGBA (10, 20, 30) through ITU-R 601-2 luma


def test_image_tree_jpeg_and_ignored_files(tmp_path):
    write_image_tree(tmp_path / "copy")
    Image.new("RGB", CIFAR_SIZE, (128, 64, 32)).save(tmp_path / "copy/train/cat/y.JPG", quality=95)
    (tmp_path / "copy/train/cat/notes.txt").write_text("not an image")
    (tmp_path / "copy/train/.DS_Store").write_text("hidden")
    dataset = data.load_dataset("cifar10", data_dir=tmp_path / "copy")
    assert len(dataset.y_train) == 5
    assert np.abs(dataset.x_train[0].astype(int) - (128, 64, 32)).max() <= 3  # y.JPG, before z.png; lossy


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
def test_image_tree_in_archive(tmp_path, suffix):
    write_image_tree(tmp_path / "copy")
    archive = tmp_path / f"tiny{suffix}"
    with tarfile.open(archive, "w:gz" if "gz" in suffix else "w") as tar:
        tar.add(tmp_path / "copy", arcname="tiny-jpeg")
    dataset = data.load_dataset("cifar10", data_dir=archive)
    pixels, labels = expected_tree_arrays("train")
    np.testing.assert_array_equal(dataset.x_train, pixels)
    np.testing.assert_array_equal(dataset.y_train, labels)
    assert dataset.source == str(archive.resolve())
    assert data.check_data_dir(archive) == data.IMAGE_FOLDERS


def test_idx_files(tmp_path):
    arrays = write_idx(tmp_path / "mnist")
    dataset = data.load_dataset("mnist", data_dir=tmp_path / "mnist")
    assert dataset.x_train.shape == (6, 28, 28, 1) and dataset.x_test.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(dataset.x_train[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(dataset.y_test, arrays["y_test"])
    assert dataset.y_train.dtype == np.int64 and dataset.class_names == data.MNIST_CLASSES
    assert data.load_dataset("fashion_mnist", data_dir=tmp_path / "mnist").class_names[0] == "T-shirt/top"
    assert data.check_data_dir(tmp_path / "mnist", "mnist") == data.IDX_FILES


# --- invalid input ---------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(data.DataError, match="does not exist. Received: data_dir='.*nowhere'"):
        data.check_data_dir(tmp_path / "nowhere")
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_dataset("cifar10", data_dir=tmp_path / "nowhere")


def test_empty_folder_and_archive(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="empty folder"):
        data.check_data_dir(tmp_path / "empty")
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    with pytest.raises(data.DataError, match="empty archive"):
        data.load_dataset("cifar10", data_dir=tmp_path / "empty.tar.gz")


def test_plain_file_is_not_an_archive(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    with pytest.raises(data.DataError, match="folder or a .tar/.tar.gz/.tgz archive"):
        data.check_data_dir(tmp_path / "train-images-idx3-ubyte.gz")


def test_unreadable_folder(tmp_path, monkeypatch):
    write_image_tree(tmp_path / "copy")
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("cat"):  # simulated: chmod 000 does not stop root, who runs CI
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(data.DataError, match="Cannot read .*cat: Permission denied"):
        data.check_data_dir(tmp_path / "copy")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_archive_really(tmp_path):
    archive = write_tar(tmp_path / "tiny.tar.gz", write_image_tree(tmp_path / "copy"), "tiny")
    archive.chmod(0)
    with pytest.raises(data.DataError, match="Permission denied"):
        data.check_data_dir(archive)


def test_unreadable_archive(tmp_path, monkeypatch):
    archive = write_tar(tmp_path / "tiny.tar.gz", write_image_tree(tmp_path / "copy"), "tiny")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(archive))

    monkeypatch.setattr(offline.tarfile, "open", denied)
    with pytest.raises(data.DataError, match="Cannot read the archive: Permission denied"):
        data.check_data_dir(archive)


def test_archive_listing_is_cached(tmp_path, monkeypatch, cache_in_tmp):
    """A second check of an archive reads its member list from the cache, without decompressing it."""
    archive = write_tar(tmp_path / "tiny.tar.gz", write_image_tree(tmp_path / "copy"), "tiny")
    listing = offline.open_source(archive).listing
    assert len(list(cache_in_tmp.glob(f"{offline.LISTING_SLUG}-*.npz"))) == 1

    def no_decompressing(self, wanted):
        raise AssertionError("the archive was decompressed again")

    monkeypatch.setattr(offline._ArchiveSource, "_members", no_decompressing)
    assert offline.open_source(archive).listing == listing
    assert data.check_data_dir(archive) == data.IMAGE_FOLDERS


def test_changed_archive_is_listed_again(tmp_path):
    copy = write_image_tree(tmp_path / "copy")
    archive = write_tar(tmp_path / "tiny.tar.gz", copy, "tiny")
    assert "tiny/train/extra.txt" not in offline.open_source(archive).listing.files
    (copy / "train" / "extra.txt").write_text("a new member")
    write_tar(archive, copy, "tiny")
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    assert "tiny/train/extra.txt" in offline.open_source(archive).listing.files


def test_archive_with_cached_listing_must_stay_readable(tmp_path, monkeypatch):
    archive = write_tar(tmp_path / "tiny.tar.gz", write_image_tree(tmp_path / "copy"), "tiny")
    data.check_data_dir(archive)
    opened = offline.Path.open

    def denied(path, *args, **kwargs):
        if path == archive.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(offline.Path, "open", denied)
    with pytest.raises(data.DataError, match="Cannot read the archive: Permission denied"):
        data.check_data_dir(archive)


def test_corrupt_and_truncated_archive(tmp_path):
    (tmp_path / "garbage.tar.gz").write_bytes(b"this is not a gzip file at all" * 20)
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.check_data_dir(tmp_path / "garbage.tar.gz")
    write_cifar_batches(tmp_path / "copy", per_batch=50)
    whole = write_tar(tmp_path / "whole.tar.gz", tmp_path / "copy", "cifar-10-batches-py").read_bytes()
    (tmp_path / "cut.tgz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.load_dataset("cifar10", data_dir=tmp_path / "cut.tgz")
    assert not list((tmp_path / "cache").glob("*"))  # nothing cached from a failed read


def test_unknown_layout(tmp_path):
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy/readme.txt").write_text("hello")
    (tmp_path / "copy/images").mkdir()
    with pytest.raises(data.DataError, match="no known dataset layout. Expected CIFAR-10 python batches .*"
                                             "image-folder tree .*IDX files"):
        data.check_data_dir(tmp_path / "copy")


def test_layout_that_cannot_hold_the_dataset(tmp_path):
    write_idx(tmp_path / "mnist")
    with pytest.raises(data.DataError, match="holds IDX files, which cannot hold cifar10"):
        data.load_dataset("cifar10", data_dir=tmp_path / "mnist")


def test_image_tree_empty_class(tmp_path):
    write_image_tree(tmp_path / "copy")
    (tmp_path / "copy/test/horse").mkdir()
    (tmp_path / "copy/train/horse").mkdir()
    (tmp_path / "copy/train/horse/readme.txt").write_text("no images here")
    with pytest.raises(data.DataError, match="Class folder (train|test)/horse holds no images"):
        data.check_data_dir(tmp_path / "copy")


def test_image_tree_class_mismatch(tmp_path):
    write_image_tree(tmp_path / "copy")
    write_image_tree(tmp_path / "copy", [("test", "owl", "a.png", "L", (1, 1, 1))])
    with pytest.raises(data.DataError, match=r"only in train: \[\]; only in test: \['owl'\]"):
        data.check_data_dir(tmp_path / "copy")


def test_image_tree_wrong_size(tmp_path):
    write_image_tree(tmp_path / "copy")
    Image.new("RGB", (33, 32)).save(tmp_path / "copy/test/cat/y.png")
    with pytest.raises(data.DataError, match="test/cat/y.png is 33x32 .*every image of this dataset is 32x32"):
        data.load_dataset("cifar10", data_dir=tmp_path / "copy")


def test_image_tree_of_another_dataset(tmp_path):
    write_image_tree(tmp_path / "copy")  # a CIFAR-sized tree read as MNIST: the sizes give it away
    with pytest.raises(data.DataError, match="is 32x32 .*every image of this dataset is 28x28"):
        data.load_dataset("mnist", data_dir=tmp_path / "copy")


def test_image_tree_undecodable_image(tmp_path):
    write_image_tree(tmp_path / "copy")
    (tmp_path / "copy/train/cat/broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(data.DataError, match="Cannot decode image train/cat/broken.jpg"):
        data.load_dataset("cifar10", data_dir=tmp_path / "copy")


def test_cifar_pickle_may_not_run_code(tmp_path):
    write_cifar_batches(tmp_path / "copy")
    marker = tmp_path / "pwned"
    hostile = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."  # os.system("touch ...")
    (tmp_path / "copy/data_batch_3").write_bytes(hostile)
    with pytest.raises(data.DataError, match="Cannot unpickle CIFAR file data_batch_3: os.system has no place"):
        data.load_dataset("cifar10", data_dir=tmp_path / "copy")
    assert not marker.exists()


def test_cifar_batch_of_wrong_shape(tmp_path):
    write_cifar_batches(tmp_path / "copy")
    batch = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (tmp_path / "copy/test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(data.DataError, match="CIFAR file test_batch holds data of shape \\(2, 100\\)"):
        data.load_dataset("cifar10", data_dir=tmp_path / "copy")


def test_idx_bad_magic(tmp_path):
    write_idx(tmp_path / "mnist", y_test=idx_bytes(np.zeros(4, np.uint8), magic=0x0803))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz has a bad header .*0x00000801"):
        data.check_data_dir(tmp_path / "mnist")


def test_idx_counts_disagree(tmp_path):
    write_idx(tmp_path / "mnist", y_train=idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(data.DataError, match="6 train images but 5 train labels"):
        data.check_data_dir(tmp_path / "mnist")


def test_idx_truncated_data(tmp_path):
    write_idx(tmp_path / "mnist", x_test=idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-3])
    assert data.check_data_dir(tmp_path / "mnist") == data.IDX_FILES  # headers alone look fine
    with pytest.raises(data.DataError, match=r"holds 3133 data bytes; its header \(4, 28, 28\) promises 3136"):
        data.load_dataset("mnist", data_dir=tmp_path / "mnist")


def test_idx_images_not_28x28(tmp_path):
    write_idx(tmp_path / "mnist", x_test=idx_bytes(np.zeros((4, 27, 28), np.uint8)))
    with pytest.raises(data.DataError, match=r"IDX test images are \(27, 28\); expected \(28, 28\)"):
        data.check_data_dir(tmp_path / "mnist")


def test_idx_not_gzip(tmp_path):
    write_idx(tmp_path / "mnist")
    (tmp_path / "mnist/train-images-idx3-ubyte.gz").write_bytes(b"plain bytes")
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz is not a readable gzip file"):
        data.check_data_dir(tmp_path / "mnist")


def test_check_decodes_no_image(tmp_path, monkeypatch):
    write_image_tree(tmp_path / "copy")
    monkeypatch.setattr(offline, "_decode_image", pytest.fail)
    assert data.check_data_dir(tmp_path / "copy") == data.IMAGE_FOLDERS


# --- the real offline copies, when present ----------------------------------------------------------------


@pytest.mark.slow
def test_real_mnist(shared_datasets):
    dataset = data.load_dataset("mnist", data_dir=shared_datasets / "mnist")
    assert dataset.x_train.shape == (60000, 28, 28, 1) and dataset.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(dataset.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(dataset.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.slow
def test_real_cifar10_tarball(shared_datasets):
    archive = shared_datasets / "cifar10-jpeg.tar.gz"
    decoded = data.load_dataset("cifar10", data_dir=archive)
    cached = data.load_dataset("cifar10", data_dir=archive)
    for dataset in (decoded, cached):
        assert dataset.x_train.shape == (50000, 32, 32, 3) and dataset.x_test.shape == (10000, 32, 32, 3)
        assert np.bincount(dataset.y_train).tolist() == [5000] * 10
        assert np.bincount(dataset.y_test).tolist() == [1000] * 10
        assert dataset.class_names == data.CIFAR10_CLASSES
    np.testing.assert_array_equal(cached.x_test, decoded.x_test)


FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    dataset = data.load_dataset("fashion_mnist", data_dir=FASHION_MNIST)
    assert dataset.x_train.shape == (60000, 28, 28, 1)
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10
