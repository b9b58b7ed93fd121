"""Offline copies of the named datasets: read from a folder or a tar archive, decoded, cached.

`data.load_dataset(name, data_dir=PATH)` and `data.check_data_dir(PATH)` come here. PATH holds one of:

- the official CIFAR-10 python batches: `data_batch_1`..`data_batch_5`, `test_batch`, `batches.meta`;
- an image-folder tree `train/<class>/<image>`, `test/<class>/<image>`: the folder name is the class,
  classes sorted by name, images within a class (at any depth below its folder) in sorted path order;
- the official IDX files of MNIST and Fashion-MNIST: `train-images-idx3-ubyte.gz`,
  `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`;

each directly in PATH or under one top folder of it, or the same inside a `.tar`, `.tar.gz` or `.tgz`
archive (read as a stream, never extracted to disk). The decoded arrays of an offline copy are cached as an
`.npz` file (`cache.py`), so only the first run pays for decoding; so is an archive's member list, so a
later check of the copy (`check_copy`, before every run) does not decompress the archive again.

A source (`open_source`: a folder or an archive) is listed once and read by member name; `own_images.py`
reads the users' `folder:` trees through the same sources, `image_tree` and `decode_image_tree`, and
decodes images on threads with `decode_jobs` and `fill_images`, as this module does.

Example:

    python -c "import offline; print(offline.check_copy('../shared/datasets/mnist'))"
"""

import concurrent.futures
import dataclasses
import functools
import gzip
import io
import itertools
import os
import pickle
import posixpath
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import cache
import data

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LISTING_SLUG = "archive-listing"  # the cache files of archives' member lists (`cache.cache_path`)
SPLITS = ("train", "test")  # the splits of an image-folder tree
POOL = "pool"  # the one "split" of a class-folder tree (own data), before it is split into train and test
# Images are decoded on threads (Pillow releases the GIL while decoding and resizing), in chunks, so that an
# archive read as a stream never holds more than a chunk of encoded images in memory.
DECODE_THREADS = min(8, os.cpu_count() or 1)
DECODE_CHUNK = 256

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

_LAYOUT_NAMES = {
    data.CIFAR_BATCHES: "CIFAR-10 python batches",
    data.IMAGE_FOLDERS: "an image-folder tree",
    data.IDX_FILES: "IDX files",
}
_LAYOUT_CONTENTS = {
    data.CIFAR_BATCHES: "data_batch_1..5, test_batch, batches.meta",
    data.IMAGE_FOLDERS: "train/<class>/<image>, test/<class>/<image>",
    data.IDX_FILES: ", ".join(file for _, file, _ in _IDX_MEMBERS),
}


@dataclasses.dataclass(frozen=True)
class _DatasetSpec:
    image_size: tuple  # (height, width) of every image: a copy of another size is another dataset
    image_mode: str  # the Pillow mode every image is converted to: "RGB" (3 channels) or "L" (1 channel)
    class_names: tuple  # used where the source does not name its classes
    layouts: tuple  # the offline layouts that can hold this dataset


_SPECS = {
    "cifar10": _DatasetSpec((32, 32), "RGB", data.CIFAR10_CLASSES, (data.CIFAR_BATCHES, data.IMAGE_FOLDERS)),
    "mnist": _DatasetSpec((28, 28), "L", data.MNIST_CLASSES, (data.IDX_FILES, data.IMAGE_FOLDERS)),
    "fashion_mnist": _DatasetSpec((28, 28), "L", data.FASHION_MNIST_CLASSES, (data.IDX_FILES, data.IMAGE_FOLDERS)),
}


