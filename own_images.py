"""The users' own labelled images, named like datasets: `folder:PATH` and `list:DIR`.

`data.load_dataset` and `data.check_dataset` come here for a name with one of these prefixes:

- `load_dataset("folder:PATH")`: an image-folder tree with one sub-folder per class, with `train/` and
  `test/` above the class folders or without them; without them the images are split, stratified and
  seeded, into train and test (`test_fraction` of each class, at least one image on each side);
- `load_dataset("list:DIR")`: the list files of the DHN/HashNet data, `DIR/train.txt`, `DIR/test.txt` and
  optionally `DIR/database.txt`, one image a line: a path relative to the image root, then a multi-hot
  label vector (`images/0001.jpg 0 1 0 1`). Labels are int64 `[n, num_classes]` (`Dataset.multi_label`),
  and `database.txt`, when present, becomes `Dataset.x_db`/`y_db`. An optional `DIR/classes.txt`, one
  name a line, names the labels (else `label0`, `label1`, ...).

Their images may have any size and mode (grey, RGBA, palette, CMYK, 16-bit): each is converted to RGB, its
shorter side resized to `image_size` and the centre cropped to a square (`decode_image`, which `search.py`
uses too). An unreadable image is skipped with an `UnreadableImageWarning` naming it, and a last warning
counts them; a dataset without a readable image, an empty class, a list path that leads outside the image
root or a malformed list line is a `DataError` whose message says where.

A folder is read like an offline copy (`offline.py`: a folder or a tar archive, listed once); the decoded
arrays are cached (`cache.py`), and the split of a class-folder tree (`protocols.stratified_split`) is
drawn after the cache.

Example:

    python -c "import data; print(data.load_dataset('folder:my_photos', image_size=64).x_train.shape)"
"""

import dataclasses
import functools
import hashlib
import io
import os
import posixpath
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import cache
import data
import offline
import protocols

MIN_CLASSES = 2  # a folder dataset with one class has nothing to retrieve against
LIST_FILES = {"train": "train.txt", "test": "test.txt", "db": "database.txt"}  # database.txt is optional
CLASSES_FILE = "classes.txt"  # optional: the names of a list dataset's labels, one a line
# Unreadable images named one warning each, up to this many; the last warning counts all of them.
MAX_NAMED_UNREADABLE = 20


def read_folder(name, path, image_size, test_fraction=None, seed=0, cache_dir=None):
    """Reads a `folder:PATH` tree, through the cache, and splits a class-folder tree into train and test.

    The cache key hashes the cache format version, the resolved path, the size and modification time of
    every file in it, `image_size` and the layout; the split is drawn after the cache, so `seed` and
    `test_fraction` share one entry.

    Args:
        name: `"folder:PATH"`, for the cache file's name.
        path: PATH, a folder or `.tar`/`.tar.gz`/`.tgz` archive.
        image_size: the side, in pixels, of the square every image becomes.
        test_fraction: the share of each class drawn as test images from a tree without `train/` and
            `test/`; refused for a tree with them. Defaults to `None`: `data.DEFAULT_TEST_FRACTION`.
        seed: non-negative seed of that split. Defaults to 0.
        cache_dir: the folder for decoded arrays. Defaults to `None`: see `cache.resolve_cache_dir`.

    Returns:
        `(arrays, source)`: `x_train`, `y_train`, `x_test`, `y_test`, `class_names` and `skipped`, and the
        resolved path as a string.

    Raises:
        ValueError: for a bad `seed`.
        data.DataError: when the folder cannot be used; the message says why.
    """
    data.check_seed(seed)
    source = offline.open_source(path)
    layout = _inspect_folder(source, test_fraction)
    key = [data.FOLDER, str(source.path), source.fingerprint(), image_size, layout.format, layout.prefix]
    cache_path = cache.cache_path(cache.resolve_cache_dir(cache_dir), data.dataset_slug(name), key)
    split_names = offline.SPLITS if layout.format == data.IMAGE_FOLDERS else (offline.POOL,)
    required = ("class_names", "skipped", *(f"{axis}_{split}" for split in split_names for axis in "xy"))
    arrays = cache.read_cache(cache_path, required)
    if arrays is None:
        arrays = _decode_folder(source, layout, image_size)
        _check_readable_classes(arrays, layout)
        cache.write_cache(cache_path, arrays)
    else:
        _rewarn_cached(arrays)
    if layout.format == data.CLASS_FOLDERS:
        arrays = _split_pool(arrays, data.DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction, seed)
    return arrays, str(source.path)


