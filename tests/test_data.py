"""Tests for data.py: every offline layout on tiny data written here, errors, the cache, seeded draws."""

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import time
import types

import numpy as np
import pytest
from PIL import Image

import data

CLASSES = ("cat", "dog", "frog")  # the tiny image-folder tree's classes, already in sorted order
CIFAR_SIZE = (32, 32)  # (width, height), as Pillow has it
MNIST_SIZE = (28, 28)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Keeps every test's cache out of the home folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_ENV, str(cache))
    return cache


# --- tiny data sources ------------------------------------------------------------------------------------


def write_cifar_batches(folder, per_batch=2, seed=0):
    """Official-format CIFAR-10 batches (protocol 2, bytes keys); returns the images and labels written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for file in [f"data_batch_{number}" for number in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, size=per_batch)]
        (folder / file).write_bytes(pickle.dumps({b"data": rows, b"labels": labels}, protocol=2))
        written[file] = (rows, labels)
    meta = {b"label_names": [name.encode() for name in data.CIFAR10_CLASSES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def tiny_image(mode, value, size=CIFAR_SIZE):
    """An image in `mode` whose RGB pixels all equal `value` (an (r, g, b) tuple)."""
    if mode == "L":
        return Image.new("L", size, value[0])
    if mode == "RGBA":
        return Image.new("RGBA", size, (*value, 99))
    if mode == "P":
        return Image.new("RGB", size, value).convert("P", palette=Image.Palette.ADAPTIVE)
    return Image.new("RGB", size, value)


# (split, class, file, mode, RGB value); files inside a class are written out of sorted order on purpose.
TREE_IMAGES = [
    ("train", "dog", "b.png", "RGBA", (10, 20, 30)),
    ("train", "dog", "a.png", "L", (40, 40, 40)),
    ("train", "cat", "z.png", "P", (200, 0, 100)),
    ("train", "frog", "0.png", "RGB", (1, 2, 3)),
    ("test", "frog", "1.png", "L", (255, 255, 255)),
    ("test", "cat", "x.png", "RGBA", (5, 6, 7)),
    ("test", "dog", "q.png", "P", (0, 250, 0)),
]


def write_image_tree(root, images=TREE_IMAGES, size=CIFAR_SIZE):
    for split, class_name, file, mode, value in images:
        folder = root / split / class_name
        folder.mkdir(parents=True, exist_ok=True)
        tiny_image(mode, value, size).save(folder / file)
    return root


def expected_tree_arrays(split):
    """The RGB pixels and labels the tree should decode to for `split`, in sorted class then file order."""
    rows = sorted((CLASSES.index(class_name), file, value)
                  for row_split, class_name, file, _, value in TREE_IMAGES if row_split == split)
    pixels = np.array([np.broadcast_to(np.array(value, np.uint8), (*CIFAR_SIZE, 3)) for _, _, value in rows])
    return pixels, np.array([label for label, _, _ in rows])


def write_tar(archive, folder, arcname):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def idx_bytes(array, magic=None):
    """The IDX encoding of a uint8 array (gzip not applied)."""
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(folder, n_train=6, n_test=4, seed=0, **overrides):
    """The four MNIST IDX .gz files; `overrides` maps an array key to raw IDX bytes written instead."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.uint8) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, file, _ in data._IDX_MEMBERS:
        (folder / file).write_bytes(gzip.compress(overrides.get(key, idx_bytes(arrays[key]))))
    return arrays


# --- basic use -------------------------------------------------------------------------------------------


def test_import_starts_no_keras():
    code = "import sys, data; sys.exit(int('keras' in sys.modules or 'tensorflow' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(data.__file__)).returncode == 0


def test_datasets_constant():
    assert data.DATASETS == ("cifar10", "mnist", "fashion_mnist")


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

    monkeypatch.setattr(data.tarfile, "open", denied)
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
    monkeypatch.setattr(data, "_decode_image", pytest.fail)
    assert data.check_data_dir(tmp_path / "copy") == data.IMAGE_FOLDERS


# --- cache -----------------------------------------------------------------------------------------------


def fail_to_decode(*args):
    raise AssertionError("decoded although the cache should have answered")


