"""Protocols: split sizes, disjointness and determinism on CIFAR-10-shaped labels; the seeded draws."""

import types

import numpy as np
import pytest

import protocols

CIFAR_TRAIN = np.repeat(np.arange(10), 5000)
CIFAR_TEST = np.repeat(np.arange(10), 1000)


def pool_ids(items, train_size=len(CIFAR_TRAIN)):
    return items.positions + items.sources.astype(np.int64) * train_size


@pytest.mark.parametrize(
    "protocol, sizes, top",
    [
        ("dlbhc", (50000, 50000, 10000), 1000),
        ("dbr", (50000, 50000, 10000), 1000),
        ("dhn", (5000, 54000, 1000), "all"),
        ("cifar10-1", (5000, 59000, 1000), "all"),
        ("folder", (50000, 50000, 10000), "all"),
    ],
)
def test_cifar10_split_sizes(protocol, sizes, top):
    split = protocols.make_split(protocol, (CIFAR_TRAIN, CIFAR_TEST, None), seed=0)
    assert (len(split.train), len(split.database), len(split.queries)) == sizes
    assert split.top == top and split.protocol == protocol


@pytest.mark.parametrize("protocol", ["dhn", "cifar10-1"])
def test_dhn_splits_are_per_class_disjoint_and_seeded(protocol):
    split = protocols.make_split(protocol, (CIFAR_TRAIN, CIFAR_TEST, None), seed=0)
    pool_labels = np.concatenate([CIFAR_TRAIN, CIFAR_TEST])
    queries, train, database = pool_ids(split.queries), pool_ids(split.train), pool_ids(split.database)
    assert np.bincount(pool_labels[queries]).tolist() == [100] * 10
    assert np.bincount(pool_labels[train]).tolist() == [500] * 10
    assert not set(queries) & set(database)
    assert bool(set(train) & set(database)) == (protocol == "cifar10-1")
    assert len(set(queries) | set(database) | set(train)) == (60000 if protocol == "cifar10-1" else 60000)
    again = protocols.make_split(protocol, (CIFAR_TRAIN, CIFAR_TEST, None), seed=0)
    np.testing.assert_array_equal(pool_ids(again.queries), queries)
    other = protocols.make_split(protocol, (CIFAR_TRAIN, CIFAR_TEST, None), seed=1)
    assert not np.array_equal(pool_ids(other.queries), queries)


def test_list_protocols_use_the_database_list():
    train, test, database = np.zeros((30, 5)), np.zeros((10, 5)), np.zeros((70, 5))
    for protocol, top in (("nuswide", 5000), ("imagenet100", 1000), ("folder", "all")):
        split = protocols.make_split(protocol, (train, test, database), seed=0)
        assert (len(split.train), len(split.database), len(split.queries)) == (30, 70, 10)
        assert set(split.database.sources) == {2} and split.top == top


def test_items_gather_reads_each_source():
    items = protocols.Items(np.array([1, 0, 1], np.uint8), np.array([0, 2, 1]))
    gathered = items.gather([np.array([10, 11, 12]), np.array([20, 21]), None])
    assert gathered.tolist() == [20, 12, 21]


def test_bad_protocols():
    with pytest.raises(protocols.ProtocolError, match="protocol='x'"):
        protocols.make_split("x", (CIFAR_TRAIN, CIFAR_TEST, None), seed=0)
    with pytest.raises(protocols.ProtocolError, match="needs 600 images of every class"):
        protocols.make_split("dhn", (CIFAR_TRAIN[:500], CIFAR_TEST[:10], None), seed=0)
    with pytest.raises(protocols.ProtocolError, match="single-label"):
        protocols.make_split("dhn", (np.zeros((10, 3)), np.zeros((5, 3)), None), seed=0)


def test_default_protocols():
    assert protocols.default_protocol("cifar10") == "dlbhc"
    assert protocols.default_protocol("folder:/photos") == "folder"
    assert protocols.default_protocol("list:/nus") == "folder"


def test_shuffled_is_a_seeded_permutation():
    items = protocols.Items(np.zeros(100, np.uint8), np.arange(100))
    first, again = protocols.shuffled(items, seed=0), protocols.shuffled(items, seed=0)
    np.testing.assert_array_equal(first.positions, again.positions)
    assert sorted(first.positions) == list(range(100)) and not np.array_equal(first.positions, np.arange(100))
    assert not np.array_equal(protocols.shuffled(items, seed=1).positions, first.positions)


# --- seeded draws ----------------------------------------------------------------------------------------


LABELS = np.repeat(np.arange(4), [5, 6, 7, 8])  # classes of unequal size


