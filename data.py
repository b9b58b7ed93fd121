"""Every dataset the CLI reads, as uint8 arrays, cached; and the seeded draws made from them.

`load_dataset("cifar10")` goes through `keras.datasets` (Keras downloads the files once and keeps them in
`~/.keras/datasets`). `load_dataset("cifar10", data_dir=PATH)` reads an offline copy instead and detects
its layout:

- the official CIFAR-10 python batches: `data_batch_1`..`data_batch_5`, `test_batch`, `batches.meta`;
- an image-folder tree `train/<class>/<image>`, `test/<class>/<image>`: the folder name is the class,
  classes sorted by name, images within a class in sorted file-name order;
- the official IDX files of MNIST and Fashion-MNIST: `train-images-idx3-ubyte.gz`,
  `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`;

each directly in PATH or under one top folder of it, or the same inside a `.tar`, `.tar.gz` or `.tgz`
archive (read as a stream, never extracted to disk). The decoded arrays of an offline copy are cached as an
`.npz` file (see `load_dataset`), so only the first run pays for decoding.

`balanced_subset`, `draw_queries` and `holdout_split` draw with `np.random.default_rng(seed)`: the same
seed and the same data source give the same indices on every machine. The order of images differs between
sources (an image-folder tree is sorted by class), so an index is not the same image across sources.

Importing this module stays cheap: Keras (and so TensorFlow) is imported only when a dataset is downloaded.

Example:

    python -c "import data; print(data.load_dataset('mnist', data_dir='../shared/datasets/mnist'))"
"""

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import posixpath
import struct
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

DATASETS = ("cifar10", "mnist", "fashion_mnist")
DEFAULT_DATASET = "cifar10"

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

# Offline layouts, as `check_data_dir` names them.
CIFAR_BATCHES = "cifar-batches"
IMAGE_FOLDERS = "image-folders"
IDX_FILES = "idx"

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
_SPLITS = ("train", "test")

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


_SPECS = {
    "cifar10": _DatasetSpec((32, 32), "RGB", CIFAR10_CLASSES, (CIFAR_BATCHES, IMAGE_FOLDERS)),
    "mnist": _DatasetSpec((28, 28), "L", MNIST_CLASSES, (IDX_FILES, IMAGE_FOLDERS)),
    "fashion_mnist": _DatasetSpec((28, 28), "L", FASHION_MNIST_CLASSES, (IDX_FILES, IMAGE_FOLDERS)),
}