def test_cache_hit_skips_decoding(tmp_path, monkeypatch, cache_in_tmp):
    archive = write_tar(tmp_path / "tiny.tgz", write_image_tree(tmp_path / "copy"), "tiny")
    first = data.load_dataset("cifar10", data_dir=archive)
    assert [path.suffix for path in cache_in_tmp.iterdir()] == [".npz"]  # no temporary file left
    monkeypatch.setattr(data, "_decode_layout", fail_to_decode)
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
    monkeypatch.delenv(data.CACHE_ENV)
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
    with pytest.warns(UserWarning, match="Ignoring unreadable cache file"):
        second = data.load_dataset("mnist", data_dir=tmp_path / "mnist")
    np.testing.assert_array_equal(second.x_train, first.x_train)


def test_unwritable_cache_only_warns(tmp_path):
    write_idx(tmp_path / "mnist")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.warns(UserWarning, match="Cannot write the data cache"):
        dataset = data.load_dataset("mnist", data_dir=tmp_path / "mnist", cache_dir=tmp_path / "a-file")
    assert dataset.x_train.shape == (6, 28, 28, 1)


# --- seeded draws ----------------------------------------------------------------------------------------


LABELS = np.repeat(np.arange(4), [5, 6, 7, 8])  # classes of unequal size


def test_balanced_subset_is_balanced_and_seeded():
    picked = data.balanced_subset(LABELS, 10, seed=3)
    assert picked.dtype == np.int64 and np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(np.bincount(LABELS[picked]), [3, 3, 2, 2])  # remainder to the first classes
    np.testing.assert_array_equal(picked, data.balanced_subset(LABELS, 10, seed=3))
    assert not np.array_equal(picked, data.balanced_subset(LABELS, 10, seed=4))
    np.testing.assert_array_equal(np.bincount(LABELS[data.balanced_subset(LABELS, 3, seed=0)]), [1, 1, 1])


def test_balanced_subset_is_the_same_everywhere():
    # Pinned: numpy does not promise Generator streams across versions; this says when an upgrade moves them.
    np.testing.assert_array_equal(data.balanced_subset(LABELS, 4, seed=0), [4, 8, 14, 20])
    np.testing.assert_array_equal(data.draw_queries(1000, 3, seed=0), [511, 636, 848])
    np.testing.assert_array_equal(data.balanced_subset(LABELS, 10, seed=3),
                                  data.balanced_subset(list(LABELS), 10, seed=np.int64(3)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "n must be an integer from 1 to 26. Received: n=0"),
        ({"n": 27}, "Received: n=27"),
        ({"n": 2.0}, "Received: n=2.0"),
        ({"n": 24}, "n asks for 6 items of class 0, which has only 5. Received: n=24"),
        ({"seed": -1}, "seed must be an integer at least 0. Received: seed=-1"),
        ({"seed": None}, "Received: seed=None"),
        ({"labels": np.zeros((2, 2, 2), int)}, "labels must be a non-empty 1-D integer array or a 0/1 multi-hot"),
        ({"labels": np.full((26, 2), 2)}, "labels must be a non-empty 1-D integer array or a 0/1 multi-hot"),
        ({"labels": [0.5, 1.5]}, "dtype float64"),
    ],
)
def test_balanced_subset_invalid(kwargs, message):
    arguments = {"labels": LABELS, "n": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.balanced_subset(**arguments)


def test_draw_queries():
    np.testing.assert_array_equal(data.draw_queries(5, None, seed=0), np.arange(5))
    np.testing.assert_array_equal(data.draw_queries(5, 5, seed=0), np.arange(5))
    drawn = data.draw_queries(100, 10, seed=1)
    assert drawn.dtype == np.int64 and len(set(drawn)) == 10 and np.all(np.diff(drawn) > 0)
    np.testing.assert_array_equal(drawn, data.draw_queries(100, 10, seed=1))
    assert not np.array_equal(drawn, data.draw_queries(100, 10, seed=2))
    with pytest.raises(ValueError, match="n must be an integer from 1 to 100. Received: n=101"):
        data.draw_queries(100, 101, seed=0)


def test_holdout_split():
    train_idx, val_idx = data.holdout_split(LABELS, 8, seed=5)
    np.testing.assert_array_equal(np.bincount(LABELS[val_idx]), [2, 2, 2, 2])
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(len(LABELS)))
    np.testing.assert_array_equal(val_idx, data.balanced_subset(LABELS, 8, seed=5))
    assert train_idx.dtype == np.int64
    with pytest.raises(ValueError, match="n_val must be an integer from 1 to 25. Received: n_val=26"):
        data.holdout_split(LABELS, 26, seed=0)


