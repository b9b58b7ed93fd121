"""Every dataset the CLI reads, as uint8 arrays: the entry points, and the names and checks they share.

`load_dataset("cifar10")` goes through `keras.datasets` (Keras downloads the files once and keeps them in
`~/.keras/datasets`). `load_dataset("cifar10", data_dir=PATH)` reads an offline copy instead (`offline.py`:
CIFAR-10 python batches, an image-folder tree or IDX files, in a folder or a `.tar`/`.tar.gz`/`.tgz`
archive). `load_dataset("folder:PATH")` and `load_dataset("list:DIR")` read the users' own labelled
images (`own_images.py`: any size and mode, resized and centre-cropped to a square). The decoded arrays of
an offline copy or own images are cached (`cache.py`), so only the first run pays for decoding.
`check_data_dir` and `check_dataset` check a source without decoding any image.

The seeded draws made from a dataset's labels (`balanced_subset`, `draw_queries`, `holdout_split`,
`stratified_split`) live in `protocols.py`, with the splits they serve.

Importing this module stays cheap: Keras (and so TensorFlow) is imported only when a dataset is downloaded,
and `offline.py` and `own_images.py` (which build on this module) only when a source is read or checked.

Example:

    python -c "import data; print(data.load_dataset('mnist', data_dir='../shared/datasets/mnist'))"
    python -c "import data; print(data.load_dataset('folder:my_photos', image_size=64).x_train.shape)"
"""

import contextlib
import dataclasses
import re
import sys
from pathlib import Path

import numpy as np

DATASETS = ("cifar10", "mnist", "fashion_mnist")
DEFAULT_DATASET = "cifar10"

# The users' own data, named "folder:PATH" or "list:DIR" (`parse_dataset_name`).
FOLDER, LIST = "folder", "list"
OWN_DATA_KINDS = (FOLDER, LIST)
DEFAULT_IMAGE_SIZE = 32  # pixels, the side of the square every own image is resized and cropped to
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024
DEFAULT_TEST_FRACTION = 0.2  # share of each class held out as test images when a tree has no train/ and test/

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CLASS_NAMES = {"cifar10": CIFAR10_CLASSES, "mnist": MNIST_CLASSES, "fashion_mnist": FASHION_MNIST_CLASSES}

# Offline layouts, as `check_data_dir` and `check_dataset` name them.
CIFAR_BATCHES = "cifar-batches"
IMAGE_FOLDERS = "image-folders"
IDX_FILES = "idx"
CLASS_FOLDERS = "class-folders"  # own data: <class>/<image> without train/ and test/, split when loaded
IMAGE_LISTS = "image-lists"  # own data: train.txt, test.txt [, database.txt]

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
# The modules that read data for `load_dataset`: a warning they give points at the first frame outside them.
_DATA_MODULES = frozenset({__name__, "offline", "own_images", "cache"})


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
        names_train, names_test, names_db: own images only: each image's file name (its path in the
            folder tree or as its list file writes it), aligned with `x_train` etc.; else `None`.
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
    names_train: np.ndarray = dataclasses.field(default=None, repr=False)
    names_test: np.ndarray = dataclasses.field(default=None, repr=False)
    names_db: np.ndarray = dataclasses.field(default=None, repr=False)

    @property
    def multi_label(self):
        """Whether the labels are multi-hot rows `[n, num_classes]` (an image may have several labels)."""
        return self.y_train.ndim == 2


