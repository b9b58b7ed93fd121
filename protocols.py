"""Evaluation protocols: which images train, which form the database, which are queries, and k.

The deep-hashing papers differ in their splits as much as in their losses, so their
numbers only compare under one named protocol. Each protocol here is a seeded split
of a dataset's sources (`train`, `test` and, for list data, `database`) plus the k of
its mAP@k; the same seed gives the same split on every machine for the same data.

| protocol | queries | database | training | mAP@ |
|---|---|---|---|---|
| `dlbhc` | the whole test split | the training split | the training split | 1000 |
| `dbr` | the test split (`-q` draws from it, as the original tool did) | the training split | the training split | `-t` (1000) |
| `dhn` | 100 per class from train+test pooled | the rest of the pool but the training images (54,000 on CIFAR-10) | 500 per class from the pool | all |
| `cifar10-1` | as `dhn` | the whole pool but the queries (59,000 on CIFAR-10) | as `dhn` | all |
| `nuswide` | the test list | the database list (else the training list) | the training list | 5000 |
| `imagenet100` | as `nuswide` | as `nuswide` | as `nuswide` | 1000 |
| `folder` | the test split | the database list, else the training split | the training split | all |

Indices are `(source, position)` pairs: `sources[i]` names the split an item comes
from and `positions[i]` its place in that split, so `codes.h5` can say exactly which
image each code belongs to.

The seeded draws the splits are made of, `balanced_subset`, `draw_queries`,
`holdout_split` and `stratified_split` (which splits a `folder:` tree without `train/`
and `test/`), draw with `np.random.default_rng(seed)`: the same seed and the same data
source give the same indices on every machine. The order of images differs between
sources (an image-folder tree is sorted by class), so an index is not the same image
across sources.
"""

import dataclasses

import numpy as np

import data

SOURCES = ("train", "test", "database")
PROTOCOLS = ("dlbhc", "dbr", "dhn", "cifar10-1", "nuswide", "imagenet100", "folder")
DEFAULT_TOP = {"dlbhc": 1000, "dbr": 1000, "dhn": "all", "cifar10-1": "all", "nuswide": 5000, "imagenet100": 1000, "folder": "all"}
# The DHN/DeepHash ports' CIFAR-10 split: per class, this many queries and training images.
DHN_QUERIES_PER_CLASS = 100
DHN_TRAIN_PER_CLASS = 500


class ProtocolError(ValueError):
    """A protocol that cannot be applied to this data; the message is meant for the user."""


@dataclasses.dataclass
class Items:
    """A set of items named by the split they come from and their position in it."""

    sources: np.ndarray  # uint8 indices into SOURCES, shape [n]
    positions: np.ndarray  # int64 positions within that source, shape [n]

    def __len__(self):
        return len(self.positions)

    def subset(self, index):
        return Items(self.sources[index], self.positions[index])

    def same_as(self, other):
        """Whether `other` names the very same items, in any order."""
        keys = [np.sort(items.sources.astype(np.int64) << 40 | items.positions) for items in (self, other)]
        return len(keys[0]) == len(keys[1]) and bool(np.array_equal(*keys))

    def gather(self, arrays):
        """Rows of `arrays` (one array per source, `None` where absent) for these items, in order."""
        first = next(array for array in arrays if array is not None)
        out = np.empty((len(self), *first.shape[1:]), dtype=first.dtype)
        for source_index, array in enumerate(arrays):
            mask = self.sources == source_index
            if mask.any():
                out[mask] = array[self.positions[mask]]
        return out


@dataclasses.dataclass
class Split:
    """A protocol applied to one dataset: the training items, the database and the queries."""

    protocol: str
    train: Items
    database: Items
    queries: Items
    top: object  # the protocol's own k: an int or "all"


def default_protocol(dataset_name):
    """The protocol a dataset is evaluated under unless `--protocol` says otherwise."""
    if dataset_name.startswith(("folder:", "list:")):
        return "folder"
    return "dlbhc"


def make_split(protocol, labels_by_source, seed):
    """Applies `protocol` to a dataset's labels, seeded.

    Args:
        protocol: one of `PROTOCOLS`.
        labels_by_source: `(train_labels, test_labels, database_labels)`; the last is
            `None` unless the data has a separate database list. Labels are int [n]
            or multi-hot [n, C].
        seed: the split seed.

    Returns:
        A `Split`.
    """
    if protocol not in PROTOCOLS:
        raise ProtocolError(f"`protocol` must be one of {PROTOCOLS}. Received: protocol={protocol!r}")
    train_labels, test_labels, database_labels = labels_by_source
    train, test = _whole(0, len(train_labels)), _whole(1, len(test_labels))
    if protocol in ("dhn", "cifar10-1"):
        return _pooled_split(protocol, train_labels, test_labels, seed)
    database = train
    if protocol in ("nuswide", "imagenet100", "folder") and database_labels is not None:
        database = _whole(2, len(database_labels))
    return Split(protocol, train=train, database=database, queries=test, top=DEFAULT_TOP[protocol])


def shuffled(items, seed):
    """`items` in a seeded random order.

    Equal Hamming distances are ranked by database position (ties go to the
    lower index). Sources listed class by class, as image-folder copies of
    CIFAR-10 are, would then rank every tie by class: a query coded like class
    9 would first meet the class-0 to class-8 images that share its code, and
    precision@k would rise with k. In a random order a tie is broken without
    regard to class, as in the original, interleaved CIFAR-10 order.
    """
    return items.subset(np.random.default_rng(seed).permutation(len(items)))


def _whole(source_index, size):
    return Items(np.full(size, source_index, dtype=np.uint8), np.arange(size, dtype=np.int64))