# --- the users' own data: folder:PATH ---------------------------------------------------------------------


def own_image(mode, size, value):
    """A uniform image in `mode` of `size` (width, height) whose RGB conversion should be `value` everywhere."""
    if mode == "I;16":  # 16-bit grey: value * 257 scales back to value
        return Image.fromarray(np.full(size[::-1], value[0] * 257, np.uint16))
    if mode == "CMYK":
        return Image.new("RGB", size, value).convert("CMYK")
    return tiny_image(mode, value, size)


# (split, class, file, mode, (width, height), RGB value): every mode, sizes larger and smaller than 16, not square.
OWN_IMAGES = [
    ("train", "apple", "a.png", "L", (40, 24), (40, 40, 40)),
    ("train", "apple", "b.png", "RGBA", (9, 13), (10, 20, 30)),
    ("train", "apple", "c.gif", "P", (50, 50), (200, 0, 100)),
    ("train", "pear", "d.tif", "CMYK", (16, 70), (0, 255, 0)),
    ("train", "pear", "e.png", "I;16", (33, 17), (100, 100, 100)),
    ("test", "apple", "f.jpg", "RGB", (64, 48), (250, 250, 250)),
    ("test", "pear", "g.png", "I;16", (20, 20), (255, 255, 255)),
]


def write_own_images(root, images=OWN_IMAGES):
    for split, class_name, file, mode, size, value in images:
        folder = root / split / class_name if split else root / class_name
        folder.mkdir(parents=True, exist_ok=True)
        own_image(mode, size, value).save(folder / file)
    return root


def write_class_folders(root, counts, size=(20, 12)):
    """`<class>/<i>.png` trees without train/ and test/; image i of class c is grey 10 * c + i."""
    for class_index, (class_name, count) in enumerate(counts.items()):
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for item in range(count):
            Image.new("L", size, 10 * class_index + item).save(root / class_name / f"{item:02d}.png")
    return root


def test_folder_with_splits_any_mode_and_size_to_rgb(tmp_path):
    dataset = data.load_dataset(f"folder:{write_own_images(tmp_path / 'fruit')}", image_size=16)
    assert dataset.class_names == ("apple", "pear") and not dataset.multi_label and dataset.x_db is None
    assert dataset.x_train.shape == (5, 16, 16, 3) and dataset.x_test.shape == (2, 16, 16, 3)
    for split in ("train", "test"):
        rows = [(class_name, value) for row_split, class_name, _, _, _, value in OWN_IMAGES if row_split == split]
        expected = np.array([np.broadcast_to(np.array(value, np.uint8), (16, 16, 3)) for _, value in rows])
        # JPEG is lossy; the other formats are exact, and resizing a uniform image keeps its value.
        np.testing.assert_allclose(getattr(dataset, f"x_{split}"), expected, atol=3 if split == "test" else 0)
        np.testing.assert_array_equal(getattr(dataset, f"y_{split}"), [("apple", "pear").index(name) for name, _ in rows])
    assert dataset.y_train.dtype == np.int64 and dataset.skipped == ()
    assert data.load_dataset(f"folder:{tmp_path / 'fruit'}").x_train.shape[1:] == (32, 32, 3)  # the default size


def test_shorter_side_resized_then_centre_cropped():
    stripes = np.zeros((20, 60, 3), np.uint8)  # wide: red, green, blue thirds
    stripes[:, :20, 0] = stripes[:, 20:40, 1] = stripes[:, 40:, 2] = 255
    fitted = data._fit_image(png_bytes(Image.fromarray(stripes)), 10)
    assert fitted.shape == (10, 10, 3) and fitted.dtype == np.uint8
    np.testing.assert_array_equal(fitted[:, 1:-1], np.broadcast_to([0, 255, 0], (10, 8, 3)))  # the green middle
    tall = data._fit_image(png_bytes(Image.fromarray(np.ascontiguousarray(stripes.transpose(1, 0, 2)))), 10)
    np.testing.assert_array_equal(tall[1:-1, :], np.broadcast_to([0, 255, 0], (8, 10, 3)))


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    fitted = data._fit_image(buffer.getvalue(), 20)  # upright it is 20 wide, 40 tall: red on top
    assert fitted[2, 10, 0] > 200 and fitted[-3, 10, 2] > 200


