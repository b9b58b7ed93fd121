"""The binary-code index: one HDF5 file of packed codes, ids and optional labels and features.

    python search.py encode --model RUN/model.keras --images photos/ --out photos.h5

writes an index that `search.py query` searches. The file holds

- `codes`: packed `uint8` `[n, ceil(bits / 8)]` (`evaluate.pack_bits`);
- `ids`: UTF-8 strings `[n]`: image paths relative to the encoded folder, or dataset ids
  such as `cifar10/train/123`;
- `labels` (optional): `int64` `[n]` class indices, or `[n, num_classes]` multi-hot rows;
- `features` (optional): `float16` `[n, d]`: the latent activations, or the layer before them;

and the attributes `bits`, `format_version`, `model_fingerprint` (`model_fingerprint`: a hash of the
model's weights, so a re-saved file of the same model still matches), `source` (`"folder"` or
`"dataset"`), `root` (the encoded folder, absolute) or `dataset` and `data_dir`, and optionally
`class_names` and `features_layer`.

Every write goes to a temporary file in the same folder that is renamed into place, so a killed
`encode` or `encode --append` leaves the previous index readable and complete. Nothing here imports
Keras: the CLI checks an index before it loads a model.
"""

import dataclasses
import hashlib
import os

import numpy as np

import rundir

FORMAT_VERSION = 1
SOURCES = ("folder", "dataset")
_REQUIRED_ATTRS = ("bits", "format_version", "model_fingerprint", "source")
# Stored features up to this size are read whole on first use and kept: re-ranking reads a
# thousand scattered rows per query, which HDF5 serves row by row (CIFAR-10's 50,000 latent
# features are 4.8 MB; 1M penultimate ones of 4096-d are 8 GB and stay on disk).
FEATURES_IN_MEMORY_BYTES = 256 * 2**20


class IndexFileError(Exception):
    """An index file that cannot be used as asked: missing, corrupt, truncated, or made by another model.

    The message is one line meant for the user; the CLI prints it and exits with status 2.
    """


@dataclasses.dataclass(eq=False)
class Index:
    """An index read from disk: its codes in memory, its ids, labels and features read on demand.

    Attributes:
        path: the file.
        codes: packed `uint8` codes, shape `[ntotal, ceil(bits / 8)]`.
        bits: the code length `L`.
        model_fingerprint: `model_fingerprint(model)` of the model that made the codes.
        attrs: every attribute of the file, as Python values.
        has_labels: whether the file holds `labels`.
        has_features: whether the file holds `features`.
    """

    path: str
    codes: np.ndarray = dataclasses.field(repr=False)
    bits: int
    model_fingerprint: str
    attrs: dict = dataclasses.field(repr=False)
    has_labels: bool
    has_features: bool
    features_nbytes: int = 0
    _features: np.ndarray = dataclasses.field(default=None, init=False, repr=False)

    @property
    def ntotal(self):
        return len(self.codes)

    def ids(self, positions=None):
        """The ids (strings) at `positions` (any order, repeats allowed), or all of them."""
        return list(self._read("ids", positions, strings=True))

    def labels(self, positions=None):
        """The labels at `positions`, or `None` when the index has none."""
        return self._read("labels", positions) if self.has_labels else None

    def features(self, positions=None):
        """The stored float features at `positions` as `float32`, or `None` when the index has none.

        Up to `FEATURES_IN_MEMORY_BYTES` of them are read whole on the first call and
        kept, so that later calls (each query's re-ranking) index memory.
        """
        if not self.has_features:
            return None
        if self._features is None and self.features_nbytes <= FEATURES_IN_MEMORY_BYTES:
            self._features = self._read("features", None)
        if self._features is None:
            return self._read("features", positions).astype(np.float32)
        chosen = self._features if positions is None else self._features[np.asarray(positions, dtype=np.int64)]
        return chosen.astype(np.float32)

    def position_of(self, item_id):
        """The position of `item_id` in the index; an `IndexFileError` when it is not there."""
        # Compared as UTF-8 bytes: decoding a million ids to str first costs more than the search.
        with _opened(self.path) as file:
            matches = np.flatnonzero(np.asarray(file["ids"][()], dtype=object) == item_id.encode())
        if len(matches) == 0:
            raise IndexFileError(f"--query-id {item_id!r} is not in the index {self.path}")
        return int(matches[0])

    def _read(self, name, positions, strings=False):
        with _opened(self.path) as file:
            dataset = file[name].asstr() if strings else file[name]
            try:
                if positions is None:
                    return np.asarray(dataset[()])
                positions = np.asarray(positions, dtype=np.int64)
                # HDF5 reads increasing, distinct rows only: read those, then put them back in order.
                unique, inverse = np.unique(positions, return_inverse=True)
                return np.asarray(dataset[unique])[inverse]
            except (OSError, ValueError, KeyError) as error:
                raise IndexFileError(f"The index {self.path} is corrupt or truncated ({error})") from None