def _pooled_split(protocol, train_labels, test_labels, seed):
    """DHN's CIFAR-10 split: pool train and test, draw queries and training images per class."""
    if np.ndim(train_labels) != 1:
        raise ProtocolError(f"--protocol {protocol} needs single-label data: it draws a fixed number of images per class")
    pool = Items(
        np.concatenate([np.zeros(len(train_labels), np.uint8), np.ones(len(test_labels), np.uint8)]),
        np.concatenate([np.arange(len(train_labels)), np.arange(len(test_labels))]).astype(np.int64),
    )
    pool_labels = np.concatenate([train_labels, test_labels])
    per_class = DHN_QUERIES_PER_CLASS + DHN_TRAIN_PER_CLASS
    classes, counts = np.unique(pool_labels, return_counts=True)
    if counts.min() < per_class:
        raise ProtocolError(f"--protocol {protocol} needs {per_class} images of every class in train+test together")
    rng = np.random.default_rng(seed)
    queries, training = [], []
    for label in classes:
        of_class = rng.permutation(np.flatnonzero(pool_labels == label))
        queries.append(of_class[:DHN_QUERIES_PER_CLASS])
        training.append(of_class[DHN_QUERIES_PER_CLASS:per_class])
    queries, training = np.sort(np.concatenate(queries)), np.sort(np.concatenate(training))
    excluded = queries if protocol == "cifar10-1" else np.concatenate([queries, training])
    database = np.setdiff1d(np.arange(len(pool_labels)), excluded)
    return Split(protocol, train=pool.subset(training), database=pool.subset(database), queries=pool.subset(queries), top=DEFAULT_TOP[protocol])


# --- seeded draws ---------------------------------------------------------------------------------


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
    data.check_count("n", n, 1, len(labels))
    data.check_seed(seed)
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
    data.check_count("n_total", n_total, 0, None)
    data.check_seed(seed)
    if n is None or n == n_total:
        return np.arange(n_total, dtype=np.int64)
    data.check_count("n", n, 1, n_total)
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
    data.check_count("n_val", n_val, 1, len(labels) - 1)
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
    data.check_fraction("test_fraction", test_fraction)
    data.check_seed(seed)
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


# --- the run's split: the protocol, then the command line's --val-size, --train-size, --queries ---


def select_split(config, dataset):
    """Applies the config's protocol, then `--val-size`, `--train-size` and `--queries`, all seeded.

    Args:
        config: a run config (`options.resolve_args`): `protocol`, `seed`, `val_size`,
            `train_size` and `queries` are read.
        dataset: a `data.Dataset`.

    Returns:
        A `Split`. With `--val-size`, the queries are held out of the
        training split and the database is the rest of it: the test split is not
        looked at, which is how settings are chosen. The database comes in a
        seeded random order (see `shuffled`).
    """
    seed = config["seed"]
    labels = (dataset.y_train, dataset.y_test, getattr(dataset, "y_db", None))
    split = make_split(config["protocol"], labels, seed)
    if config["val_size"] is not None:
        split = _validation_split(split, labels, config["val_size"], seed)
    if config["train_size"] is not None:
        split = _smaller_training_set(split, dataset, config["train_size"], seed)
    if config["queries"] is not None:
        available = len(split.queries)
        if config["queries"] > available:
            source = "validation" if config["val_size"] else "test"
            raise ProtocolError(f"--queries must be at most {available} (the {source} split's size), got {config['queries']}")
        split.queries = split.queries.subset(draw_queries(available, config["queries"], seed))
    split.database = shuffled(split.database, seed)
    return split


def _validation_split(split, labels, val_size, seed):
    """Queries held out of the training items; the database and training set are the rest of them.

    `labels` holds one label array per source: a protocol that pools the
    splits (`dhn`) trains on test-split images too.
    """
    if val_size >= len(split.train):
        raise ProtocolError(f"--val-size must be below the {len(split.train)} training images, got {val_size}")
    rest, held_out = holdout_split(split.train.gather(labels), val_size, seed)
    remaining = split.train.subset(rest)
    return Split(split.protocol, train=remaining, database=remaining, queries=split.train.subset(held_out), top=split.top)


def _smaller_training_set(split, dataset, train_size, seed):
    """`--train-size`: a class-balanced draw of the training items, which is also the database."""
    if split.protocol not in ("dlbhc", "dbr"):
        raise ProtocolError(f"--train-size applies to the dlbhc and dbr protocols, not {split.protocol}, whose training set is fixed")
    num_classes = len(dataset.class_names)
    if train_size < num_classes:
        raise ProtocolError(f"--train-size must be at least the number of classes, {num_classes}, got {train_size}")
    if train_size > len(split.train):
        raise ProtocolError(f"--train-size must be at most {len(split.train)} (the training images available), got {train_size}")
    drawn = split.train.subset(_balanced(split.train.gather([dataset.y_train, None, None]), train_size, seed))
    return Split(split.protocol, train=drawn, database=drawn, queries=split.queries, top=split.top)


def _balanced(labels, n, seed):
    try:
        return balanced_subset(labels, n, seed)
    except ValueError as error:
        raise ProtocolError(f"--train-size: {error}") from None


def resolve_top(top, database_size, default):
    """The integer k to evaluate at, and a note for the user when the default had to be clipped.

    Args:
        top: `--top` as parsed: `None` (use `default`), `"all"` or an integer.
        database_size: number of database items.
        default: the protocol's own k, an integer or `"all"` (`Split.top`).
    """
    if top is None:
        top = default
        if top != "all" and database_size < top:
            return database_size, f"note: --top {top} clipped to the database size, {database_size}"
    if top == "all":
        return database_size, None
    if top > database_size:
        raise ProtocolError(f"--top must be at most the database size, {database_size}, got {top}")
    return top, None
