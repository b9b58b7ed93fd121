"""Every dataset the CLI reads, as uint8 arrays, cached; and the seeded draws made from them.

`load_dataset("cifar10")` goes through `keras.datasets` (Keras downloads the files once and keeps them in
`~/.keras/datasets`). `load_dataset("cifar10", data_dir=PATH)` reads an offline copy instead and detects
its layout:

- the official CIFAR-10 python batches: `data_batch_1`..`data_batch_5`, `test_batch`, `batches.meta`;
- an image-folder tree `train/<class>/<image>`, `test/<class>/<image>`: the folder name is the class,
  classes sorted by name, images within a class (at any depth below its folder) in sorted path order;
- the official IDX files of MNIST and Fashion-MNIST: `train-images-idx3-ubyte.gz`,
  `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`;

each directly in PATH or under one top folder of it, or the same inside a `.tar`, `.tar.gz` or `.tgz`
archive (read as a stream, never extracted to disk). The decoded arrays of an offline copy are cached as an
`.npz` file (see `load_dataset`), so only the first run pays for decoding.

The users' own labelled images come in two forms, named like datasets:

- `load_dataset("folder:PATH")`: an image-folder tree with one sub-folder per class, with `train/` and
  `test/` above the class folders or without them; without them the images are split, stratified and
  seeded, into train and test (`test_fraction` of each class, at least one image on each side);
- `load_dataset("list:DIR")`: the list files of the DHN/HashNet data, `DIR/train.txt`, `DIR/test.txt` and
  optionally `DIR/database.txt`, one image a line: a path relative to the image root, then a multi-hot
  label vector (`images/0001.jpg 0 1 0 1`). Labels are int64 `[n, num_classes]` (`Dataset.multi_label`),
  and `database.txt`, when present, becomes `Dataset.x_db`/`y_db`. An optional `DIR/classes.txt`, one
  name a line, names the labels (else `label0`, `label1`, ...).

Their images may have any size and mode (grey, RGBA, palette, CMYK, 16-bit): each is converted to RGB, its
shorter side resized to `image_size` and the centre cropped to a square. An unreadable image is skipped
with an `UnreadableImageWarning` naming it, and a last warning counts them; a dataset without a readable
image, an empty class, a list path that leads outside the image root or a malformed list line is a
`DataError` whose message says where.

`balanced_subset`, `draw_queries`, `holdout_split` and `stratified_split` draw with
`np.random.default_rng(seed)`: the same seed and the same data source give the same indices on every
machine. The order of images differs between sources (an image-folder tree is sorted by class), so an index
is not the same image across sources.

Importing this module stays cheap: Keras (and so TensorFlow) is imported only when a dataset is downloaded.

Example:

    python -c "import data; print(data.load_dataset('mnist', data_dir='../shared/datasets/mnist'))"
    python -c "import data; print(data.load_dataset('folder:my_photos', image_size=64).x_train.shape)"
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import pickle
import posixpath
import re
import struct
import sys
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DATASETS = ("cifar10", "mnist", "fashion_mnist")
DEFAULT_DATASET = "cifar10"

# The users' own data, named "folder:PATH" or "list:DIR" (`parse_dataset_name`).
FOLDER, LIST = "folder", "list"
OWN_DATA_KINDS = (FOLDER, LIST)
DEFAULT_IMAGE_SIZE = 32  # pixels, the side of the square every own image is resized and cropped to
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024
DEFAULT_TEST_FRACTION = 0.2  # share of each class held out as test images when a tree has no train/ and test/
MIN_CLASSES = 2  # a folder dataset with one class has nothing to retrieve against
LIST_FILES = {"train": "train.txt", "test": "test.txt", "db": "database.txt"}  # database.txt is optional
CLASSES_FILE = "classes.txt"  # optional: the names of a list dataset's labels, one a line
# Unreadable images named one warning each, up to this many; the last warning counts all of them.
MAX_NAMED_UNREADABLE = 20
# Images are decoded on threads (Pillow releases the GIL while decoding and resizing), in chunks, so that an
# archive read as a stream never holds more than a chunk of encoded images in memory.
DECODE_THREADS = min(8, os.cpu_count() or 1)
DECODE_CHUNK = 256

# Cache of decoded offline copies: `$DEEPHASH_CACHE`, else `~/.cache/deephash`.
CACHE_ENV = "DEEPHASH_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/deephash"
# Part of every cache key: bump it whenever decoding changes what the arrays hold.
CACHE_FORMAT_VERSION = 1
_CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Offline layouts, as `check_data_dir` and `check_dataset` name them.
CIFAR_BATCHES = "cifar-batches"
IMAGE_FOLDERS = "image-folders"
IDX_FILES = "idx"
CLASS_FOLDERS = "class-folders"  # own data: <class>/<image> without train/ and test/, split when loaded
IMAGE_LISTS = "image-lists"  # own data: train.txt, test.txt [, database.txt]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
_SPLITS = ("train", "test")
_POOL = "pool"  # the one "split" of a class-folder tree, before `stratified_split`

_CIFAR_TRAIN_FILES = tuple(f"data_batch_{number}" for number in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_CIFAR_META_FILE = "batches.meta"
_CIFAR_FILES = (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE, _CIFAR_META_FILE)
_CIFAR_IMAGE_SHAPE = (3, 32, 32)  # each row of a batch: 1024 red, 1024 green, 1024 blue bytes
# The globals an official batch (a dict of a numpy array and lists) needs; anything else is refused, so
# unpickling a hostile file runs no code.
_CIFAR_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}

# IDX: magic number 0x0000TTDD (TT = element type, DD = number of dimensions), then DD big-endian uint32 sizes.
_IDX_UNSIGNED_BYTE = 0x08
_IDX_IMAGE_SIZE = (28, 28)  # MNIST and Fashion-MNIST, the datasets published as IDX files
_IDX_MEMBERS = (  # (array key, file name, dimensions)
    ("x_train", "train-images-idx3-ubyte.gz", 3),
    ("y_train", "train-labels-idx1-ubyte.gz", 1),
    ("x_test", "t10k-images-idx3-ubyte.gz", 3),
    ("y_test", "t10k-labels-idx1-ubyte.gz", 1),
)

_LAYOUT_NAMES = {CIFAR_BATCHES: "CIFAR-10 python batches", IMAGE_FOLDERS: "an image-folder tree", IDX_FILES: "IDX files"}
_LAYOUT_CONTENTS = {
    CIFAR_BATCHES: "data_batch_1..5, test_batch, batches.meta",
    IMAGE_FOLDERS: "train/<class>/<image>, test/<class>/<image>",
    IDX_FILES: ", ".join(file for _, file, _ in _IDX_MEMBERS),
}


@dataclasses.dataclass(frozen=True)
class _DatasetSpec:
    image_size: tuple  # (height, width) of every image: a copy of another size is another dataset
    image_mode: str  # the Pillow mode every image is converted to: "RGB" (3 channels) or "L" (1 channel)
    class_names: tuple  # used where the source does not name its classes
    layouts: tuple  # the offline layouts that can hold this dataset
    # Own data: resize any image to image_size and skip unreadable ones with a warning, where a known
    # dataset's copy refuses both (an image of another size means another dataset).
    own_images: bool = False


_SPECS = {
    "cifar10": _DatasetSpec((32, 32), "RGB", CIFAR10_CLASSES, (CIFAR_BATCHES, IMAGE_FOLDERS)),
    "mnist": _DatasetSpec((28, 28), "L", MNIST_CLASSES, (IDX_FILES, IMAGE_FOLDERS)),
    "fashion_mnist": _DatasetSpec((28, 28), "L", FASHION_MNIST_CLASSES, (IDX_FILES, IMAGE_FOLDERS)),
}


class DataError(Exception):
    """Bad dataset input: a missing, unreadable or unrecognised data folder or archive, or a failed download.

    The message is one line meant for the user; the CLI prints it and exits with status 2.
    """


class UnreadableImageWarning(UserWarning):
    """An image of the user's own data could not be read or decoded and was left out."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset's train and test splits, and for list data with a `database.txt` its database split.

    Attributes:
        name: one of `DATASETS`, or `"folder:PATH"` / `"list:DIR"` as passed to `load_dataset`.
        x_train: uint8 images, shape `(n_train, height, width, channels)`; 3 channels (RGB) for CIFAR-10
            and own data, 1 for MNIST and Fashion-MNIST.
        y_train: int64 labels: class indices into `class_names`, shape `(n_train,)`; or, for list data,
            multi-hot rows of 0/1, shape `(n_train, num_classes)` (see `multi_label`).
        x_test: uint8 images, shape `(n_test, height, width, channels)`.
        y_test: int64 labels, shape `(n_test,)` or `(n_test, num_classes)`.
        class_names: the class names, in label order.
        source: where the arrays came from: `"keras.datasets.<name>"` or the resolved path.
        x_db: uint8 images of a separate database split (`database.txt` of list data), else `None`.
            Defaults to `None`.
        y_db: its labels, like `y_train`, else `None`. Defaults to `None`.
        skipped: the own images left out because they could not be read, as `"<path>: <reason>"`.
            Defaults to `()`.
    """

    name: str
    x_train: np.ndarray = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    class_names: tuple
    source: str
    x_db: np.ndarray = dataclasses.field(default=None, repr=False)
    y_db: np.ndarray = dataclasses.field(default=None, repr=False)
    skipped: tuple = dataclasses.field(default=(), repr=False)

    @property
    def multi_label(self):
        """Whether the labels are multi-hot rows `[n, num_classes]` (an image may have several labels)."""
        return self.y_train.ndim == 2


def load_dataset(name=DEFAULT_DATASET, data_dir=None, cache_dir=None, *, image_size=None, test_fraction=None,
                 image_root=None, seed=0):
    """Loads a dataset's splits as uint8 images and int64 labels.

    Without `data_dir` a named dataset comes from `keras.datasets`, which downloads it once. With
    `data_dir` it comes from that offline copy (any layout the module docstring lists). A name
    `"folder:PATH"` or `"list:DIR"` loads the user's own images (see the module docstring). The decoded
    arrays of an offline copy or own data are cached in `cache_dir` as `<name>-<key>.npz`, `<name>` being
    `dataset_slug(name)`. The key hashes the cache format version, the name, the resolved path, the size
    and modification time of the source (of every file in it, for a folder), for own data also
    `image_size`, and for list data the contents of the list files (not the images they name: replace an
    image under the same path and the cache must be deleted by hand). So changing the source invalidates
    the entry. The split of a class-folder tree is drawn after the cache, so `seed` and `test_fraction`
    share one entry. A cache file is written under a temporary name and renamed when complete; an
    unreadable one is decoded anew, and an unwritable cache only warns.

    Args:
        name: one of `DATASETS`, `"folder:PATH"` or `"list:DIR"`. Defaults to `"cifar10"`.
        data_dir: for a named dataset, a folder or archive holding an offline copy. Defaults to `None`
            (download with `keras.datasets`).
        cache_dir: the folder for decoded arrays. Defaults to `None`: `$DEEPHASH_CACHE` when set,
            else `~/.cache/deephash`.
        image_size: own data only: the side, in pixels, of the square every image becomes, from
            `MIN_IMAGE_SIZE` to `MAX_IMAGE_SIZE`. Defaults to `None`: `DEFAULT_IMAGE_SIZE` (32).
        test_fraction: folder data without `train/` and `test/` only: the share of each class drawn as
            test images, above 0 and below 1. Defaults to `None`: `DEFAULT_TEST_FRACTION` (0.2).
        image_root: list data only: the folder the list paths are relative to. Defaults to `None`: the
            list folder `DIR`.
        seed: non-negative seed of the stratified split of a class-folder tree; unused otherwise.
            Defaults to 0.

    Returns:
        A `Dataset`: `x_train` `(n_train, h, w, c)` and `x_test` `(n_test, h, w, c)` uint8 (c = 3, RGB,
        for CIFAR-10 and own data; c = 1 for MNIST and Fashion-MNIST), `y_train` `(n_train,)` and
        `y_test` `(n_test,)` int64; for list data, labels `(n, num_classes)` and, with a
        `database.txt`, `x_db` and `y_db`.

    Raises:
        ValueError: for an unknown `name` or an argument out of range or given where it does not apply.
        DataError: when the download fails or the data is missing, unreadable, empty, corrupt or in no
            known layout.

    Example:

    >>> dataset = load_dataset("mnist", data_dir="../shared/datasets/mnist")  # doctest: +SKIP
    >>> dataset.x_train.shape, dataset.y_test.dtype  # doctest: +SKIP
    ((60000, 28, 28, 1), dtype('int64'))
    >>> load_dataset("folder:my_photos", image_size=64).x_train.shape  # doctest: +SKIP
    (812, 64, 64, 3)
    """
    kind, path = parse_dataset_name(name)
    _check_own_data_options(name, kind, data_dir, image_size, test_fraction, image_root)
    if kind == FOLDER:
        return _load_folder(name, path, _resolve_image_size(image_size), test_fraction, seed, cache_dir)
    if kind == LIST:
        return _load_lists(name, path, image_root, _resolve_image_size(image_size), cache_dir)
    spec = _dataset_spec(name)
    if data_dir is None:
        return _load_from_keras(name)
    with _received(data_dir):
        source = _open_source(data_dir)
        cache_path = _cache_path(_resolve_cache_dir(cache_dir), name, [name, str(source.path), source.fingerprint()])
        arrays = _read_cache(cache_path)
        if arrays is None:
            arrays = _decode_layout(source, _inspect(source, name), spec)
            _write_cache(cache_path, arrays)
    return _as_dataset(name, arrays, source=str(source.path))


def check_dataset(name, *, test_fraction=None, image_root=None):
    """Checks the user's own data (`"folder:PATH"` or `"list:DIR"`) without decoding any image.

    For a folder: that it exists and holds at least two non-empty class folders (with the same classes in
    `train/` and `test/` where those exist). For lists: that `train.txt` and `test.txt` exist and every
    line of every list file is well formed, with paths that stay inside the image root on paper (symbolic
    links are followed when the images are read).

    Args:
        name: `"folder:PATH"` or `"list:DIR"`.
        test_fraction: as for `load_dataset`; refused for a tree that has `train/` and `test/`. Defaults to
            `None`.
        image_root: as for `load_dataset`. Defaults to `None`.

    Returns:
        The layout found: `"image-folders"`, `"class-folders"` or `"image-lists"`.

    Raises:
        ValueError: when `name` is not own data or an argument does not apply.
        DataError: when the data cannot be used; the message says why.
    """
    kind, path = parse_dataset_name(name)
    if kind is None:
        raise ValueError(f"name must be folder:PATH or list:DIR. Received: name={name!r}")
    _check_own_data_options(name, kind, None, None, test_fraction, image_root)
    with _received(name, "dataset"):
        if kind == FOLDER:
            return _inspect_folder(_open_source(path), test_fraction).format
        _inspect_lists(path, image_root)
        return IMAGE_LISTS


def parse_dataset_name(name):
    """Splits a dataset name into the kind of own data and its path.

    Args:
        name: one of `DATASETS`, `"folder:PATH"` or `"list:DIR"`.

    Returns:
        `(kind, path)`: `("folder", "PATH")` or `("list", "DIR")`, or `(None, None)` for a named dataset.

    Raises:
        ValueError: for any other name, or a prefix with no path after it.

    Example:

    >>> parse_dataset_name("folder:~/photos"), parse_dataset_name("mnist")
    (('folder', '~/photos'), (None, None))
    """
    for kind in OWN_DATA_KINDS:
        if isinstance(name, str) and name.startswith(f"{kind}:"):
            path = name[len(kind) + 1:]
            if not path:
                raise ValueError(f"name {kind}:PATH needs a path after '{kind}:'. Received: name={name!r}")
            return kind, path
    _dataset_spec(name)
    return None, None


def dataset_slug(name):
    """A short, filesystem-safe name for a dataset: the name itself, or `<kind>-<folder name>` for own data.

    Example:

    >>> dataset_slug("folder:/data/My Photos/"), dataset_slug("cifar10")
    ('folder-My_Photos', 'cifar10')
    """
    kind, path = parse_dataset_name(name)
    if kind is None:
        return name
    base = Path(path).expanduser().resolve().name
    return f"{kind}-{re.sub(r'[^A-Za-z0-9._-]+', '_', base).strip('._') or 'root'}"


def check_data_dir(path, name=None):
    """Checks that an offline copy can be read, without decoding any image.

    Checks that the path exists, is readable and not empty, and holds a known layout: for an image-folder
    tree, that train/ and test/ have the same non-empty class folders; for IDX files, that the headers are
    sound and agree. Reading an archive's member list decompresses it once (about 1 s for CIFAR-10).

    Args:
        path: a folder or `.tar`/`.tar.gz`/`.tgz` archive holding an offline copy.
        name: when given, also check that the layout can hold this dataset, one of `DATASETS`.
            Defaults to `None`.

    Returns:
        The layout found: `"cifar-batches"`, `"image-folders"` or `"idx"`.

    Raises:
        DataError: when the copy cannot be used; the message says why.
    """
    if name is not None:
        _dataset_spec(name)
    with _received(path):
        return _inspect(_open_source(path), name).format


def balanced_subset(labels, n, seed):
    """Draws a class-balanced subset of `n` items, seeded.

    Each class (in sorted label order) gets `n // C` items, C being the number of classes, and the first
    `n % C` classes one more; so when `n < C` the first `n` classes get one item each. Within a class the
    items are drawn without replacement, classes in sorted order, from `np.random.default_rng(seed)`.
    Multi-hot labels, whose classes overlap, cannot be balanced that way: their `n` items are drawn
    uniformly, like `draw_queries`.

    Args:
        labels: 1-D integer array of class labels, or a 0/1 multi-hot matrix `[n_items, num_classes]`.
        n: how many items to draw, from 1 to `len(labels)`.
        seed: non-negative integer seed.

    Returns:
        Sorted int64 indices into `labels`, shape `(n,)`.

    Raises:
        ValueError: when `n` is out of range or a class holds fewer items than its share.

    Example:

    >>> balanced_subset([0, 0, 0, 1, 1, 1], 4, seed=0).shape
    (4,)
    """
    labels = _as_labels(labels)
    _check_count("n", n, 1, len(labels))
    _check_seed(seed)
    if labels.ndim == 2:
        return draw_queries(len(labels), n, seed)
    classes, counts = np.unique(labels, return_counts=True)
    shares = np.full(len(classes), n // len(classes))
    shares[: n % len(classes)] += 1
    for class_label, share, count in zip(classes, shares, counts):
        if share > count:
            raise ValueError(
                f"n asks for {share} items of class {class_label}, which has only {count}. Received: n={n}"
            )
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == class_label), size=share, replace=False)
             for class_label, share in zip(classes, shares)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def draw_queries(n_total, n, seed):
    """Draws `n` of `n_total` items without replacement, seeded.

    Args:
        n_total: how many items there are.
        n: how many to draw, from 1 to `n_total`; `None` or `n_total` takes all of them, in order.
        seed: non-negative integer seed.

    Returns:
        Sorted int64 indices, shape `(n,)`.

    Raises:
        ValueError: when `n` is out of range.

    Example:

    >>> draw_queries(5, None, seed=0)
    array([0, 1, 2, 3, 4])
    """
    _check_count("n_total", n_total, 0, None)
    _check_seed(seed)
    if n is None or n == n_total:
        return np.arange(n_total, dtype=np.int64)
    _check_count("n", n, 1, n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False)).astype(np.int64)


def holdout_split(labels, n_val, seed):
    """Holds out a class-balanced validation set, seeded, for model selection without the test queries.

    The validation items are `balanced_subset(labels, n_val, seed)`; the training items are the rest.

    Args:
        labels: 1-D integer array of class labels, or a 0/1 multi-hot matrix (drawn uniformly).
        n_val: how many items to hold out, from 1 to `len(labels) - 1`.
        seed: non-negative integer seed.

    Returns:
        `(train_idx, val_idx)`: disjoint, sorted int64 indices into `labels` that together cover it.

    Raises:
        ValueError: when `n_val` is out of range or a class holds fewer items than its share.
    """
    labels = _as_labels(labels)
    _check_count("n_val", n_val, 1, len(labels) - 1)
    val_idx = balanced_subset(labels, n_val, seed)
    train_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), val_idx, assume_unique=True)
    return train_idx, val_idx


def stratified_split(labels, test_fraction, seed):
    """Splits items into train and test per class, seeded: each class keeps at least one item on each side.

    Each class of n items (classes in sorted label order) gives `round(test_fraction * n)` items to test,
    clipped to 1..n-1, drawn without replacement from `np.random.default_rng(seed)`.

    Args:
        labels: 1-D integer array of class labels; every class needs at least 2 items.
        test_fraction: the share of each class drawn as test items, above 0 and below 1.
        seed: non-negative integer seed.

    Returns:
        `(train_idx, test_idx)`: disjoint, sorted int64 indices into `labels` that together cover it.

    Raises:
        ValueError: when `test_fraction` is out of range or a class has fewer than 2 items.

    Example:

    >>> train_idx, test_idx = stratified_split([0, 0, 0, 0, 0, 1, 1], 0.2, seed=0)
    >>> len(train_idx), len(test_idx)
    (5, 2)
    """
    labels = _as_labels(labels, multi_hot=False)
    _check_fraction("test_fraction", test_fraction)
    _check_seed(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise ValueError(
            f"every class needs at least 2 items, one for train and one for test; class "
            f"{classes[counts.argmin()]} has {counts.min()}. Received: labels with counts {counts.tolist()}"
        )
    rng = np.random.default_rng(seed)
    picks = []
    for class_label, count in zip(classes, counts):
        n_test = min(max(int(np.floor(test_fraction * count + 0.5)), 1), count - 1)
        picks.append(rng.choice(np.flatnonzero(labels == class_label), size=n_test, replace=False))
    test_idx = np.sort(np.concatenate(picks)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), test_idx, assume_unique=True)
    return train_idx, test_idx


# --- argument checks ---------------------------------------------------------------------------------


def _dataset_spec(name):
    if name not in _SPECS:
        raise ValueError(
            f"name must be one of {', '.join(DATASETS)}, or folder:PATH or list:DIR for your own images. "
            f"Received: name={name!r}"
        )
    return _SPECS[name]


def _as_labels(labels, multi_hot=True):
    """Integer labels `[n]`, or (when `multi_hot`) a 0/1 matrix `[n, num_classes]`; else a ValueError."""
    labels = np.asarray(labels)
    is_integer = labels.size > 0 and np.issubdtype(labels.dtype, np.integer)
    if is_integer and labels.ndim == 1:
        return labels
    if multi_hot and is_integer and labels.ndim == 2 and np.isin(labels, (0, 1)).all():
        return labels
    expected = "a non-empty 1-D integer array" + (" or a 0/1 multi-hot matrix" if multi_hot else "")
    raise ValueError(f"labels must be {expected}. Received: labels of shape {labels.shape} and dtype {labels.dtype}")


def _check_fraction(argument, value):
    is_real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not is_real or not 0 < value < 1:
        raise ValueError(f"{argument} must be a number above 0 and below 1. Received: {argument}={value!r}")


def _check_own_data_options(name, kind, data_dir, image_size, test_fraction, image_root):
    """Refuses options given where they do not apply, and out-of-range values, naming the argument."""
    applies = {
        "data_dir": (data_dir, (None,), "the named datasets"),
        "image_size": (image_size, OWN_DATA_KINDS, "folder: and list: datasets"),
        "test_fraction": (test_fraction, (FOLDER,), "folder: datasets"),
        "image_root": (image_root, (LIST,), "list: datasets"),
    }
    for argument, (value, kinds, which) in applies.items():
        if value is not None and kind not in kinds:
            raise ValueError(f"{argument} applies to {which} only. Received: {argument}={value!r} with name={name!r}")
    if image_size is not None:
        _check_count("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    if test_fraction is not None:
        _check_fraction("test_fraction", test_fraction)


def _resolve_image_size(image_size):
    return DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)


def _check_count(argument, value, low, high):
    is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_integer or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{argument} must be an integer {bounds}. Received: {argument}={value!r}")


def _check_seed(seed):
    _check_count("seed", seed, 0, None)


# --- keras.datasets ------------------------------------------------------------------------------------


def _load_from_keras(name):
    from keras import datasets as keras_datasets  # imported here: Keras starts TensorFlow

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras_datasets, name).load_data()
    except Exception as error:  # Keras raises a bare Exception when the fetch fails
        raise DataError(
            f"Downloading {name} with keras.datasets failed ({error}); pass --data-dir with an offline copy "
            f"instead. Received: name={name!r}"
        ) from error
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
              "class_names": _SPECS[name].class_names}
    return _as_dataset(name, arrays, source=f"keras.datasets.{name}")


def _as_dataset(name, arrays, source, multi_label=False):
    """A `Dataset` from arrays keyed like `_CACHE_KEYS` (and `x_db`, `y_db`, `skipped` where present).

    Grey images get a channel axis; labels become int64, flat unless `multi_label` (rows `[n, C]`).
    """
    def labels(key):
        values = np.asarray(arrays[key], dtype=np.int64)
        return values if multi_label else values.reshape(-1)

    has_db = "x_db" in arrays
    return Dataset(
        name=name,
        x_train=_with_channels(arrays["x_train"]),
        y_train=labels("y_train"),
        x_test=_with_channels(arrays["x_test"]),
        y_test=labels("y_test"),
        class_names=tuple(str(class_name) for class_name in arrays["class_names"]),
        source=source,
        x_db=_with_channels(arrays["x_db"]) if has_db else None,
        y_db=labels("y_db") if has_db else None,
        skipped=tuple(str(entry) for entry in arrays.get("skipped", ())),
    )


def _with_channels(images):
    """uint8 images with a channel axis: grey `(n, h, w)` becomes `(n, h, w, 1)`."""
    images = np.asarray(images, dtype=np.uint8)
    return images[..., np.newaxis] if images.ndim == 3 else images


# --- sources: a folder or an archive, both listed and read by member name ------------------------------


@contextlib.contextmanager
def _received(value, argument="data_dir"):
    """Ends the message of any DataError raised inside with the data path, as Keras messages do."""
    try:
        yield
    except DataError as error:
        error.args = (f"{error} Received: {argument}={str(value)!r}",)
        raise


@dataclasses.dataclass(frozen=True)
class _Listing:
    files: frozenset  # relative POSIX paths of regular files, hidden ones left out
    dirs: frozenset  # relative POSIX paths of folders, including those only implied by a file's path


def _listing(files, dirs):
    """A `_Listing` whose folders include every ancestor of the given files and folders."""
    folders = set()
    for name in (*files, *dirs):
        folder = name if name in dirs else posixpath.dirname(name)
        while folder and folder not in folders:
            folders.add(folder)
            folder = posixpath.dirname(folder)
    return _Listing(frozenset(files), frozenset(folders))


def _open_source(data_dir):
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError("The path does not exist.")
    path = path.resolve()
    if path.is_dir():
        return _FolderSource(path)
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return _ArchiveSource(path)
    raise DataError(f"The path must be a folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive.")


class _FolderSource:
    """An offline copy unpacked in a folder; scanned once, on creation."""

    def __init__(self, path):
        self.path = path
        self._file_stats = {}
        dirs = set()
        pending = [""]
        while pending:
            self._scan(pending.pop(), dirs, pending)
        if not self._file_stats and not dirs:
            raise DataError("The path is an empty folder (hidden files aside).")
        self.listing = _listing(self._file_stats, dirs)

    def _scan(self, relative, dirs, pending):
        try:
            with os.scandir(self.path / relative) as entries:
                for entry in entries:
                    name = posixpath.join(relative, entry.name)
                    if is_hidden(entry.name):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        dirs.add(name)
                        pending.append(name)
                    elif entry.is_file():
                        stat = entry.stat()
                        self._file_stats[name] = (stat.st_size, stat.st_mtime_ns)
        except OSError as error:
            raise DataError(f"Cannot read {error.filename}: {error.strerror}.") from error

    def fingerprint(self):
        return sorted((name, *stat) for name, stat in self._file_stats.items())

    def read(self, names):
        """Yields `(name, bytes)` for each of `names`."""
        for name in names:
            try:
                yield name, (self.path / name).read_bytes()
            except OSError as error:
                raise DataError(f"Cannot read {error.filename}: {error.strerror}.") from error


class _ArchiveSource:
    """An offline copy in a tar archive, read as a stream: each pass decompresses it once."""

    def __init__(self, path):
        self.path = path

    @functools.cached_property
    def listing(self):
        files, dirs = [], []
        for name, member, _ in self._members(wanted=()):
            if member.isfile():
                files.append(name)
            elif member.isdir():
                dirs.append(name)
        if not files and not dirs:
            raise DataError("The path is an empty archive.")
        return _listing(files, dirs)

    def fingerprint(self):
        stat = self.path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def read(self, names):
        """Yields `(name, bytes)` for each of `names`, in archive order."""
        for name, _, payload in self._members(wanted=frozenset(names)):
            if payload is not None:
                yield name, payload

    def _members(self, wanted):
        """Yields `(name, member, payload)` for each visible member; payload is None unless its name is wanted."""
        try:
            with tarfile.open(self.path, mode="r|*") as archive:
                for member in archive:
                    name = posixpath.normpath(member.name).lstrip("/")
                    if is_hidden(name):
                        continue
                    wanted_file = member.isfile() and name in wanted
                    yield name, member, archive.extractfile(member).read() if wanted_file else None
        except PermissionError as error:
            raise DataError(f"Cannot read the archive: {error.strerror}.") from error
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise DataError(f"Cannot read the archive, it is corrupt or truncated: {error}.") from error


# --- layouts -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layout:
    format: str  # CIFAR_BATCHES, IMAGE_FOLDERS or IDX_FILES
    prefix: str  # "" or "<top folder>/"
    listing: _Listing


def _inspect(source, name):
    """Finds the source's layout and checks it without decoding images; `name` may be None."""
    layout = _detect_layout(source.listing)
    if name is not None and layout.format not in _SPECS[name].layouts:
        raise DataError(
            f"data_dir holds {_LAYOUT_NAMES[layout.format]}, which cannot hold {name}; "
            f"{name} needs {' or '.join(_LAYOUT_NAMES[fit] for fit in _SPECS[name].layouts)}."
        )
    if layout.format == IMAGE_FOLDERS:
        _image_tree(layout)
    elif layout.format == IDX_FILES:
        _check_idx_headers(source, layout)
    return layout