def test_folder_without_splits_is_split_stratified_and_seeded(tmp_path):
    root = write_class_folders(tmp_path / "shapes", {"circle": 5, "square": 6, "star": 10})
    dataset = data.load_dataset(f"folder:{root}", seed=3, image_size=8)
    assert dataset.class_names == ("circle", "square", "star")
    np.testing.assert_array_equal(np.bincount(dataset.y_test), [1, 1, 2])  # round(0.2 * n), at least 1
    np.testing.assert_array_equal(np.bincount(dataset.y_train), [4, 5, 8])
    grey = lambda images: sorted(images[:, 0, 0, 0].tolist())
    assert sorted(grey(dataset.x_train) + grey(dataset.x_test)) == sorted(
        [10 * c + i for c, count in enumerate((5, 6, 10)) for i in range(count)])  # every image exactly once
    again = data.load_dataset(f"folder:{root}", seed=3, image_size=8)
    np.testing.assert_array_equal(again.x_test, dataset.x_test)
    other_seeds = [grey(data.load_dataset(f"folder:{root}", seed=seed, image_size=8).x_test) for seed in range(4, 9)]
    assert any(test != grey(dataset.x_test) for test in other_seeds)
    half = data.load_dataset(f"folder:{root}", test_fraction=0.5, image_size=8)
    np.testing.assert_array_equal(np.bincount(half.y_test), [3, 3, 5])  # 2.5 rounds half up


def test_stratified_split():
    labels = np.repeat([0, 1, 2], [3, 2, 10])
    train_idx, test_idx = data.stratified_split(labels, 0.01, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[test_idx]), [1, 1, 1])  # at least one test image each
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(15))
    _, test_idx = data.stratified_split(labels, 0.99, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[test_idx]), [2, 1, 9])  # at least one training image each
    # Pinned like balanced_subset: the same seed gives the same split on every machine.
    np.testing.assert_array_equal(data.stratified_split(labels, 0.2, seed=0)[1], [2, 4, 7, 9])
    with pytest.raises(ValueError, match="test_fraction must be a number above 0 and below 1. Received: test_fraction=1"):
        data.stratified_split(labels, 1, seed=0)
    with pytest.raises(ValueError, match="class 1 has 1"):
        data.stratified_split([0, 0, 1], 0.5, seed=0)


