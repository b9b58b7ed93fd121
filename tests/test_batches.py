"""Tests for batches.py: seeded batches of P classes x K images, and the TensorFlow array pipeline."""

import keras
import numpy as np
import pytest

import batches


def test_class_balanced_batches_hold_p_classes_of_k_images():
    labels = np.repeat(np.arange(6), [10, 10, 12, 8, 9, 11])  # 60 images, uneven classes
    x = np.arange(60)[:, None]
    data = batches.ClassBalancedBatches(x, labels * 10, labels, classes_per_batch=3, images_per_class=4, seed=5)
    assert len(data) == 60 // 12 == 5
    for index in range(len(data)):
        batch_x, batch_y = data[index]
        assert batch_x.shape == (12, 1)
        np.testing.assert_array_equal(batch_y, labels[batch_x[:, 0]] * 10)  # targets travel with their images
        blocks = labels[batch_x[:, 0]].reshape(3, 4)
        assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0])) == 3  # 3 distinct classes x 4
        assert len(set(batch_x[:, 0])) == 12


def test_class_balanced_batches_are_seeded_per_epoch():
    labels = np.repeat(np.arange(5), 8)
    make = lambda seed: batches.ClassBalancedBatches(np.zeros(40), labels, labels, 2, 4, seed=seed)
    first, again, other = make(0), make(0), make(1)
    np.testing.assert_array_equal(first.plan, again.plan)
    assert not np.array_equal(first.plan, other.plan)
    epoch_0 = first.plan.copy()
    first.set_epoch(1)
    assert not np.array_equal(first.plan, epoch_0)
    again.set_epoch(1)
    np.testing.assert_array_equal(first.plan, again.plan)
    first.set_epoch(0)
    np.testing.assert_array_equal(first.plan, epoch_0)


def test_an_image_recurs_only_after_its_whole_class():
    labels = np.repeat(np.arange(4), 12)
    data = batches.ClassBalancedBatches(np.zeros(48), labels, labels, 2, 3, seed=2)
    drawn = data.plan.ravel()
    for label in range(4):
        in_class = drawn[labels[drawn] == label]
        first_pass = in_class[:12]
        assert len(set(first_pass)) == len(first_pass)


def test_class_balanced_batches_check_their_sizes():
    labels = np.repeat(np.arange(3), [5, 5, 2])
    with pytest.raises(ValueError, match="at most the 3 classes present. Received: classes_per_batch=4"):
        batches.ClassBalancedBatches(np.zeros(12), labels, labels, 4, 2)
    with pytest.raises(ValueError, match=r"smallest class's 2 images \(class 2\). Received: images_per_class=3"):
        batches.ClassBalancedBatches(np.zeros(12), labels, labels, 2, 3)
    with pytest.raises(ValueError, match="Received: images_per_class=1"):
        batches.ClassBalancedBatches(np.zeros(12), labels, labels, 2, 1)
    with pytest.raises(ValueError, match="2 multi-hot rows without any label"):
        batches.primary_labels(np.array([[1, 0], [0, 0], [0, 0]]))
    np.testing.assert_array_equal(batches.primary_labels(np.array([[0, 1, 1], [1, 0, 1]])), [1, 0])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tensorflow_batches is the TensorFlow backend's pipeline")
def test_tensorflow_batches_pass_over_every_item_once_an_epoch_in_a_new_seeded_order():
    x = np.arange(25, dtype="float32")[:, None] * np.ones((1, 3), "float32")
    y = np.arange(25)
    dataset = batches.tensorflow_batches(x, y, batch_size=10, seed=4)
    assert dataset.options().autotune.enabled is False

    def epoch(data):
        parts = [(np.asarray(inputs), np.asarray(targets)) for inputs, targets in data]
        assert [len(targets) for _, targets in parts] == [10, 10, 5]
        inputs, targets = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        np.testing.assert_array_equal(inputs[:, 0], targets)  # rows stay with their targets
        return targets.tolist()

    first, second = epoch(dataset), epoch(dataset)
    assert sorted(first) == sorted(second) == list(range(25)) and first != second
    assert epoch(batches.tensorflow_batches(x, y, batch_size=10, seed=4)) == first
    third = epoch(dataset)
    # A run resumed after two epochs goes on with the third epoch's order, not the first's.
    assert epoch(batches.tensorflow_batches(x, y, batch_size=10, seed=4, first_epoch=2)) == third