def _detect_layout(listing):
    prefixes = [""]
    top_level = {name.split("/")[0] for name in listing.files | listing.dirs}
    if len(top_level) == 1 and top_level <= listing.dirs:
        prefixes.append(f"{next(iter(top_level))}/")
    for prefix in prefixes:
        if all(prefix + file in listing.files for file in _CIFAR_FILES):
            return _Layout(CIFAR_BATCHES, prefix, listing)
        if all(prefix + file in listing.files for _, file, _ in _IDX_MEMBERS):
            return _Layout(IDX_FILES, prefix, listing)
        if all(prefix + split in listing.dirs for split in _SPLITS):
            return _Layout(IMAGE_FOLDERS, prefix, listing)
    expected = "; or ".join(f"{_LAYOUT_NAMES[layout]} ({_LAYOUT_CONTENTS[layout]})" for layout in _LAYOUT_NAMES)
    raise DataError(
        f"data_dir holds no known dataset layout. Expected {expected}; directly or under one top folder, "
        f"or in a {'/'.join(ARCHIVE_SUFFIXES)} archive."
    )


def _decode_layout(source, layout, spec):
    """Decodes a checked layout into the arrays of a `Dataset` (and `class_names`)."""
    if layout.format == CIFAR_BATCHES:
        return _decode_cifar_batches(source, layout)
    if layout.format == IDX_FILES:
        return _decode_idx(source, layout, spec)
    return _decode_image_tree(source, layout, spec)