class DataError(Exception):
    """Bad dataset input: a missing, unreadable or unrecognised data folder or archive, or a failed download.

    The message is one line meant for the user; the CLI prints it and exits with status 2.
    """


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset's official train and test splits.

    Attributes:
        name: one of `DATASETS`.
        x_train: uint8 images, shape `(n_train, height, width, channels)`; 3 channels (RGB) for CIFAR-10,
            1 for MNIST and Fashion-MNIST.
        y_train: int64 class indices into `class_names`, shape `(n_train,)`.
        x_test: uint8 images, shape `(n_test, height, width, channels)`.
        y_test: int64 class indices, shape `(n_test,)`.
        class_names: the class names, in label order.
        source: where the arrays came from: `"keras.datasets.<name>"` or the resolved offline path.
    """

    name: str
    x_train: np.ndarray = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    class_names: tuple
    source: str


def load_dataset(name=DEFAULT_DATASET, data_dir=None, cache_dir=None):
    """Loads a dataset's train and test splits as uint8 images and int64 labels.

    Without `data_dir` the dataset comes from `keras.datasets`, which downloads it once. With `data_dir`
    it comes from that offline copy (any layout the module docstring lists), and its decoded arrays are
    cached in `cache_dir` as `<name>-<key>.npz`. The key hashes the cache format version, the dataset
    name, the resolved path and the size and modification time of the source (of every file in it, for a
    folder), so changing the source invalidates the entry. A cache file is written under a temporary name
    and renamed when complete; an unreadable one is decoded anew, and an unwritable cache only warns.

    Args:
        name: one of `DATASETS`. Defaults to `"cifar10"`.
        data_dir: a folder or archive holding an offline copy. Defaults to `None` (download with
            `keras.datasets`).
        cache_dir: the folder for decoded arrays. Defaults to `None`: `$DEEPHASH_CACHE` when set,
            else `~/.cache/deephash`.

    Returns:
        A `Dataset`: `x_train` `(n_train, h, w, c)` and `x_test` `(n_test, h, w, c)` uint8 (c = 3, RGB,
        for CIFAR-10; c = 1 for MNIST and Fashion-MNIST), `y_train` `(n_train,)` and `y_test`
        `(n_test,)` int64.

    Raises:
        ValueError: for an unknown `name`.
        DataError: when the download fails or `data_dir` is missing, unreadable, empty, corrupt or in no
            known layout.

    Example:

    >>> dataset = load_dataset("mnist", data_dir="../shared/datasets/mnist")  # doctest: +SKIP
    >>> dataset.x_train.shape, dataset.y_test.dtype  # doctest: +SKIP
    ((60000, 28, 28, 1), dtype('int64'))
    """
    spec = _dataset_spec(name)
    if data_dir is None:
        return _load_from_keras(name)
    with _received(data_dir):
        source = _open_source(data_dir)
        cache_path = _cache_path(_resolve_cache_dir(cache_dir), name, source)
        arrays = _read_cache(cache_path)
        if arrays is None:
            arrays = _decode_layout(source, _inspect(source, name), spec)
            _write_cache(cache_path, arrays)
    return _as_dataset(name, arrays, source=str(source.path))


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

    Args:
        labels: 1-D integer array of class labels.
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
        labels: 1-D integer array of class labels.
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


# --- argument checks ---------------------------------------------------------------------------------


def _dataset_spec(name):
    if name not in _SPECS:
        raise ValueError(f"name must be one of {', '.join(DATASETS)}. Received: name={name!r}")
    return _SPECS[name]


def _as_labels(labels):
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a non-empty 1-D integer array. "
            f"Received: labels of shape {labels.shape} and dtype {labels.dtype}"
        )
    return labels


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


def _as_dataset(name, arrays, source):
    """A `Dataset` from arrays keyed like `_CACHE_KEYS`: grey images get a channel axis, labels become int64."""
    return Dataset(
        name=name,
        x_train=_with_channels(arrays["x_train"]),
        y_train=np.asarray(arrays["y_train"], dtype=np.int64).reshape(-1),
        x_test=_with_channels(arrays["x_test"]),
        y_test=np.asarray(arrays["y_test"], dtype=np.int64).reshape(-1),
        class_names=tuple(str(class_name) for class_name in arrays["class_names"]),
        source=source,
    )


def _with_channels(images):
    """uint8 images with a channel axis: grey `(n, h, w)` becomes `(n, h, w, 1)`."""
    images = np.asarray(images, dtype=np.uint8)
    return images[..., np.newaxis] if images.ndim == 3 else images


# --- sources: a folder or an archive, both listed and read by member name ------------------------------


@contextlib.contextmanager
def _received(data_dir):
    """Ends the message of any DataError raised inside with the data path, as Keras messages do."""
    try:
        yield
    except DataError as error:
        error.args = (f"{error} Received: data_dir={str(data_dir)!r}",)
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


def _is_hidden(relative_path):
    return any(part.startswith(".") or part == "__MACOSX" for part in relative_path.split("/"))


def _open_source(data_dir):
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError("data_dir does not exist.")
    path = path.resolve()
    if path.is_dir():
        return _FolderSource(path)
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return _ArchiveSource(path)
    raise DataError(f"data_dir must be a folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive.")


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
            raise DataError("data_dir is an empty folder (hidden files aside).")
        self.listing = _listing(self._file_stats, dirs)

    def _scan(self, relative, dirs, pending):
        try:
            with os.scandir(self.path / relative) as entries:
                for entry in entries:
                    name = posixpath.join(relative, entry.name)
                    if _is_hidden(entry.name):
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
            raise DataError("data_dir is an empty archive.")
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
                    if _is_hidden(name):
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
    """Checks the tree; returns the sorted class names and, per split, the sorted `(file, label)` pairs."""
    prefix = layout.prefix
    classes = {split: set() for split in _SPLITS}
    images = {}
    for folder in layout.listing.dirs:
        parts = folder[len(prefix):].split("/") if folder.startswith(prefix) else []
        if len(parts) == 2 and parts[0] in classes:
            classes[parts[0]].add(parts[1])
    for file in layout.listing.files:
        parts = file[len(prefix):].split("/") if file.startswith(prefix) else []
        if len(parts) == 3 and parts[0] in classes and parts[2].lower().endswith(IMAGE_SUFFIXES):
            images.setdefault((parts[0], parts[1]), []).append(file)
    if classes["train"] != classes["test"]:
        raise DataError(
            f"The image-folder tree has different classes in train/ and test/: only in train: "
            f"{sorted(classes['train'] - classes['test'])}; only in test: {sorted(classes['test'] - classes['train'])}."
        )
    class_names = sorted(classes["train"])
    if not class_names:
        raise DataError("The image-folder tree has no class folders in train/ and test/.")
    for split in _SPLITS:
        for class_name in class_names:
            if (split, class_name) not in images:
                raise DataError(f"Class folder {prefix}{split}/{class_name} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    splits = {split: [(file, label) for label, class_name in enumerate(class_names)
                      for file in sorted(images[split, class_name])] for split in _SPLITS}
    return class_names, splits


def _decode_image_tree(source, layout, spec):
    class_names, splits = _image_tree(layout)
    slots = {file: (split, position) for split, items in splits.items() for position, (file, _) in enumerate(items)}
    channels = len(spec.image_mode)  # "RGB" or "L"
    images = {split: np.empty((len(items), *spec.image_size, channels), np.uint8) for split, items in splits.items()}
    filled = set()
    for file, payload in source.read(slots):
        pixels = _decode_image(payload, spec.image_mode, file)
        if pixels.shape[:2] != spec.image_size:
            raise DataError(
                f"Image {file} is {pixels.shape[1]}x{pixels.shape[0]} (width x height); every image of this "
                f"dataset is {spec.image_size[1]}x{spec.image_size[0]}."
            )
        split, position = slots[file]
        images[split][position] = pixels
        filled.add(file)
    if len(filled) != len(slots):
        raise DataError("data_dir changed while it was read; run again.")
    arrays = {"class_names": np.array(class_names)}
    for split, items in splits.items():
        arrays[f"x_{split}"] = images[split]
        arrays[f"y_{split}"] = np.array([label for _, label in items], dtype=np.int64)
    return arrays


def _decode_image(payload, mode, file):
    """One image as uint8 `(h, w, channels)` in Pillow `mode` ("RGB" or "L"); alpha is dropped."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            # A palette may carry transparency, which Pillow wants turned into alpha before anything else.
            opaque = image.convert("RGBA") if image.mode == "P" else image
            pixels = np.asarray(opaque.convert(mode))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"Cannot decode image {file}: {error}.") from error
    return pixels.reshape(*pixels.shape[:2], -1)


# --- cache ----------------------------------------------------------------------------------------------


def _resolve_cache_dir(cache_dir):
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _cache_path(cache_dir, name, source):
    key = json.dumps([CACHE_FORMAT_VERSION, name, str(source.path), source.fingerprint()])
    return cache_dir / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _read_cache(cache_path):
    """The cached arrays, or None when there is no usable cache file."""
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path) as cached:
            return {key: cached[key] for key in _CACHE_KEYS}
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