def test_folder_broken_images_are_skipped_with_warnings_and_a_count(tmp_path, cache_in_tmp):
    root = write_class_folders(tmp_path / "shapes", {"circle": 3, "square": 3})
    (root / "circle/broken.jpg").write_bytes(b"not a jpeg")
    whole = png_bytes(Image.new("RGB", (40, 40), (1, 2, 3)))
    (root / "square/truncated.png").write_bytes(whole[: len(whole) // 2])
    with pytest.warns(data.UnreadableImageWarning) as records:
        dataset = data.load_dataset(f"folder:{root}")
    messages = [str(record.message) for record in records]
    assert messages[0] == "Skipping unreadable image circle/broken.jpg: not an image format Pillow can read"
    assert messages[1].startswith("Skipping unreadable image square/truncated.png: cannot decode it")
    assert messages[2] == "skipped 2 unreadable images of 8"
    assert len(dataset.y_train) + len(dataset.y_test) == 6 and len(dataset.skipped) == 2
    with pytest.warns(data.UnreadableImageWarning) as records:
        cached = data.load_dataset(f"folder:{root}")  # a cache hit says so again
    assert [str(record.message) for record in records][:2] == messages[:2]
    assert str(records[2].message).startswith("skipped 2 unreadable images of 8 (found when the data was decoded")
    assert cached.skipped == dataset.skipped


def test_many_unreadable_images_are_named_up_to_a_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_NAMED_UNREADABLE", 2)
    root = write_class_folders(tmp_path / "shapes", {"circle": 2, "square": 2})
    for item in range(3):
        (root / f"circle/broken{item}.png").write_bytes(b"x")
    with pytest.warns(data.UnreadableImageWarning) as records:
        data.load_dataset(f"folder:{root}")
    assert [str(record.message) for record in records][-1] == "skipped 3 unreadable images of 7; the first 2 are named above"
    assert len(records) == 3


def test_folder_empty_class_is_an_error(tmp_path):
    root = write_class_folders(tmp_path / "shapes", {"circle": 3, "square": 3})
    (root / "empty").mkdir()
    with pytest.raises(data.DataError, match="Class folder empty holds no images .*Received: dataset='folder:"):
        data.load_dataset(f"folder:{root}")
    with pytest.raises(data.DataError, match="Class folder empty holds no images"):
        data.check_dataset(f"folder:{root}")
    (root / "empty/notes.txt").write_text("not an image")
    with pytest.raises(data.DataError, match="Class folder empty holds no images"):
        data.load_dataset(f"folder:{root}")


def test_folder_without_a_readable_image_is_an_error(tmp_path, cache_in_tmp):
    root = tmp_path / "broken"
    for class_name in ("a", "b"):
        (root / class_name).mkdir(parents=True)
        for item in range(2):
            (root / class_name / f"{item}.png").write_bytes(b"garbage")
    with pytest.warns(data.UnreadableImageWarning), pytest.raises(
            data.DataError, match="No image of the folder could be read \\(4 tried; the first: a/0.png: not an image"):
        data.load_dataset(f"folder:{root}")
    assert not list(cache_in_tmp.glob("*.npz"))  # nothing cached from a failed load


def test_folder_class_left_with_too_few_readable_images(tmp_path):
    root = write_class_folders(tmp_path / "shapes", {"circle": 3, "square": 1})
    (root / "square/broken.png").write_bytes(b"garbage")
    with pytest.warns(data.UnreadableImageWarning), pytest.raises(
            data.DataError, match="Class folder square has 1 readable image .*splitting it into train and test needs at least 2"):
        data.load_dataset(f"folder:{root}")
    split_tree = write_own_images(tmp_path / "fruit")
    (split_tree / "test/pear/g.png").write_bytes(b"garbage")
    with pytest.warns(data.UnreadableImageWarning), pytest.raises(
            data.DataError, match="Class folder test/pear has 0 readable images"):
        data.load_dataset(f"folder:{split_tree}")


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"circle": 3}, "The folder has 1 class folder \\(circle\\); a dataset needs at least 2"),
        ({"circle": 3, "square": 1}, "Class folder square holds only 1 image; splitting each class into train and test needs at least 2"),
        ({"train/circle": 2, "train/square": 2}, "The folder has train/ but no test/: give it both, or neither"),
    ],
)
def test_folder_layout_errors(tmp_path, layout, message):
    root = write_class_folders(tmp_path / "data", layout)
    with pytest.raises(data.DataError, match=message):
        data.check_dataset(f"folder:{root}")


def test_folder_test_fraction_with_train_and_test_is_an_error(tmp_path):
    root = write_own_images(tmp_path / "fruit")
    assert data.check_dataset(f"folder:{root}") == data.IMAGE_FOLDERS
    with pytest.raises(data.DataError, match="has train/ and test/ folders, so test_fraction .* does not apply"):
        data.load_dataset(f"folder:{root}", test_fraction=0.3)


def test_folder_under_one_top_folder_and_in_an_archive(tmp_path):
    write_class_folders(tmp_path / "download/shapes", {"circle": 2, "square": 3})
    dataset = data.load_dataset(f"folder:{tmp_path / 'download'}", image_size=8)
    assert dataset.class_names == ("circle", "square")
    archive = write_tar(tmp_path / "shapes.tgz", tmp_path / "download/shapes", "shapes")
    from_archive = data.load_dataset(f"folder:{archive}", image_size=8)
    np.testing.assert_array_equal(from_archive.x_test, dataset.x_test)


def test_folder_missing(tmp_path):
    with pytest.raises(data.DataError, match="The path does not exist. Received: dataset='folder:.*nowhere'"):
        data.check_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_folder_cache_is_per_image_size(tmp_path, monkeypatch, cache_in_tmp):
    root = write_class_folders(tmp_path / "shapes", {"circle": 2, "square": 2})
    small = data.load_dataset(f"folder:{root}", image_size=8)
    large = data.load_dataset(f"folder:{root}", image_size=12)
    assert small.x_train.shape[1] == 8 and large.x_train.shape[1] == 12
    assert sorted(path.name[:14] for path in cache_in_tmp.glob("*.npz")) == ["folder-shapes-"] * 2
    monkeypatch.setattr(data, "_decode_image_tree", fail_to_decode)
    np.testing.assert_array_equal(data.load_dataset(f"folder:{root}", image_size=8, seed=5).x_train.shape, (2, 8, 8, 3))


def test_check_dataset_decodes_no_image(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "shapes", {"circle": 2, "square": 2})
    monkeypatch.setattr(data, "_fit_image", pytest.fail)
    assert data.check_dataset(f"folder:{root}") == data.CLASS_FOLDERS