def _check_labels(labels, num_classes, where):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where} has labels from {labels.min()} to {labels.max()}; expected 0 to {num_classes - 1}.")


# --- CIFAR-10 python batches ----------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} has no place in a CIFAR batch")
        return super().find_class(module, name)


def _decode_cifar_batches(source, layout):
    short_names = {layout.prefix + file: file for file in _CIFAR_FILES}
    batches = {short_names[name]: _unpickle(payload, name) for name, payload in source.read(short_names)}
    try:
        class_names = [label.decode() for label in batches[_CIFAR_META_FILE][b"label_names"]]
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise DataError(f"CIFAR file {_CIFAR_META_FILE} has no usable label_names: {error!r}.") from error
    train = [_cifar_batch(batches[file], file, len(class_names)) for file in _CIFAR_TRAIN_FILES]
    x_test, y_test = _cifar_batch(batches[_CIFAR_TEST_FILE], _CIFAR_TEST_FILE, len(class_names))
    return {
        "x_train": np.concatenate([images for images, _ in train]),
        "y_train": np.concatenate([labels for _, labels in train]),
        "x_test": x_test,
        "y_test": y_test,
        "class_names": np.array(class_names),
    }


def _unpickle(payload, name):
    try:
        return _CifarUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except Exception as error:  # a malformed pickle can fail in almost any way
        raise DataError(f"Cannot unpickle CIFAR file {name}: {error}.") from error