def model_fingerprint(model):
    """A SHA-256 hex digest of a model's weights: each weight's shape, dtype and bytes, in order.

    The weights, not the `.keras` file's bytes, so that saving the same model again keeps the
    fingerprint, while any training step changes it.

    Args:
        model: a `keras.Model`. No default.

    Returns:
        A 64-character hex string.
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        array = np.ascontiguousarray(np.asarray(weight))
        digest.update(f"{weight.path}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_index(path, codes, ids, bits, fingerprint, *, labels=None, features=None, attrs=None, mode=None):
    """Writes a whole index file atomically (a temporary file beside `path`, renamed into place).

    Args:
        path: the index file (`.h5`).
        codes: packed `uint8` codes `[n, ceil(bits / 8)]`.
        ids: `n` strings.
        bits: the code length `L`.
        fingerprint: `model_fingerprint` of the model that made the codes.
        labels: `int64` `[n]` or `[n, num_classes]`. Defaults to `None` (no labels).
        features: float `[n, d]`, stored as `float16`. Defaults to `None` (no features).
        attrs: further attributes (`source`, `root`, `dataset`, `data_dir`, `class_names`,
            `features_layer`). Defaults to `None`.
        mode: the file's permission bits. Defaults to `None`: what `open()` would give it under
            the umask.
    """
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != -(-bits // 8):
        raise ValueError(f"`codes` must have shape [n, {-(-bits // 8)}] for {bits} bits. Received: codes.shape={codes.shape}")
    if len(ids) != len(codes):
        raise ValueError(f"`ids` must hold one id per code, {len(codes)}. Received: len(ids)={len(ids)}")
    needed = codes.nbytes + sum(len(str(item)) + 16 for item in ids) + rundir.HDF5_METADATA_BYTES
    needed += sum(np.asarray(array).size * 8 for array in (labels, features) if array is not None)
    with rundir.atomic_path(path, mode) as temporary:
        rundir.no_space(needed, os.path.dirname(os.path.abspath(path)))  # HDF5 cannot clean up a file it failed to flush
        _write_index_file(temporary, codes, ids, bits, fingerprint, labels, features, attrs)


def _write_index_file(temporary, codes, ids, bits, fingerprint, labels, features, attrs):
    import h5py

    with h5py.File(temporary, "w") as file:
        file.create_dataset("codes", data=codes, chunks=(min(len(codes), 65536) or 1, codes.shape[1]) if len(codes) else None)
        file.create_dataset("ids", data=np.asarray(list(ids), dtype=object), dtype=h5py.string_dtype("utf-8"))
        if labels is not None:
            file["labels"] = np.asarray(labels, dtype=np.int64)
        if features is not None:
            file["features"] = np.asarray(features, dtype=np.float16)
        file.attrs["bits"] = int(bits)
        file.attrs["format_version"] = FORMAT_VERSION
        file.attrs["model_fingerprint"] = fingerprint
        for name, value in (attrs or {}).items():
            if value is not None:
                file.attrs[name] = value


def read_index(path):
    """Opens and checks an index; the codes are read into memory, the rest on demand.

    Raises:
        IndexFileError: the file is missing, not HDF5, truncated, of another format version, or
            its datasets and attributes disagree.
    """
    with _opened(path) as file:
        try:
            missing = [name for name in _REQUIRED_ATTRS if name not in file.attrs] + [
                name for name in ("codes", "ids") if name not in file
            ]
            if missing:
                raise IndexFileError(f"{path} is not a search index: it lacks {', '.join(missing)}")
            attrs = {name: _plain(value) for name, value in file.attrs.items()}
            if attrs["format_version"] != FORMAT_VERSION:
                raise IndexFileError(f"{path} is an index of format version {attrs['format_version']}; this tool reads version {FORMAT_VERSION}")
            bits = int(attrs["bits"])
            codes = np.asarray(file["codes"][()])
            n = len(codes)
            if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != -(-bits // 8):
                raise IndexFileError(f"{path} is corrupt: codes of shape {codes.shape} and dtype {codes.dtype} do not hold {bits}-bit codes")
            for name in ("ids", "labels", "features"):
                if name in file and file[name].shape[0] != n:
                    raise IndexFileError(f"{path} is corrupt: {file[name].shape[0]} {name} for {n} codes")
            has_labels, has_features = "labels" in file, "features" in file
            features_nbytes = int(file["features"].nbytes) if has_features else 0
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise IndexFileError(f"The index {path} is corrupt or truncated ({error})") from None
    if n == 0:
        raise IndexFileError(f"The index {path} is empty")
    return Index(str(path), codes, bits, str(attrs["model_fingerprint"]), attrs, has_labels, has_features, features_nbytes)


def append_index(path, codes, ids, fingerprint, *, labels=None, features=None, attrs=None):
    """Adds items to an existing index: the old file is copied and extended in a temporary file,
    which then replaces it with the old file's mode, so an interrupted append leaves the old
    index as it was. `search.py encode` holds the index's lock meanwhile, so appends never race.

    Raises:
        IndexFileError: the index is unreadable, or was made by another model, code length, source,
            with(out) labels or features, or already holds one of `ids`.
    """
    old = read_index(path)
    bits = old.bits
    if codes.shape[1] != old.codes.shape[1] or (attrs and attrs.get("bits", bits) != bits):
        raise IndexFileError(f"--append: the index {path} holds {bits}-bit codes; this model makes {attrs.get('bits') if attrs else codes.shape[1] * 8}-bit codes")
    if fingerprint != old.model_fingerprint:
        raise IndexFileError(f"--append: the index {path} was made by another model (fingerprint {old.model_fingerprint[:12]}, this model's {fingerprint[:12]}); encode a new index instead")
    for name, present, given in (("labels", old.has_labels, labels is not None), ("features", old.has_features, features is not None)):
        if present != given:
            raise IndexFileError(f"--append: the index {path} {'has' if present else 'has no'} {name}; the new items {'have' if given else 'have no'} {name}")
    for name in ("source", "root", "dataset", "features_layer"):
        if attrs and attrs.get(name) is not None and old.attrs.get(name) not in (None, attrs[name]):
            raise IndexFileError(f"--append: the index {path} has {name} {old.attrs[name]!r}; the new items have {attrs[name]!r}")
    old_ids = old.ids()
    repeated = set(old_ids).intersection(ids)
    if repeated:
        raise IndexFileError(f"--append: {len(repeated)} of the new items are already in the index, e.g. {sorted(repeated)[0]!r}")
    write_index(
        path,
        np.concatenate([old.codes, codes]),
        old_ids + list(ids),
        bits,
        fingerprint,
        labels=None if labels is None else np.concatenate([old.labels(), labels]),
        features=None if features is None else np.concatenate([old._read("features", None), np.asarray(features, np.float16)]),
        attrs={**{k: v for k, v in old.attrs.items() if k not in ("bits", "format_version", "model_fingerprint")}, **{k: v for k, v in (attrs or {}).items() if k != "bits"}},
        mode=os.stat(path).st_mode & 0o7777,  # the extended index keeps the mode the old one had
    )
    return old.ntotal + len(codes)


class _opened:
    """`h5py.File(path, "r")` whose failure to open is an `IndexFileError`."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        import h5py

        try:
            self.file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise IndexFileError(f"No index file {self.path}") from None
        except OSError as error:
            raise IndexFileError(f"The index {self.path} is corrupt or truncated, or not an HDF5 file ({error})") from None
        return self.file

    def __exit__(self, *exc_info):
        self.file.close()


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value
