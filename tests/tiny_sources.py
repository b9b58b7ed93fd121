"""Tiny data sources for the data tests, written on the fly: offline copies of every layout, class folders."""

import gzip
import pickle
import struct
import tarfile

import numpy as np
from PIL import Image

import data
import offline

CLASSES = ("cat", "dog", "frog")  # the tiny image-folder tree's classes, already in sorted order
CIFAR_SIZE = (32, 32)  # (width, height), as Pillow has it
MNIST_SIZE = (28, 28)


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
    for key, file, _ in offline._IDX_MEMBERS:
        (folder / file).write_bytes(gzip.compress(overrides.get(key, idx_bytes(arrays[key]))))
    return arrays


def write_class_folders(root, counts, size=(20, 12)):
    """`<class>/<i>.png` trees without train/ and test/; image i of class c is grey 10 * c + i."""
    for class_index, (class_name, count) in enumerate(counts.items()):
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for item in range(count):
            Image.new("L", size, 10 * class_index + item).save(root / class_name / f"{item:02d}.png")
    return root


def fail_to_decode(*args):
    raise AssertionError("decoded although the cache should have answered")