def _cifar_batch(batch, file, num_classes):
    """A batch dict's images `(n, 32, 32, 3)` uint8 and labels `(n,)` int64, checked."""
    try:
        rows = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"CIFAR file {file} lacks data or labels: {error!r}.") from error
    row_size = int(np.prod(_CIFAR_IMAGE_SHAPE))
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != row_size or labels.shape != (len(rows),):
        raise DataError(
            f"CIFAR file {file} holds data of shape {rows.shape} and dtype {rows.dtype} with {labels.size} "
            f"labels; expected uint8 rows of {row_size} bytes, one label each."
        )
    _check_labels(labels, num_classes, f"CIFAR file {file}")
    return np.ascontiguousarray(rows.reshape(-1, *_CIFAR_IMAGE_SHAPE).transpose(0, 2, 3, 1)), labels


# --- IDX files ------------------------------------------------------------------------------------------


def _read_idx_members(source, layout):
    """Yields `(key, file, ndim, payload)` for the four IDX files, in `_IDX_MEMBERS` order."""
    members = {layout.prefix + file: (key, file, ndim) for key, file, ndim in _IDX_MEMBERS}
    payloads = dict(source.read(members))
    for name, (key, file, ndim) in members.items():
        yield key, file, ndim, payloads[name]


def _gunzip(payload, file, size=-1):
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(payload)) as stream:
            return stream.read(size)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"IDX file {file} is not a readable gzip file: {error}.") from error


