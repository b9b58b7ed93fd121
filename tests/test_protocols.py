"""Protocols: split sizes, disjointness and determinism on CIFAR-10-shaped labels."""

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