def read_copy(name, data_dir, cache_dir=None):
    """Reads the offline copy of a named dataset, through the cache.

    The cache key hashes the cache format version, `name`, the resolved path and the size and
    modification time of the source (of every file in it, for a folder).

    Args:
        name: one of `data.DATASETS`.
        data_dir: a folder or `.tar`/`.tar.gz`/`.tgz` archive holding an offline copy.
        cache_dir: the folder for decoded arrays. Defaults to `None`: see `cache.resolve_cache_dir`.

    Returns:
        `(arrays, source)`: the arrays `x_train`, `y_train`, `x_test`, `y_test` and `class_names` (grey
        images without a channel axis), and the resolved path as a string.

    Raises:
        data.DataError: when the copy is missing, unreadable, corrupt or in no layout that holds `name`.
    """
    spec = _SPECS[name]
    source = open_source(data_dir, cache_dir)
    key = [name, str(source.path), source.fingerprint()]
    cache_path = cache.cache_path(cache.resolve_cache_dir(cache_dir), name, key)
    arrays = cache.read_cache(cache_path)
    if arrays is None:
        arrays = _decode_layout(source, _inspect(source, name), spec)
        cache.write_cache(cache_path, arrays)
    return arrays, str(source.path)


def check_copy(path, name=None):
    """The layout of the offline copy at `path` (`data.CIFAR_BATCHES`, `data.IMAGE_FOLDERS` or
    `data.IDX_FILES`), checked without decoding any image; `name`, when given, must fit it.
    See `data.check_data_dir`."""
    return _inspect(open_source(path), name).format


# --- sources: a folder or an archive, both listed and read by member name ------------------------------


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


def open_source(data_dir, cache_dir=None):
    """A folder or a `.tar`/`.tar.gz`/`.tgz` archive as a source: `path` (resolved), `listing` (`files` and
    `dirs`, relative POSIX paths, hidden ones left out), `fingerprint()` (JSON-serialisable, for a cache key)
    and `read(names)`, which yields `(name, bytes)`. A missing or empty path is a `data.DataError`.
    An archive's listing is cached in `cache_dir` (default: see `cache.resolve_cache_dir`)."""
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise data.DataError("The path does not exist.")
    path = path.resolve()
    if path.is_dir():
        return _FolderSource(path)
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return _ArchiveSource(path, cache_dir)
    raise data.DataError(f"The path must be a folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive.")


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
            raise data.DataError("The path is an empty folder (hidden files aside).")
        self.listing = _listing(self._file_stats, dirs)

    def _scan(self, relative, dirs, pending):
        try:
            with os.scandir(self.path / relative) as entries:
                for entry in entries:
                    name = posixpath.join(relative, entry.name)
                    if data.is_hidden(entry.name):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        dirs.add(name)
                        pending.append(name)
                    elif entry.is_file():
                        stat = entry.stat()
                        self._file_stats[name] = (stat.st_size, stat.st_mtime_ns)
        except OSError as error:
            raise data.DataError(f"Cannot read {error.filename}: {error.strerror}.") from error

    def fingerprint(self):
        return sorted((name, *stat) for name, stat in self._file_stats.items())

    def read(self, names):
        """Yields `(name, bytes)` for each of `names`."""
        for name in names:
            try:
                yield name, (self.path / name).read_bytes()
            except OSError as error:
                raise data.DataError(f"Cannot read {error.filename}: {error.strerror}.") from error


class _ArchiveSource:
    """An offline copy in a tar archive, read as a stream: each pass decompresses it once.

    Listing the members is such a pass (about 1.5 s for the 60,000 images of CIFAR-10), so the listing
    is cached by the archive's path, size and modification time, as the decoded arrays are.
    """

    def __init__(self, path, cache_dir=None):
        self.path = path
        self._cache_dir = cache_dir

    @functools.cached_property
    def listing(self):
        listing_cache = cache.cache_path(cache.resolve_cache_dir(self._cache_dir), LISTING_SLUG, [str(self.path), *self.fingerprint()])
        cached = cache.read_cache(listing_cache, required=("files", "dirs"))
        if cached is not None:
            self._check_readable()
            return _listing(cached["files"].tolist(), cached["dirs"].tolist())
        files, dirs = [], []
        for name, member, _ in self._members(wanted=()):
            if member.isfile():
                files.append(name)
            elif member.isdir():
                dirs.append(name)
        if not files and not dirs:
            raise data.DataError("The path is an empty archive.")
        cache.write_cache(listing_cache, {"files": np.array(files, dtype=str), "dirs": np.array(dirs, dtype=str)})
        return _listing(files, dirs)

    def fingerprint(self):
        stat = self.path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def _check_readable(self):
        """Opens the archive, as listing it would, so an unreadable one fails even when its listing is cached."""
        try:
            self.path.open("rb").close()
        except OSError as error:
            raise data.DataError(f"Cannot read the archive: {error.strerror}.") from error

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
                    if data.is_hidden(name):
                        continue
                    wanted_file = member.isfile() and name in wanted
                    yield name, member, archive.extractfile(member).read() if wanted_file else None
        except PermissionError as error:
            raise data.DataError(f"Cannot read the archive: {error.strerror}.") from error
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            raise data.DataError(f"Cannot read the archive, it is corrupt or truncated: {error}.") from error