def _idx_shape(raw, file, ndim):
    """The dimensions in an IDX header, after checking its magic number."""
    expected = _IDX_UNSIGNED_BYTE << 8 | ndim
    header_size = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big")
    if len(raw) < header_size or magic != expected:
        raise DataError(
            f"IDX file {file} has a bad header (magic number 0x{magic:08x}, {len(raw)} bytes); expected "
            f"magic number 0x{expected:08x} (unsigned bytes, {ndim} dimensions) and {header_size} bytes."
        )
    return struct.unpack(f">{ndim}I", raw[4:header_size])


def _idx_array(raw, file, ndim):
    shape = _idx_shape(raw, file, ndim)
    body = memoryview(raw)[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"IDX file {file} holds {len(body)} data bytes; its header {shape} promises {np.prod(shape)}.")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape).copy()  # writable, like arrays from the cache


def _check_idx_headers(source, layout):
    """Checks the four IDX headers and that they agree, decompressing only the headers."""
    _check_idx_shapes({key: _idx_shape(_gunzip(payload, file, size=4 + 4 * ndim), file, ndim)
                       for key, file, ndim, payload in _read_idx_members(source, layout)})


def _check_idx_shapes(shapes):
    for split in _SPLITS:
        images, labels = shapes[f"x_{split}"][0], shapes[f"y_{split}"][0]
        if images != labels:
            raise DataError(f"IDX files disagree: {images} {split} images but {labels} {split} labels.")
        if tuple(shapes[f"x_{split}"][1:]) != _IDX_IMAGE_SIZE:
            raise DataError(f"IDX {split} images are {shapes[f'x_{split}'][1:]}; expected {_IDX_IMAGE_SIZE}.")


def _decode_idx(source, layout, spec):
    arrays = {key: _idx_array(_gunzip(payload, file), file, ndim)
              for key, file, ndim, payload in _read_idx_members(source, layout)}
    _check_idx_shapes({key: array.shape for key, array in arrays.items()})
    for split in _SPLITS:
        _check_labels(arrays[f"y_{split}"], len(spec.class_names), f"IDX {split} labels")
    return {**arrays, "class_names": np.array(spec.class_names)}


# --- image-folder trees ---------------------------------------------------------------------------------