def check_folder(path, test_fraction=None):
    """The layout of a `folder:PATH` tree (`data.IMAGE_FOLDERS` or `data.CLASS_FOLDERS`), checked without
    decoding any image; see `data.check_dataset`."""
    return _inspect_folder(offline.open_source(path), test_fraction).format


def read_lists(name, list_dir, image_size, image_root=None, cache_dir=None):
    """Reads the images a `list:DIR` names, through the cache.

    The cache key hashes the cache format version, the resolved list folder and image root,
    `image_size`, the contents of the list files and the class names (not the images the lists name).

    Args:
        name: `"list:DIR"`, for the cache file's name.
        list_dir: DIR, the folder of `train.txt`, `test.txt` and optionally `database.txt`, `classes.txt`.
        image_size: the side, in pixels, of the square every image becomes.
        image_root: the folder the list paths are relative to. Defaults to `None`: `list_dir`.
        cache_dir: the folder for decoded arrays. Defaults to `None`: see `cache.resolve_cache_dir`.

    Returns:
        `(arrays, source)`: `x_train`, `y_train`, `x_test`, `y_test` (and `x_db`, `y_db` with a
        `database.txt`), labels multi-hot `[n, num_classes]`, `class_names` and `skipped`; and the resolved
        list folder as a string.

    Raises:
        data.DataError: when the lists or their images cannot be used; the message says where.
    """
    lists = _inspect_lists(list_dir, image_root)
    digests = {image_list.file: image_list.digest for image_list in lists.lists.values()}
    key = [data.LIST, str(lists.list_dir), str(lists.image_root), image_size, digests, list(lists.class_names)]
    cache_path = cache.cache_path(cache.resolve_cache_dir(cache_dir), data.dataset_slug(name), key)
    required = ("class_names", "skipped", *(f"{axis}_{split}" for split in lists.lists for axis in "xy"))
    arrays = cache.read_cache(cache_path, required)
    if arrays is None:
        arrays = _decode_lists(lists, image_size)
        cache.write_cache(cache_path, arrays)
    else:
        _rewarn_cached(arrays)
    return arrays, str(lists.list_dir)


def check_lists(list_dir, image_root=None):
    """Checks the list files of a `list:DIR` (not the images); see `data.check_dataset`."""
    _inspect_lists(list_dir, image_root)


# --- decoding: any size and mode, unreadable images skipped ------------------------------------------------


def decode_image(path, size):
    """One image file, any size and mode, as uint8 RGB `(size, size, 3)` (shorter side resized, centre
    crop), or a string saying why it cannot be used. The decoding `folder:` and `list:` data use."""
    return _decode_own_image(size, str(path), Path(path))


def decode_images(paths, size):
    """Yields `(path, decode_image(path, size))` for each path, in order, decoded on `offline.DECODE_THREADS`
    threads."""
    jobs = ((None, path, Path(path)) for path in paths)
    for _, path, result in offline.decode_jobs(jobs, functools.partial(_decode_own_image, size)):
        yield path, result


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