# --- layouts -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a dataset sits in a source: its format, the prefix of its files and the source's listing."""

    format: str  # data.CIFAR_BATCHES, data.IMAGE_FOLDERS or data.IDX_FILES (own data: also data.CLASS_FOLDERS)
    prefix: str  # "" or "<top folder>/"
    listing: _Listing


def _inspect(source, name):
    """Finds the source's layout and checks it without decoding images; `name` may be None."""
    layout = _detect_layout(source.listing)
    if name is not None and layout.format not in _SPECS[name].layouts:
        raise data.DataError(
            f"data_dir holds {_LAYOUT_NAMES[layout.format]}, which cannot hold {name}; "
            f"{name} needs {' or '.join(_LAYOUT_NAMES[fit] for fit in _SPECS[name].layouts)}."
        )
    if layout.format == data.IMAGE_FOLDERS:
        image_tree(layout)
    elif layout.format == data.IDX_FILES:
        _check_idx_headers(source, layout)
    return layout


def _detect_layout(listing):
    prefixes = [""]
    top_level = {name.split("/")[0] for name in listing.files | listing.dirs}
    if len(top_level) == 1 and top_level <= listing.dirs:
        prefixes.append(f"{next(iter(top_level))}/")
    for prefix in prefixes:
        if all(prefix + file in listing.files for file in _CIFAR_FILES):
            return Layout(data.CIFAR_BATCHES, prefix, listing)
        if all(prefix + file in listing.files for _, file, _ in _IDX_MEMBERS):
            return Layout(data.IDX_FILES, prefix, listing)
        if all(prefix + split in listing.dirs for split in SPLITS):
            return Layout(data.IMAGE_FOLDERS, prefix, listing)
    expected = "; or ".join(f"{_LAYOUT_NAMES[layout]} ({_LAYOUT_CONTENTS[layout]})" for layout in _LAYOUT_NAMES)
    raise data.DataError(
        f"data_dir holds no known dataset layout. Expected {expected}; directly or under one top folder, "
        f"or in a {'/'.join(ARCHIVE_SUFFIXES)} archive."
    )


def _decode_layout(source, layout, spec):
    """Decodes a checked layout into the arrays of a `Dataset` (and `class_names`)."""
    if layout.format == data.CIFAR_BATCHES:
        return _decode_cifar_batches(source, layout)
    if layout.format == data.IDX_FILES:
        return _decode_idx(source, layout, spec)
    image_shape = (*spec.image_size, len(spec.image_mode))
    arrays, _ = decode_image_tree(source, layout, image_shape, functools.partial(_decode_known_image, spec))
    return arrays  # nothing skipped: `_decode_known_image` refuses an unreadable image


def _check_labels(labels, num_classes, where):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise data.DataError(f"{where} has labels from {labels.min()} to {labels.max()}; expected 0 to {num_classes - 1}.")


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
        raise data.DataError(f"CIFAR file {_CIFAR_META_FILE} has no usable label_names: {error!r}.") from error
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
        raise data.DataError(f"Cannot unpickle CIFAR file {name}: {error}.") from error