# --- the users' own data: list:DIR ------------------------------------------------------------------------


def write_lists(folder, lists, images_in=None, size=(24, 18)):
    """Writes `<split>.txt` files from `{file: [(path, labels), ...]}` (or raw text) and the images they name.

    Image `i` (in order of first mention) is grey `10 * i`; a path with "missing" in it gets no image.
    """
    images_in = images_in or folder
    folder.mkdir(parents=True, exist_ok=True)
    seen = {}
    for file, rows in lists.items():
        if isinstance(rows, str):
            (folder / file).write_text(rows)
            continue
        (folder / file).write_text("".join(f"{path} {' '.join(map(str, labels))}\n" for path, labels in rows))
        for path, _ in rows:
            if path not in seen and "missing" not in path:
                seen[path] = len(seen)
                (images_in / path).parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", size, 10 * seen[path]).save(images_in / path)
    return folder


TRAIN_LIST = [("images/a.jpg", [1, 0, 1]), ("images/b.png", [0, 1, 0]), ("images/sub/c.png", [0, 0, 1])]
TEST_LIST = [("images/d.png", [1, 1, 0])]
DATABASE_LIST = [("images/e.png", [0, 1, 1]), ("images/a.jpg", [1, 0, 1])]


def test_lists_multi_hot_labels_without_database(tmp_path):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST, "test.txt": TEST_LIST})
    dataset = data.load_dataset(f"list:{folder}", image_size=8)
    assert dataset.multi_label and dataset.x_db is None and dataset.y_db is None
    assert dataset.x_train.shape == (3, 8, 8, 3) and dataset.x_test.shape == (1, 8, 8, 3)
    assert dataset.y_train.dtype == np.int64
    np.testing.assert_array_equal(dataset.y_train, [labels for _, labels in TRAIN_LIST])
    np.testing.assert_array_equal(dataset.x_train[:, 0, 0, 0], [0, 10, 20])  # the lists' order
    assert dataset.class_names == ("label0", "label1", "label2")
    assert data.check_dataset(f"list:{folder}") == data.IMAGE_LISTS


def test_lists_with_database_class_names_and_another_image_root(tmp_path):
    lists = {"train.txt": TRAIN_LIST, "test.txt": TEST_LIST, "database.txt": DATABASE_LIST}
    folder = write_lists(tmp_path / "lists", lists, images_in=tmp_path / "pictures")
    (folder / "classes.txt").write_text("sky\nwater\n\nperson\n")
    dataset = data.load_dataset(f"list:{folder}", image_root=tmp_path / "pictures", image_size=8)
    assert dataset.x_db.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(dataset.y_db, [[0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(dataset.x_db[:, 0, 0, 0], [40, 0])  # e.png is the fifth image written
    assert dataset.class_names == ("sky", "water", "person")
    (folder / "classes.txt").write_text("sky\nwater\n")
    with pytest.raises(data.DataError, match="classes.txt names 2 classes; the list files have 3 labels"):
        data.check_dataset(f"list:{folder}", image_root=tmp_path / "pictures")


@pytest.mark.parametrize(
    "test_text, message",
    [
        ("images/d.png 1 1 0\n\nimages/a.jpg 1 0\n", "test.txt line 3 has 2 labels; expected 3, as train.txt line 1 has"),
        ("images/d.png 1 2 0\n", "test.txt line 1: label 2 is '2'; labels must be 0 or 1"),
        ("images/d.png 1 x 0\n", "test.txt line 1: label 2 is 'x'"),
        ("images/d.png\n", "test.txt line 1 has an image path but no labels"),
        ("images/d.png 1 0 1\n0 1 0\n", "test.txt line 2 starts with '0', a label, not an image path"),
        ("my photo.png 1 0 1\n", "test.txt line 1: label 1 is 'photo.png'; labels must be 0 or 1 \\(a path may not contain spaces\\)"),
        ("../outside.png 1 0 1\n", "test.txt line 1: '../outside.png' leads outside the image root"),
        ("images/../../outside.png 1 0 1\n", "leads outside the image root"),
        ("/etc/passwd 1 0 1\n", "test.txt line 1: '/etc/passwd' is an absolute path"),
        ("", "test.txt lists no images"),
    ],
)
def test_malformed_list_lines(tmp_path, test_text, message):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST, "test.txt": test_text})
    with pytest.raises(data.DataError, match=message):
        data.check_dataset(f"list:{folder}")
    with pytest.raises(data.DataError, match=message):
        data.load_dataset(f"list:{folder}")


def test_list_symlink_out_of_the_root_is_an_error(tmp_path):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST, "test.txt": "images/link.png 1 0 0\n"})
    Image.new("L", (8, 8)).save(tmp_path / "secret.png")
    (folder / "images/link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(data.DataError, match="test.txt line 1: 'images/link.png' leads outside the image root .*symbolic link"):
        data.load_dataset(f"list:{folder}")
    inside = folder / "images/inside.png"
    inside.symlink_to(folder / "images/b.png")  # a link that stays inside is fine
    (folder / "test.txt").write_text("images/inside.png 1 0 0\n")
    assert data.load_dataset(f"list:{folder}", image_size=8).x_test[0, 0, 0, 0] == 10


def test_list_unreadable_images_are_skipped(tmp_path):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST + [("images/missing.png", [1, 0, 0])],
                                            "test.txt": TEST_LIST})
    with pytest.warns(data.UnreadableImageWarning) as records:
        dataset = data.load_dataset(f"list:{folder}", image_size=8)
    assert str(records[0].message).startswith("Skipping unreadable image images/missing.png (train.txt line 4): cannot read it")
    assert str(records[-1].message) == "skipped 1 unreadable image of 5"
    assert len(dataset.y_train) == 3
    (folder / "test.txt").write_text("images/missing.png 1 0 0\n")
    with pytest.warns(data.UnreadableImageWarning), pytest.raises(data.DataError, match="No image listed in test.txt could be read"):
        data.load_dataset(f"list:{folder}", image_size=8)