def _image_tree(layout):
    """Checks the tree; returns the sorted class names and, per split, the sorted `(file, label)` pairs.

    A split tree (`IMAGE_FOLDERS`) has the splits train and test; a class-folder tree (`CLASS_FOLDERS`) has
    one, `_POOL`. An image is a file with an image suffix anywhere below its class folder.
    """
    split_names = _SPLITS if layout.format == IMAGE_FOLDERS else (_POOL,)
    bases = {split: _split_base(layout, split) for split in split_names}
    classes = {split: set() for split in split_names}
    images = {}
    for split, base in bases.items():
        for folder in layout.listing.dirs:
            if folder.startswith(base) and "/" not in folder[len(base):]:
                classes[split].add(folder[len(base):])
        for file in layout.listing.files:
            parts = file[len(base):].split("/", 1) if file.startswith(base) else []
            if len(parts) == 2 and file.lower().endswith(IMAGE_SUFFIXES):
                images.setdefault((split, parts[0]), []).append(file)
    if layout.format == IMAGE_FOLDERS and classes["train"] != classes["test"]:
        raise DataError(
            f"The image-folder tree has different classes in train/ and test/: only in train: "
            f"{sorted(classes['train'] - classes['test'])}; only in test: {sorted(classes['test'] - classes['train'])}."
        )
    class_names = sorted(classes[split_names[0]])
    if not class_names:
        where = "in train/ and test/" if layout.format == IMAGE_FOLDERS else "(one sub-folder of images per class)"
        raise DataError(f"The image-folder tree has no class folders {where}.")
    for split, base in bases.items():
        for class_name in class_names:
            if (split, class_name) not in images:
                raise DataError(f"Class folder {base}{class_name} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    splits = {split: [(file, label) for label, class_name in enumerate(class_names)
                      for file in sorted(images[split, class_name])] for split in split_names}
    return class_names, splits


def _split_base(layout, split):
    """The path prefix of a split's class folders: `<prefix><split>/`, or just `<prefix>` for the pool."""
    return layout.prefix + ("" if split == _POOL else f"{split}/")


def _decode_image_tree(source, layout, spec):
    """Decodes a checked tree into arrays `x_<split>`, `y_<split>` and `class_names` (and, for own images,
    `skipped`: the unreadable images left out, which a known dataset's copy refuses instead)."""
    class_names, splits = _image_tree(layout)
    slots = {file: (split, position) for split, items in splits.items() for position, (file, _) in enumerate(items)}
    images = {split: np.empty((len(items), *spec.image_size, len(spec.image_mode)), np.uint8)
              for split, items in splits.items()}
    readable = {split: np.zeros(len(items), bool) for split, items in splits.items()}
    jobs = ((slots[file], file, payload) for file, payload in source.read(slots))
    skipped = _fill_images(jobs, spec, images, readable)
    if sum(int(mask.sum()) for mask in readable.values()) + len(skipped) != len(slots):
        raise DataError("The source changed while it was read; run again.")
    arrays = {"class_names": np.array(class_names)}
    for split, items in splits.items():
        labels = np.array([label for _, label in items], dtype=np.int64)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _readable_rows(images[split], labels, readable[split])
    if spec.own_images:
        arrays["skipped"] = np.array(skipped, dtype=str)
    return arrays


def _readable_rows(images, labels, readable):
    if readable.all():
        return images, labels  # no copy: the common case, and the only one for a known dataset
    return images[readable], labels[readable]


def _decode_image(payload, mode, file):
    """One image as uint8 `(h, w, channels)` in Pillow `mode` ("RGB" or "L"); alpha is dropped."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            # A palette may carry transparency, which Pillow wants turned into alpha before anything else.
            opaque = image.convert("RGBA") if image.mode == "P" else image
            pixels = np.asarray(opaque.convert(mode))
    except Image.UnidentifiedImageError as error:
        raise DataError(f"Cannot decode image {file}: not an image format Pillow can read.") from error
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"Cannot decode image {file}: {error}.") from error
    return pixels.reshape(*pixels.shape[:2], -1)


def _decode_known_image(spec, file, payload):
    """An image of a known dataset's copy, which must have the dataset's size; else a DataError."""
    pixels = _decode_image(payload, spec.image_mode, file)
    if pixels.shape[:2] != spec.image_size:
        raise DataError(
            f"Image {file} is {pixels.shape[1]}x{pixels.shape[0]} (width x height); every image of this "
            f"dataset is {spec.image_size[1]}x{spec.image_size[0]}."
        )
    return pixels


# --- the users' own images: any size and mode, unreadable ones skipped -----------------------------------


def _own_spec(image_size):
    return _DatasetSpec((image_size, image_size), "RGB", (), (IMAGE_FOLDERS, CLASS_FOLDERS), own_images=True)


def decode_image(path, size):
    """One image file, any size and mode, as uint8 RGB `(size, size, 3)` (shorter side resized, centre
    crop), or a string saying why it cannot be used. The decoding `folder:` and `list:` data use."""
    return _decode_own_image(size, str(path), Path(path))


def decode_images(paths, size):
    """Yields `(path, decode_image(path, size))` for each path, in order, decoded on `DECODE_THREADS` threads."""
    jobs = ((None, path, Path(path)) for path in paths)
    for _, path, result in _decode_jobs(jobs, functools.partial(_decode_own_image, size)):
        yield path, result


def is_hidden(relative_path):
    """Whether a POSIX path relative to a data root lies in a hidden folder or file (or `__MACOSX`)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative_path.split("/"))


def _decode_own_image(size, name, payload):
    """An own image as uint8 RGB `(size, size, 3)`, or a string saying why it cannot be used.

    `payload` is the encoded bytes, or a `Path` to read them from (list data: read on the worker thread).
    """
    try:
        if isinstance(payload, Path):
            payload = payload.read_bytes()
    except OSError as error:
        return f"cannot read it ({error.strerror or error})"
    try:
        return _fit_image(payload, size)
    except Image.UnidentifiedImageError:
        return "not an image format Pillow can read"
    except Exception as error:  # a malformed file can fail in almost any way inside Pillow's decoders
        return f"cannot decode it ({type(error).__name__}: {error})"


def _fit_image(payload, size):
    """Any image as uint8 RGB `(size, size, 3)`: turned upright (EXIF), shorter side resized, centre crop."""
    with Image.open(io.BytesIO(payload)) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale while still >= size
        rgb = _as_rgb(ImageOps.exif_transpose(image))
        width, height = rgb.size
        side = min(width, height)
        # Resizing the centred square box in one step is the same as resizing the shorter side, then cropping.
        box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        return np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC, box=box))