def _cifar_batch(batch, file, num_classes):
    """A batch dict's images `(n, 32, 32, 3)` uint8 and labels `(n,)` int64, checked."""
    try:
        rows = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as error:
        raise data.DataError(f"CIFAR file {file} lacks data or labels: {error!r}.") from error
    row_size = int(np.prod(_CIFAR_IMAGE_SHAPE))
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != row_size or labels.shape != (len(rows),):
        raise data.DataError(
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
        raise data.DataError(f"IDX file {file} is not a readable gzip file: {error}.") from error


def _idx_shape(raw, file, ndim):
    """The dimensions in an IDX header, after checking its magic number."""
    expected = _IDX_UNSIGNED_BYTE << 8 | ndim
    header_size = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big")
    if len(raw) < header_size or magic != expected:
        raise data.DataError(
            f"IDX file {file} has a bad header (magic number 0x{magic:08x}, {len(raw)} bytes); expected "
            f"magic number 0x{expected:08x} (unsigned bytes, {ndim} dimensions) and {header_size} bytes."
        )
    return struct.unpack(f">{ndim}I", raw[4:header_size])


def _idx_array(raw, file, ndim):
    shape = _idx_shape(raw, file, ndim)
    body = memoryview(raw)[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        raise data.DataError(f"IDX file {file} holds {len(body)} data bytes; its header {shape} promises {np.prod(shape)}.")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape).copy()  # writable, like arrays from the cache


def _check_idx_headers(source, layout):
    """Checks the four IDX headers and that they agree, decompressing only the headers."""
    _check_idx_shapes({key: _idx_shape(_gunzip(payload, file, size=4 + 4 * ndim), file, ndim)
                       for key, file, ndim, payload in _read_idx_members(source, layout)})


def _check_idx_shapes(shapes):
    for split in SPLITS:
        images, labels = shapes[f"x_{split}"][0], shapes[f"y_{split}"][0]
        if images != labels:
            raise data.DataError(f"IDX files disagree: {images} {split} images but {labels} {split} labels.")
        if tuple(shapes[f"x_{split}"][1:]) != _IDX_IMAGE_SIZE:
            raise data.DataError(f"IDX {split} images are {shapes[f'x_{split}'][1:]}; expected {_IDX_IMAGE_SIZE}.")


def _decode_idx(source, layout, spec):
    arrays = {key: _idx_array(_gunzip(payload, file), file, ndim)
              for key, file, ndim, payload in _read_idx_members(source, layout)}
    _check_idx_shapes({key: array.shape for key, array in arrays.items()})
    for split in SPLITS:
        _check_labels(arrays[f"y_{split}"], len(spec.class_names), f"IDX {split} labels")
    return {**arrays, "class_names": np.array(spec.class_names)}


# --- image-folder trees ---------------------------------------------------------------------------------


def image_tree(layout):
    """Checks the tree; returns the sorted class names and, per split, the sorted `(file, label)` pairs.

    A split tree (`data.IMAGE_FOLDERS`) has the splits train and test; a class-folder tree
    (`data.CLASS_FOLDERS`) has one, `POOL`. An image is a file with an image suffix anywhere below its
    class folder.
    """
    split_names = SPLITS if layout.format == data.IMAGE_FOLDERS else (POOL,)
    bases = {split: split_base(layout, split) for split in split_names}
    classes = {split: set() for split in split_names}
    images = {}
    for split, base in bases.items():
        for folder in layout.listing.dirs:
            if folder.startswith(base) and "/" not in folder[len(base):]:
                classes[split].add(folder[len(base):])
        for file in layout.listing.files:
            parts = file[len(base):].split("/", 1) if file.startswith(base) else []
            if len(parts) == 2 and file.lower().endswith(data.IMAGE_SUFFIXES):
                images.setdefault((split, parts[0]), []).append(file)
    if layout.format == data.IMAGE_FOLDERS and classes["train"] != classes["test"]:
        raise data.DataError(
            f"The image-folder tree has different classes in train/ and test/: only in train: "
            f"{sorted(classes['train'] - classes['test'])}; only in test: {sorted(classes['test'] - classes['train'])}."
        )
    class_names = sorted(classes[split_names[0]])
    if not class_names:
        where = "in train/ and test/" if layout.format == data.IMAGE_FOLDERS else "(one sub-folder of images per class)"
        raise data.DataError(f"The image-folder tree has no class folders {where}.")
    for split, base in bases.items():
        for class_name in class_names:
            if (split, class_name) not in images:
                raise data.DataError(f"Class folder {base}{class_name} holds no images ({', '.join(data.IMAGE_SUFFIXES)}).")
    splits = {split: [(file, label) for label, class_name in enumerate(class_names)
                      for file in sorted(images[split, class_name])] for split in split_names}
    return class_names, splits


def split_base(layout, split):
    """The path prefix of a split's class folders: `<prefix><split>/`, or just `<prefix>` for the pool."""
    return layout.prefix + ("" if split == POOL else f"{split}/")


def decode_image_tree(source, layout, image_shape, decode, with_names=False):
    """Decodes a checked tree into arrays `x_<split>`, `y_<split>` and `class_names` (and `names_<split>`).

    Args:
        source: the tree's source (`open_source`).
        layout: its checked `Layout`, `data.IMAGE_FOLDERS` or `data.CLASS_FOLDERS`.
        image_shape: `(height, width, channels)` of every decoded image.
        decode: `decode(name, payload)`, an image as uint8 `image_shape`, or a string saying why it cannot
            be used (own images, which are then left out); a known dataset's copy raises instead.
        with_names: also return each readable image's file name in the tree, as `names_<split>`
            (own images: the figures name them). Defaults to `False`.

    Returns:
        `(arrays, skipped)`: the arrays of the readable images, and the unreadable ones as
        `"<name>: <reason>"`.
    """
    class_names, splits = image_tree(layout)
    slots = {file: (split, position) for split, items in splits.items() for position, (file, _) in enumerate(items)}
    images = {split: np.empty((len(items), *image_shape), np.uint8) for split, items in splits.items()}
    readable = {split: np.zeros(len(items), bool) for split, items in splits.items()}
    jobs = ((slots[file], file, payload) for file, payload in source.read(slots))
    skipped = fill_images(jobs, decode, images, readable)
    if sum(int(mask.sum()) for mask in readable.values()) + len(skipped) != len(slots):
        raise data.DataError("The source changed while it was read; run again.")
    arrays = {"class_names": np.array(class_names)}
    for split, items in splits.items():
        labels = np.array([label for _, label in items], dtype=np.int64)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = readable_rows(images[split], labels, readable[split])
        if with_names:
            arrays[f"names_{split}"] = np.array([file for file, _ in items], dtype=str)[readable[split]]
    return arrays, skipped


def readable_rows(images, labels, readable):
    """The rows of `images` and `labels` whose `readable` is True (the arrays themselves when all are)."""
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
        raise data.DataError(f"Cannot decode image {file}: not an image format Pillow can read.") from error
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise data.DataError(f"Cannot decode image {file}: {error}.") from error
    return pixels.reshape(*pixels.shape[:2], -1)


def _decode_known_image(spec, file, payload):
    """An image of a known dataset's copy, which must have the dataset's size; else a DataError."""
    pixels = _decode_image(payload, spec.image_mode, file)
    if pixels.shape[:2] != spec.image_size:
        raise data.DataError(
            f"Image {file} is {pixels.shape[1]}x{pixels.shape[0]} (width x height); every image of this "
            f"dataset is {spec.image_size[1]}x{spec.image_size[0]}."
        )
    return pixels


# --- decoding on threads: image-folder trees here, own images (`own_images.py`) too ---------------------


def decode_jobs(jobs, decode):
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


def fill_images(jobs, decode, images, readable):
    """Decodes `jobs` (`((split, position), name, payload)`) with `decode_jobs` into
    `images[split][position]`, marking `readable`; returns the images `decode` refused (with a string) as
    `"<name>: <reason>"`."""
    skipped = []
    for (split, position), name, result in decode_jobs(jobs, decode):
        if isinstance(result, str):
            skipped.append(f"{name}: {result}")
        else:
            images[split][position] = result
            readable[split][position] = True
    return skipped