def load_dataset(name=DEFAULT_DATASET, data_dir=None, cache_dir=None, *, image_size=None, test_fraction=None,
                 image_root=None, seed=0):
    """Loads a dataset's splits as uint8 images and int64 labels.

    Without `data_dir` a named dataset comes from `keras.datasets`, which downloads it once. With
    `data_dir` it comes from that offline copy (any layout `offline.py` lists). A name
    `"folder:PATH"` or `"list:DIR"` loads the user's own images (see `own_images.py`). The decoded
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
    if kind is not None:
        import own_images  # imported here: it builds on this module

        with _received(name, "dataset"):
            if kind == FOLDER:
                arrays, source = own_images.read_folder(name, path, _resolve_image_size(image_size),
                                                        test_fraction=test_fraction, seed=seed, cache_dir=cache_dir)
            else:
                arrays, source = own_images.read_lists(name, path, _resolve_image_size(image_size),
                                                       image_root=image_root, cache_dir=cache_dir)
        return _as_dataset(name, arrays, source, multi_label=kind == LIST)
    if data_dir is None:
        return _load_from_keras(name)
    import offline  # imported here: it builds on this module

    with _received(data_dir):
        arrays, source = offline.read_copy(name, data_dir, cache_dir)
    return _as_dataset(name, arrays, source)


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
    import own_images  # imported here: it builds on this module

    with _received(name, "dataset"):
        if kind == FOLDER:
            return own_images.check_folder(path, test_fraction)
        own_images.check_lists(path, image_root)
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
    _check_dataset_name(name)
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
    sound and agree. Reading an archive's member list decompresses it (about 1.5 s for CIFAR-10), once: the
    list is cached.

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
        _check_dataset_name(name)
    import offline  # imported here: it builds on this module

    with _received(path):
        return offline.check_copy(path, name)


def is_hidden(relative_path):
    """Whether a POSIX path relative to a data root lies in a hidden folder or file (or `__MACOSX`)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative_path.split("/"))


def caller_stacklevel():
    """The `stacklevel`, for a `warnings.warn` in the caller, of the first frame outside the data modules.

    The data modules are this one, `offline`, `own_images` and `cache`: a warning about the data then
    points at the code that asked for it (`retrieval.py`, a test), not into the loader.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") in _DATA_MODULES:
        frame, level = frame.f_back, level + 1
    return level


# --- argument checks ---------------------------------------------------------------------------------


def check_count(argument, value, low, high):
    """Checks that `value` is an integer from `low` to `high` (`None`: no upper bound); else a ValueError
    naming `argument`."""
    is_integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_integer or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{argument} must be an integer {bounds}. Received: {argument}={value!r}")


def check_seed(seed):
    """Checks that `seed` is a non-negative integer; else a ValueError."""
    check_count("seed", seed, 0, None)


def check_fraction(argument, value):
    """Checks that `value` is a number above 0 and below 1; else a ValueError naming `argument`."""
    is_real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not is_real or not 0 < value < 1:
        raise ValueError(f"{argument} must be a number above 0 and below 1. Received: {argument}={value!r}")


def _check_dataset_name(name):
    if name not in DATASETS:
        raise ValueError(
            f"name must be one of {', '.join(DATASETS)}, or folder:PATH or list:DIR for your own images. "
            f"Received: name={name!r}"
        )


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
        check_count("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    if test_fraction is not None:
        check_fraction("test_fraction", test_fraction)


def _resolve_image_size(image_size):
    return DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)


@contextlib.contextmanager
def _received(value, argument="data_dir"):
    """Ends the message of any DataError raised inside with the data path, as Keras messages do."""
    try:
        yield
    except DataError as error:
        error.args = (f"{error} Received: {argument}={str(value)!r}",)
        raise


# --- keras.datasets, and the Dataset every source becomes ---------------------------------------------


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
              "class_names": _CLASS_NAMES[name]}
    return _as_dataset(name, arrays, source=f"keras.datasets.{name}")


def _as_dataset(name, arrays, source, multi_label=False):
    """A `Dataset` from arrays `x_train`, `y_train`, `x_test`, `y_test`, `class_names` (and `x_db`, `y_db`,
    `skipped` where present).

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
        **{f"names_{split}": np.asarray(arrays[f"names_{split}"]) for split in ("train", "test", "db") if f"names_{split}" in arrays},
    )


def _with_channels(images):
    """uint8 images with a channel axis: grey `(n, h, w)` becomes `(n, h, w, 1)`."""
    images = np.asarray(images, dtype=np.uint8)
    return images[..., np.newaxis] if images.ndim == 3 else images