def _warn_unreadable(skipped, total, cached=False):
    """One `data.UnreadableImageWarning` per skipped image (the first `MAX_NAMED_UNREADABLE`), then the count."""
    stacklevel = data.caller_stacklevel()
    for entry in skipped[:MAX_NAMED_UNREADABLE]:
        warnings.warn(f"Skipping unreadable image {entry}", data.UnreadableImageWarning, stacklevel=stacklevel)
    if len(skipped):
        named = f"; the first {MAX_NAMED_UNREADABLE} are named above" if len(skipped) > MAX_NAMED_UNREADABLE else ""
        when = " (found when the data was decoded; the decoded arrays come from the cache)" if cached else ""
        plural = "s" if len(skipped) != 1 else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image{plural} of {total}{named}{when}",
                      data.UnreadableImageWarning, stacklevel=stacklevel)


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
        present = [split for split in offline.SPLITS if prefix + split in listing.dirs]
        if len(present) == 2:
            layout = offline.Layout(data.IMAGE_FOLDERS, prefix, listing)
            break
        if len(present) == 1:
            missing = next(split for split in offline.SPLITS if split not in present)
            raise data.DataError(
                f"The folder has {prefix}{present[0]}/ but no {prefix}{missing}/: give it both, or neither "
                f"(then each class's images are split into train and test)."
            )
    if layout is None:  # class folders: in the one top folder only if it has sub-folders (else it is a class)
        prefix = prefixes[-1] if any(folder.startswith(prefixes[-1]) for folder in listing.dirs) else ""
        layout = offline.Layout(data.CLASS_FOLDERS, prefix, listing)
    class_names, splits = offline.image_tree(layout)
    if len(class_names) < MIN_CLASSES:
        raise data.DataError(
            f"The folder has {len(class_names)} class folder ({', '.join(class_names)}); a dataset needs at "
            f"least {MIN_CLASSES}, one sub-folder of images per class."
        )
    if layout.format == data.IMAGE_FOLDERS and test_fraction is not None:
        raise data.DataError("The folder has train/ and test/ folders, so test_fraction (--test-fraction) does not apply.")
    if layout.format == data.CLASS_FOLDERS:
        counts = np.bincount([label for _, label in splits[offline.POOL]], minlength=len(class_names))
        if counts.min() < 2:
            raise data.DataError(
                f"Class folder {layout.prefix}{class_names[counts.argmin()]} holds only 1 image; splitting each "
                f"class into train and test needs at least 2 (or give the folder train/ and test/)."
            )
    return layout


def _decode_folder(source, layout, image_size):
    """Decodes a checked `folder:` tree into arrays, `skipped` among them, having warned about those."""
    decode = functools.partial(_decode_own_image, image_size)
    arrays, skipped = offline.decode_image_tree(source, layout, (image_size, image_size, 3), decode, with_names=True)
    _warn_unreadable(skipped, total=len(skipped) + sum(len(arrays[key]) for key in arrays if key.startswith("y_")))
    arrays["skipped"] = np.array(skipped, dtype=str)
    return arrays


def _check_readable_classes(arrays, layout):
    """After skipping unreadable images: some image was read, and every class keeps enough of them."""
    class_names = [str(class_name) for class_name in arrays["class_names"]]
    split_names = offline.SPLITS if layout.format == data.IMAGE_FOLDERS else (offline.POOL,)
    skipped = [str(entry) for entry in arrays["skipped"]]
    if not any(len(arrays[f"y_{split}"]) for split in split_names):
        raise data.DataError(f"No image of the folder could be read ({len(skipped)} tried; the first: {skipped[0]}).")
    needed = 2 if layout.format == data.CLASS_FOLDERS else 1
    for split in split_names:
        counts = np.bincount(arrays[f"y_{split}"], minlength=len(class_names))
        for label in np.flatnonzero(counts < needed):
            why = ("splitting it into train and test needs at least 2" if layout.format == data.CLASS_FOLDERS
                   else "every class needs one in train/ and one in test/")
            raise data.DataError(
                f"Class folder {offline.split_base(layout, split)}{class_names[label]} has {counts[label]} readable "
                f"image{'s' if counts[label] != 1 else ''} (the others could not be read, see the warnings); {why}."
            )