def test_list_files_missing(tmp_path):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST})
    with pytest.raises(data.DataError, match="The list folder has no test.txt; a list: dataset needs train.txt and test.txt"):
        data.check_dataset(f"list:{folder}")
    with pytest.raises(data.DataError, match="The list folder does not exist. Received: dataset='list:"):
        data.check_dataset(f"list:{tmp_path / 'nowhere'}")
    with pytest.raises(data.DataError, match="The image root .*nowhere' does not exist"):
        data.check_dataset(f"list:{folder}", image_root=tmp_path / "nowhere")


def test_list_cache_follows_the_list_contents(tmp_path, monkeypatch, cache_in_tmp):
    folder = write_lists(tmp_path / "nus", {"train.txt": TRAIN_LIST, "test.txt": TEST_LIST})
    first = data.load_dataset(f"list:{folder}", image_size=8)
    monkeypatch.setattr(data, "_decode_lists", fail_to_decode)
    np.testing.assert_array_equal(data.load_dataset(f"list:{folder}", image_size=8).y_train, first.y_train)
    monkeypatch.undo()
    monkeypatch.setenv(data.CACHE_ENV, str(cache_in_tmp))
    stat = (folder / "train.txt").stat()
    (folder / "train.txt").write_text((folder / "train.txt").read_text().replace("1 0 1", "1 1 1"))
    os.utime(folder / "train.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: contents still count
    assert data.load_dataset(f"list:{folder}", image_size=8).y_train[0].tolist() == [1, 1, 1]
    assert len(list(cache_in_tmp.glob("list-nus-*.npz"))) == 2


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


def test_balanced_subset_of_multi_hot_labels_is_uniform():
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [1, 0]])
    np.testing.assert_array_equal(data.balanced_subset(labels, 3, seed=1), data.draw_queries(5, 3, seed=1))
    train_idx, val_idx = data.holdout_split(labels, 2, seed=0)
    assert len(train_idx) == 3 and len(val_idx) == 2
    with pytest.raises(ValueError, match="labels must be a non-empty 1-D integer array or a 0/1 multi-hot matrix"):
        data.balanced_subset(labels * 2, 3, seed=0)


# --- the real offline copies, when present ----------------------------------------------------------------


def test_real_mnist(shared_datasets):
    dataset = data.load_dataset("mnist", data_dir=shared_datasets / "mnist")
    assert dataset.x_train.shape == (60000, 28, 28, 1) and dataset.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(dataset.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(dataset.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


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


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    dataset = data.load_dataset("fashion_mnist", data_dir=FASHION_MNIST)
    assert dataset.x_train.shape == (60000, 28, 28, 1)
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10