def test_balanced_subset_is_balanced_and_seeded():
    picked = protocols.balanced_subset(LABELS, 10, seed=3)
    assert picked.dtype == np.int64 and np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(np.bincount(LABELS[picked]), [3, 3, 2, 2])  # remainder to the first classes
    np.testing.assert_array_equal(picked, protocols.balanced_subset(LABELS, 10, seed=3))
    assert not np.array_equal(picked, protocols.balanced_subset(LABELS, 10, seed=4))
    np.testing.assert_array_equal(np.bincount(LABELS[protocols.balanced_subset(LABELS, 3, seed=0)]), [1, 1, 1])


def test_balanced_subset_is_the_same_everywhere():
    # Pinned: numpy does not promise Generator streams across versions; this says when an upgrade moves them.
    np.testing.assert_array_equal(protocols.balanced_subset(LABELS, 4, seed=0), [4, 8, 14, 20])
    np.testing.assert_array_equal(protocols.draw_queries(1000, 3, seed=0), [511, 636, 848])
    np.testing.assert_array_equal(protocols.balanced_subset(LABELS, 10, seed=3),
                                  protocols.balanced_subset(list(LABELS), 10, seed=np.int64(3)))


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
        protocols.balanced_subset(**arguments)


def test_draw_queries():
    np.testing.assert_array_equal(protocols.draw_queries(5, None, seed=0), np.arange(5))
    np.testing.assert_array_equal(protocols.draw_queries(5, 5, seed=0), np.arange(5))
    drawn = protocols.draw_queries(100, 10, seed=1)
    assert drawn.dtype == np.int64 and len(set(drawn)) == 10 and np.all(np.diff(drawn) > 0)
    np.testing.assert_array_equal(drawn, protocols.draw_queries(100, 10, seed=1))
    assert not np.array_equal(drawn, protocols.draw_queries(100, 10, seed=2))
    with pytest.raises(ValueError, match="n must be an integer from 1 to 100. Received: n=101"):
        protocols.draw_queries(100, 101, seed=0)


def test_holdout_split():
    train_idx, val_idx = protocols.holdout_split(LABELS, 8, seed=5)
    np.testing.assert_array_equal(np.bincount(LABELS[val_idx]), [2, 2, 2, 2])
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(len(LABELS)))
    np.testing.assert_array_equal(val_idx, protocols.balanced_subset(LABELS, 8, seed=5))
    assert train_idx.dtype == np.int64
    with pytest.raises(ValueError, match="n_val must be an integer from 1 to 25. Received: n_val=26"):
        protocols.holdout_split(LABELS, 26, seed=0)


def test_stratified_split():
    labels = np.repeat([0, 1, 2], [3, 2, 10])
    train_idx, test_idx = protocols.stratified_split(labels, 0.01, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[test_idx]), [1, 1, 1])  # at least one test image each
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(15))
    _, test_idx = protocols.stratified_split(labels, 0.99, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[test_idx]), [2, 1, 9])  # at least one training image each
    # Pinned like balanced_subset: the same seed gives the same split on every machine.
    np.testing.assert_array_equal(protocols.stratified_split(labels, 0.2, seed=0)[1], [2, 4, 7, 9])
    with pytest.raises(ValueError, match="test_fraction must be a number above 0 and below 1. Received: test_fraction=1"):
        protocols.stratified_split(labels, 1, seed=0)
    with pytest.raises(ValueError, match="class 1 has 1"):
        protocols.stratified_split([0, 0, 1], 0.5, seed=0)


def test_balanced_subset_of_multi_hot_labels_is_uniform():
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [1, 0]])
    np.testing.assert_array_equal(protocols.balanced_subset(labels, 3, seed=1), protocols.draw_queries(5, 3, seed=1))
    train_idx, val_idx = protocols.holdout_split(labels, 2, seed=0)
    assert len(train_idx) == 3 and len(val_idx) == 2
    with pytest.raises(ValueError, match="labels must be a non-empty 1-D integer array or a 0/1 multi-hot matrix"):
        protocols.balanced_subset(labels * 2, 3, seed=0)


def test_validation_split_of_a_pooled_protocol_holds_out_training_items():
    """`--val-size` under `dhn`, whose training items come from both splits, draws its queries from them."""
    dataset = types.SimpleNamespace(y_train=CIFAR_TRAIN, y_test=CIFAR_TEST)
    config = {"protocol": "dhn", "seed": 0, "val_size": 1000, "train_size": None, "queries": None}
    split = protocols.select_split(config, dataset)
    full = protocols.make_split("dhn", (CIFAR_TRAIN, CIFAR_TEST, None), seed=0)
    assert (len(split.train), len(split.database), len(split.queries)) == (4000, 4000, 1000)
    assert set(split.queries.sources) == {0, 1}  # pooled: held-out images from both splits
    queries, training = set(pool_ids(split.queries)), set(pool_ids(split.train))
    assert not queries & training and queries | training == set(pool_ids(full.train))
    assert np.bincount(split.queries.gather([CIFAR_TRAIN, CIFAR_TEST, None])).tolist() == [100] * 10