def _split_pool(arrays, test_fraction, seed):
    """The train and test arrays of a class-folder tree: `protocols.stratified_split` of its pool."""
    train_idx, test_idx = protocols.stratified_split(arrays["y_pool"], test_fraction, seed)
    x_pool, y_pool = arrays["x_pool"], arrays["y_pool"]
    split = {"x_train": x_pool[train_idx], "y_train": y_pool[train_idx], "x_test": x_pool[test_idx],
             "y_test": y_pool[test_idx], "class_names": arrays["class_names"], "skipped": arrays["skipped"]}
    if "names_pool" in arrays:  # absent from arrays cached before names were kept
        split.update(names_train=arrays["names_pool"][train_idx], names_test=arrays["names_pool"][test_idx])
    return split


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
        raise data.DataError("The list folder does not exist." if not folder.exists() else "The list path is not a folder.")
    folder = folder.resolve()
    root = folder if image_root is None else Path(image_root).expanduser()
    if not root.is_dir():
        raise data.DataError(f"The image root {str(root)!r} does not exist or is not a folder.")
    lists, reference = {}, None  # reference: (where, count) of the first line, which fixes the label count
    for split, file in LIST_FILES.items():
        if not (folder / file).is_file():
            if split == "db":
                continue
            raise data.DataError(
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
        raise data.DataError(f"Cannot read {file}: {error.strerror}.") from error
    except UnicodeDecodeError as error:
        raise data.DataError(f"{file} is not UTF-8 text ({error}).") from error
    paths, lines, rows = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue  # blank lines are allowed
        where = f"{file} line {number}"
        image_path, labels = tokens[0], tokens[1:]
        if image_path.isdigit():
            raise data.DataError(f"{where} starts with {image_path!r}, a label, not an image path; expected {_LIST_LINE}.")
        if not labels:
            raise data.DataError(f"{where} has an image path but no labels; expected {_LIST_LINE}.")
        bad = next((position for position, token in enumerate(labels) if token not in ("0", "1")), None)
        if bad is not None:
            hint = " (a path may not contain spaces)" if bad == 0 and not labels[0].isdigit() else ""
            raise data.DataError(f"{where}: label {bad + 1} is {labels[bad]!r}; labels must be 0 or 1{hint}.")
        if reference is None:
            reference = (where, len(labels))
        elif len(labels) != reference[1]:
            raise data.DataError(f"{where} has {len(labels)} labels; expected {reference[1]}, as {reference[0]} has.")
        _check_list_path(image_path, where)
        paths.append(image_path)
        lines.append(number)
        rows.append([token == "1" for token in labels])
    if not paths:
        raise data.DataError(f"{file} lists no images; expected one a line: {_LIST_LINE}.")
    labels = np.array(rows, dtype=np.int64)
    return _ImageList(file, tuple(paths), tuple(lines), labels, hashlib.sha256(raw).hexdigest()), reference


def _check_list_path(image_path, where):
    """Refuses, on paper, a path that leaves the image root: absolute, or climbing out with `..`."""
    if image_path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", image_path):
        raise data.DataError(
            f"{where}: {image_path!r} is an absolute path; list paths must be relative to the image root "
            f"(image_root, --image-root; default the list folder): remove the machine's own prefix from them."
        )
    normal = posixpath.normpath(image_path.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        raise data.DataError(f"{where}: {image_path!r} leads outside the image root; list paths must stay inside it.")


def _list_class_names(folder, num_labels):
    """The names in `classes.txt` (one a non-empty line, as many as labels), else `label0`, `label1`, ..."""
    path = folder / CLASSES_FILE
    if not path.is_file():
        return tuple(f"label{index}" for index in range(num_labels))
    try:
        names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as error:
        raise data.DataError(f"Cannot read {CLASSES_FILE}: {error}.") from error
    if len(names) != num_labels:
        raise data.DataError(f"{CLASSES_FILE} names {len(names)} classes; the list files have {num_labels} labels a line.")
    return names


def _decode_lists(lists, image_size):
    """Decodes every listed image; a path whose real location (links followed) leaves the root is a DataError."""
    root = str(lists.image_root)
    images = {split: np.empty((len(image_list.paths), image_size, image_size, 3), np.uint8)
              for split, image_list in lists.lists.items()}
    readable = {split: np.zeros(len(image_list.paths), bool) for split, image_list in lists.lists.items()}

    def jobs():
        for split, image_list in lists.lists.items():
            for position, (image_path, line) in enumerate(zip(image_list.paths, image_list.lines)):
                real = os.path.realpath(os.path.join(root, image_path))
                if os.path.commonpath([real, root]) != root:
                    raise data.DataError(
                        f"{image_list.file} line {line}: {image_path!r} leads outside the image root {root} "
                        f"(a symbolic link to {real}); point image_root (--image-root) at the folder that holds "
                        f"the images themselves."
                    )
                yield (split, position), f"{image_path} ({image_list.file} line {line})", Path(real)

    skipped = offline.fill_images(jobs(), functools.partial(_decode_own_image, image_size), images, readable)
    _warn_unreadable(skipped, total=sum(mask.size for mask in readable.values()))
    if not any(mask.any() for mask in readable.values()):
        raise data.DataError(f"No listed image could be read ({len(skipped)} tried; the first: {skipped[0]}).")
    arrays = {"class_names": np.array(lists.class_names), "skipped": np.array(skipped, dtype=str)}
    for split, image_list in lists.lists.items():
        if not readable[split].any():
            raise data.DataError(f"No image listed in {image_list.file} could be read ({len(image_list.paths)} tried).")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = offline.readable_rows(images[split], image_list.labels, readable[split])
        arrays[f"names_{split}"] = np.array(image_list.paths, dtype=str)[readable[split]]
    return arrays