def _as_rgb(image):
    """An RGB copy of an image in any mode; 16- and 32-bit grey are scaled to 0..255 first.

    Pillow's own conversion clips 16-bit values at 255, turning most of a 16-bit image white. `I;16*`
    is scaled by 1/257 (65535 -> 255). `I` and `F` do not say their range: values up to 255 are kept,
    up to 65535 scaled like 16-bit, larger ones stretched from 0..max. A palette's transparency is
    resolved through RGBA; alpha is dropped, as for a known dataset's images.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0.0)
        if image.mode.startswith("I;16") or 255 < peak <= 65535:
            values = values / 257.0
        elif peak > 65535:
            values = values * (255.0 / peak)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def _decode_jobs(jobs, decode):
    """Yields `(key, name, decode(name, payload))` for each job `(key, name, payload)`, in order.

    Decodes on `DECODE_THREADS` threads, `DECODE_CHUNK` jobs at a time: `jobs` is consumed one chunk ahead,
    so a streamed archive never sits whole in memory. An exception raised by `decode` reaches the caller
    at its job's turn.
    """
    jobs = iter(jobs)
    with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:
        while chunk := list(itertools.islice(jobs, DECODE_CHUNK)):
            for (key, name, _), result in zip(chunk, pool.map(lambda job: decode(job[1], job[2]), chunk)):
                yield key, name, result


def _fill_images(jobs, spec, images, readable):
    """Decodes `jobs` (`((split, position), name, payload)`) into `images[split][position]`, marking
    `readable`; returns the unreadable own images as `"<name>: <reason>"`, having warned about them."""
    if spec.own_images:
        decode = functools.partial(_decode_own_image, spec.image_size[0])
    else:
        decode = functools.partial(_decode_known_image, spec)
    skipped = []
    for (split, position), name, result in _decode_jobs(jobs, decode):
        if isinstance(result, str):
            skipped.append(f"{name}: {result}")
        else:
            images[split][position] = result
            readable[split][position] = True
    _warn_unreadable(skipped, total=sum(mask.size for mask in readable.values()))
    return skipped


def _warn_unreadable(skipped, total, cached=False):
    """One `UnreadableImageWarning` per skipped image (the first `MAX_NAMED_UNREADABLE`), then the count."""
    stacklevel = _outside_stacklevel()
    for entry in skipped[:MAX_NAMED_UNREADABLE]:
        warnings.warn(f"Skipping unreadable image {entry}", UnreadableImageWarning, stacklevel=stacklevel)
    if len(skipped):
        named = f"; the first {MAX_NAMED_UNREADABLE} are named above" if len(skipped) > MAX_NAMED_UNREADABLE else ""
        when = " (found when the data was decoded; the decoded arrays come from the cache)" if cached else ""
        plural = "s" if len(skipped) != 1 else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image{plural} of {total}{named}{when}",
                      UnreadableImageWarning, stacklevel=stacklevel)


def _outside_stacklevel():
    """The `stacklevel`, for a `warnings.warn` in the caller, of the first frame outside this module."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def _rewarn_cached(arrays):
    """Repeats, on a cache hit, the warnings about the images the cached decode skipped."""
    skipped = [str(entry) for entry in arrays.get("skipped", ())]
    total = len(skipped) + sum(len(arrays[key]) for key in arrays if key.startswith("y_"))
    _warn_unreadable(skipped, total, cached=True)


# --- own data: folder:PATH ------------------------------------------------------------------------------


def _inspect_folder(source, test_fraction=None):
    """Finds and checks the layout of a `folder:` tree, without decoding: split tree or class folders.

    `train/` and `test/` are looked for directly in the folder or under its one top folder; without them
    the class folders are the folder's sub-folders, or its one top folder's.
    """
    listing = source.listing
    top_level = {name.split("/")[0] for name in listing.files | listing.dirs}
    prefixes = [""]
    if len(top_level) == 1 and top_level <= listing.dirs:
        prefixes.append(f"{next(iter(top_level))}/")
    layout = None
    for prefix in prefixes:
        present = [split for split in _SPLITS if prefix + split in listing.dirs]
        if len(present) == 2:
            layout = _Layout(IMAGE_FOLDERS, prefix, listing)
            break
        if len(present) == 1:
            missing = next(split for split in _SPLITS if split not in present)
            raise DataError(
                f"The folder has {prefix}{present[0]}/ but no {prefix}{missing}/: give it both, or neither "
                f"(then each class's images are split into train and test)."
            )
    if layout is None:  # class folders: in the one top folder only if it has sub-folders (else it is a class)
        prefix = prefixes[-1] if any(folder.startswith(prefixes[-1]) for folder in listing.dirs) else ""
        layout = _Layout(CLASS_FOLDERS, prefix, listing)
    class_names, splits = _image_tree(layout)
    if len(class_names) < MIN_CLASSES:
        raise DataError(
            f"The folder has {len(class_names)} class folder ({', '.join(class_names)}); a dataset needs at "
            f"least {MIN_CLASSES}, one sub-folder of images per class."
        )
    if layout.format == IMAGE_FOLDERS and test_fraction is not None:
        raise DataError("The folder has train/ and test/ folders, so test_fraction (--test-fraction) does not apply.")
    if layout.format == CLASS_FOLDERS:
        counts = np.bincount([label for _, label in splits[_POOL]], minlength=len(class_names))
        if counts.min() < 2:
            raise DataError(
                f"Class folder {layout.prefix}{class_names[counts.argmin()]} holds only 1 image; splitting each "
                f"class into train and test needs at least 2 (or give the folder train/ and test/)."
            )
    return layout


def _load_folder(name, path, image_size, test_fraction, seed, cache_dir):
    _check_seed(seed)
    with _received(name, "dataset"):
        source = _open_source(path)
        layout = _inspect_folder(source, test_fraction)
        key = [FOLDER, str(source.path), source.fingerprint(), image_size, layout.format, layout.prefix]
        cache_path = _cache_path(_resolve_cache_dir(cache_dir), dataset_slug(name), key)
        split_names = _SPLITS if layout.format == IMAGE_FOLDERS else (_POOL,)
        required = ("class_names", "skipped", *(f"{axis}_{split}" for split in split_names for axis in "xy"))
        arrays = _read_cache(cache_path, required)
        if arrays is None:
            arrays = _decode_image_tree(source, layout, _own_spec(image_size))
            _check_readable_classes(arrays, layout)
            _write_cache(cache_path, arrays)
        else:
            _rewarn_cached(arrays)
    if layout.format == CLASS_FOLDERS:
        arrays = _split_pool(arrays, DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction, seed)
    return _as_dataset(name, arrays, source=str(source.path))


def _check_readable_classes(arrays, layout):
    """After skipping unreadable images: some image was read, and every class keeps enough of them."""
    class_names = [str(class_name) for class_name in arrays["class_names"]]
    split_names = _SPLITS if layout.format == IMAGE_FOLDERS else (_POOL,)
    skipped = [str(entry) for entry in arrays["skipped"]]
    if not any(len(arrays[f"y_{split}"]) for split in split_names):
        raise DataError(f"No image of the folder could be read ({len(skipped)} tried; the first: {skipped[0]}).")
    needed = 2 if layout.format == CLASS_FOLDERS else 1
    for split in split_names:
        counts = np.bincount(arrays[f"y_{split}"], minlength=len(class_names))
        for label in np.flatnonzero(counts < needed):
            why = ("splitting it into train and test needs at least 2" if layout.format == CLASS_FOLDERS
                   else "every class needs one in train/ and one in test/")
            raise DataError(
                f"Class folder {_split_base(layout, split)}{class_names[label]} has {counts[label]} readable "
                f"image{'s' if counts[label] != 1 else ''} (the others could not be read, see the warnings); {why}."
            )


def _split_pool(arrays, test_fraction, seed):
    """The train and test arrays of a class-folder tree: `stratified_split` of its pool."""
    train_idx, test_idx = stratified_split(arrays["y_pool"], test_fraction, seed)
    x_pool, y_pool = arrays["x_pool"], arrays["y_pool"]
    return {"x_train": x_pool[train_idx], "y_train": y_pool[train_idx], "x_test": x_pool[test_idx],
            "y_test": y_pool[test_idx], "class_names": arrays["class_names"], "skipped": arrays["skipped"]}


# --- own data: list:DIR -----------------------------------------------------------------------------------


_LIST_LINE = "'<image path> <label> <label> ...', each label 0 or 1"


@dataclasses.dataclass(frozen=True)
class _ImageList:
    file: str  # the list file's name, e.g. "train.txt"
    paths: tuple  # image paths as written, relative to the image root
    lines: tuple  # the line number of each
    labels: np.ndarray  # int64 multi-hot rows, (n, num_labels)
    digest: str  # sha256 of the file's bytes: part of the cache key


