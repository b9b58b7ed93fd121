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


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tensorflow_dataset is the TensorFlow backend's feed")
def test_tensorflow_dataset_serves_a_pydatasets_batches_in_order_without_autotuning():
    labels = np.repeat(np.arange(4), 6)
    data = batches.ClassBalancedBatches(np.arange(24, dtype="float32")[:, None], labels, labels, 2, 3, seed=1)
    dataset = batches.tensorflow_dataset(data)
    assert dataset.options().autotune.enabled is False and int(dataset.cardinality()) == len(data) == 4

    def served():
        return [np.asarray(inputs)[:, 0].astype(int).tolist() for inputs, _ in dataset]

    assert served() == data.plan.tolist()
    data.set_epoch(3)  # what the epoch callback does: the next pass serves that epoch's batches
    assert served() == data.epoch_plan(3).tolist() != batches.ClassBalancedBatches(data.x, labels, labels, 2, 3, seed=1).plan.tolist()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TensorFlow feed of a PyDataset")
def test_fit_resumable_serves_each_epoch_its_own_class_batches_on_tensorflow(tmp_path, monkeypatch):
    import train

    labels = np.repeat(np.arange(4), 6)
    data = batches.ClassBalancedBatches(np.arange(24, dtype="float32")[:, None], keras.utils.to_categorical(labels, 4), labels, 2, 3, seed=1)
    served = []
    get_item = batches.ClassBalancedBatches.__getitem__
    monkeypatch.setattr(batches.ClassBalancedBatches, "__getitem__", lambda self, index: served.append((self.epoch, index)) or get_item(self, index))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(4, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    train.fit_resumable(model, data, epochs=3, backup_dir=tmp_path / "backup", verbose=0)
    # After one look at the first batch (the pipeline's shapes), every epoch reads its own batches once, in order.
    assert served == [(0, 0)] + [(epoch, index) for epoch in range(3) for index in range(4)]


def test_alternating_flip_mirrors_a_random_half_then_every_image_the_other_way_each_epoch():
    images = np.random.default_rng(0).integers(0, 255, (40, 4, 4, 3)).astype("uint8")
    feed = batches.ShardedBatches(images, np.arange(40), batch_size=8, replicas=1, seed=3, alternating_flip=True)

    def mirrored(epoch):
        feed.set_epoch(epoch)
        served = {}
        for index in range(len(feed)):
            x, y = feed[index]
            served.update((int(label), not np.array_equal(image, images[label])) for image, label in zip(x, y))
        assert all(np.array_equal(image[:, ::-1], images[label]) or np.array_equal(image, images[label]) for image, label in zip(*feed[0]))
        return np.array([served[label] for label in range(40)])

    first = mirrored(0)
    assert 10 < first.sum() < 30  # a random half
    np.testing.assert_array_equal(mirrored(1), ~first)
    np.testing.assert_array_equal(mirrored(2), first)
    np.testing.assert_array_equal(feed[0][0][0].shape, (4, 4, 3))
    assert not np.shares_memory(feed[0][0], images)  # the training arrays are never written