@dataclasses.dataclass(frozen=True)
class _ImageLists:
    list_dir: Path
    image_root: Path
    lists: dict  # "train", "test" and, when database.txt exists, "db" -> _ImageList
    class_names: tuple


def _inspect_lists(list_dir, image_root):
    """Reads and checks the list files (not the images); a DataError names the file and line of a fault."""
    folder = Path(list_dir).expanduser()
    if not folder.is_dir():
        raise DataError("The list folder does not exist." if not folder.exists() else "The list path is not a folder.")
    folder = folder.resolve()
    root = folder if image_root is None else Path(image_root).expanduser()
    if not root.is_dir():
        raise DataError(f"The image root {str(root)!r} does not exist or is not a folder.")
    lists, reference = {}, None  # reference: (where, count) of the first line, which fixes the label count
    for split, file in LIST_FILES.items():
        if not (folder / file).is_file():
            if split == "db":
                continue
            raise DataError(
                f"The list folder has no {file}; a list: dataset needs train.txt and test.txt (database.txt is "
                f"optional), one image a line: {_LIST_LINE}."
            )
        lists[split], reference = _read_image_list(folder / file, reference)
    return _ImageLists(folder, root.resolve(), lists, _list_class_names(folder, reference[1]))


def _read_image_list(path, reference):
    file = path.name
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as error:
        raise DataError(f"Cannot read {file}: {error.strerror}.") from error
    except UnicodeDecodeError as error:
        raise DataError(f"{file} is not UTF-8 text ({error}).") from error
    paths, lines, rows = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue  # blank lines are allowed
        where = f"{file} line {number}"
        image_path, labels = tokens[0], tokens[1:]
        if image_path.isdigit():
            raise DataError(f"{where} starts with {image_path!r}, a label, not an image path; expected {_LIST_LINE}.")
        if not labels:
            raise DataError(f"{where} has an image path but no labels; expected {_LIST_LINE}.")
        bad = next((position for position, token in enumerate(labels) if token not in ("0", "1")), None)
        if bad is not None:
            hint = " (a path may not contain spaces)" if bad == 0 and not labels[0].isdigit() else ""
            raise DataError(f"{where}: label {bad + 1} is {labels[bad]!r}; labels must be 0 or 1{hint}.")
        if reference is None:
            reference = (where, len(labels))
        elif len(labels) != reference[1]:
            raise DataError(f"{where} has {len(labels)} labels; expected {reference[1]}, as {reference[0]} has.")
        _check_list_path(image_path, where)
        paths.append(image_path)
        lines.append(number)
        rows.append([token == "1" for token in labels])
    if not paths:
        raise DataError(f"{file} lists no images; expected one a line: {_LIST_LINE}.")
    labels = np.array(rows, dtype=np.int64)
    return _ImageList(file, tuple(paths), tuple(lines), labels, hashlib.sha256(raw).hexdigest()), reference


def _check_list_path(image_path, where):
    """Refuses, on paper, a path that leaves the image root: absolute, or climbing out with `..`."""
    if image_path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", image_path):
        raise DataError(
            f"{where}: {image_path!r} is an absolute path; list paths must be relative to the image root "
            f"(image_root, --image-root; default the list folder): remove the machine's own prefix from them."
        )
    normal = posixpath.normpath(image_path.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        raise DataError(f"{where}: {image_path!r} leads outside the image root; list paths must stay inside it.")


def _list_class_names(folder, num_labels):
    """The names in `classes.txt` (one a non-empty line, as many as labels), else `label0`, `label1`, ..."""
    path = folder / CLASSES_FILE
    if not path.is_file():
        return tuple(f"label{index}" for index in range(num_labels))
    try:
        names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"Cannot read {CLASSES_FILE}: {error}.") from error
    if len(names) != num_labels:
        raise DataError(f"{CLASSES_FILE} names {len(names)} classes; the list files have {num_labels} labels a line.")
    return names


def _load_lists(name, list_dir, image_root, image_size, cache_dir):
    with _received(name, "dataset"):
        lists = _inspect_lists(list_dir, image_root)
        digests = {image_list.file: image_list.digest for image_list in lists.lists.values()}
        key = [LIST, str(lists.list_dir), str(lists.image_root), image_size, digests, list(lists.class_names)]
        cache_path = _cache_path(_resolve_cache_dir(cache_dir), dataset_slug(name), key)
        required = ("class_names", "skipped", *(f"{axis}_{split}" for split in lists.lists for axis in "xy"))
        arrays = _read_cache(cache_path, required)
        if arrays is None:
            arrays = _decode_lists(lists, _own_spec(image_size))
            _write_cache(cache_path, arrays)
        else:
            _rewarn_cached(arrays)
    return _as_dataset(name, arrays, source=str(lists.list_dir), multi_label=True)


def _decode_lists(lists, spec):
    """Decodes every listed image; a path whose real location (links followed) leaves the root is a DataError."""
    root = str(lists.image_root)
    images = {split: np.empty((len(image_list.paths), *spec.image_size, 3), np.uint8)
              for split, image_list in lists.lists.items()}
    readable = {split: np.zeros(len(image_list.paths), bool) for split, image_list in lists.lists.items()}

    def jobs():
        for split, image_list in lists.lists.items():
            for position, (image_path, line) in enumerate(zip(image_list.paths, image_list.lines)):
                real = os.path.realpath(os.path.join(root, image_path))
                if os.path.commonpath([real, root]) != root:
                    raise DataError(
                        f"{image_list.file} line {line}: {image_path!r} leads outside the image root {root} "
                        f"(a symbolic link to {real}); point image_root (--image-root) at the folder that holds "
                        f"the images themselves."
                    )
                yield (split, position), f"{image_path} ({image_list.file} line {line})", Path(real)

    skipped = _fill_images(jobs(), spec, images, readable)
    if not any(mask.any() for mask in readable.values()):
        raise DataError(f"No listed image could be read ({len(skipped)} tried; the first: {skipped[0]}).")
    arrays = {"class_names": np.array(lists.class_names), "skipped": np.array(skipped, dtype=str)}
    for split, image_list in lists.lists.items():
        if not readable[split].any():
            raise DataError(f"No image listed in {image_list.file} could be read ({len(image_list.paths)} tried).")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _readable_rows(images[split], image_list.labels, readable[split])
    return arrays


# --- cache ----------------------------------------------------------------------------------------------


def _resolve_cache_dir(cache_dir):
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _cache_path(cache_dir, slug, key_parts):
    """`<slug>-<hash>.npz`, the hash over the format version and `key_parts` (JSON-serialisable)."""
    key = json.dumps([CACHE_FORMAT_VERSION, *key_parts])
    return cache_dir / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _read_cache(cache_path, required=_CACHE_KEYS):
    """Every array of the cache file, or None when there is no usable cache file holding `required`."""
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path) as cached:
            missing = set(required) - set(cached.files)
            if missing:
                raise KeyError(f"no {', '.join(sorted(missing))}")
            return {key: cached[key] for key in cached.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:  # truncated or corrupt
        warnings.warn(f"Ignoring unreadable cache file {cache_path} ({error}); decoding again.", stacklevel=3)
        return None


def _write_cache(cache_path, arrays):
    """Writes the arrays under a temporary name, then renames: a killed run leaves no complete-looking file."""
    temporary = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temporary, "wb") as stream:
                np.savez(stream, **arrays)
            os.replace(temporary, cache_path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as error:
        warnings.warn(f"Cannot write the data cache {cache_path} ({error}); not caching.", stacklevel=3)
