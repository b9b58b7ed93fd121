"""Seeded batches for `fit`: P classes x K images each (`ClassBalancedBatches`), one
process's share of data-parallel global batches (`ShardedBatches`, see devices.py);
and for TensorFlow, feeds without its autotuning stalls: shuffled array batches
(`tensorflow_batches`) and a `PyDataset` of this module (`tensorflow_dataset`).

A triplet loss learns nothing from a batch in which no two images share a class
(no positive) or all do (no negative). `ClassBalancedBatches` feeds `model.fit`
batches of exactly `classes_per_batch` (P) distinct classes with
`images_per_class` (K) images each, so every batch of `P * K` images holds
`P * K * (K - 1) * (P - 1) * K` valid triplets.

An epoch is `len(x) // (P * K)` batches (at least 1), so it shows about as many
images as one pass over the data. Each batch draws its P classes without
replacement, with probabilities proportional to the classes' sizes, and takes
the next K images of each drawn class from a per-class shuffled queue that is
reshuffled when fewer than K remain; so within an epoch an image recurs only
after its whole class has been seen. Everything is drawn from
`numpy.random.default_rng([seed, epoch])`: the same seed gives the same batches
on every machine, and a resumed run gets the batches an uninterrupted run would
have had. `fit` tells the data set its epoch through `epoch_callback()`
(`train.fit_resumable` adds it): Keras's own `PyDataset.on_epoch_begin/end`
hooks are also called while it builds the model, differently per backend, so
counting them would drift.

Example:

>>> import numpy as np
>>> labels = np.repeat(np.arange(5), 6)
>>> batches = ClassBalancedBatches(np.zeros((30, 2)), labels, labels, classes_per_batch=3, images_per_class=2)
>>> len(batches), batches[0][0].shape
(5, (6, 2))
"""

import keras
import numpy as np

# Batches `tensorflow_batches` prepares ahead of the training step.
PREFETCH_BATCHES = 2
# The second key of the random stream that picks the images an alternating flip mirrors first.
FLIP_STREAM = 1_000_003


def primary_labels(labels):
    """The class that groups an image: its integer label, or the first label of a multi-hot row.

    Args:
        labels: integer labels `[n]` or a 0/1 multi-hot matrix `[n, num_classes]`.

    Returns:
        int64 array `[n]`.
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    has_label = labels.any(axis=1)
    if not has_label.all():
        raise ValueError(
            f"Every image needs at least one label to be batched by class. "
            f"Received: {int((~has_label).sum())} multi-hot rows without any label"
        )
    return np.argmax(labels, axis=1).astype(np.int64)


def steps_per_epoch(num_images, classes_per_batch, images_per_class):
    """Batches in one epoch: `num_images // (P * K)`, at least 1."""
    return max(1, num_images // (classes_per_batch * images_per_class))


class ClassBalancedBatches(keras.utils.PyDataset):
    """A seeded `PyDataset` of batches of P distinct classes x K images of each.

    Args:
        x: inputs, an array `[n, ...]` indexed along its first axis.
        y: targets, an array `[n, ...]` (what the loss receives as `y_true`).
        labels: integer class labels `[n]`, or multi-hot `[n, num_classes]`
            (an image is then grouped under its first label; the loss still
            sees all of them through `y`).
        classes_per_batch: P, distinct classes per batch, 2 or more and at most
            the number of classes present.
        images_per_class: K, images of each class per batch, 2 or more and at
            most the size of the smallest class.
        seed: seed of every draw. Defaults to 0.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).

    Each item is `(x[batch], y[batch])` with the batch's `P * K` rows in class
    blocks of K; `len()` is `steps_per_epoch(n, P, K)`.
    """

    def __init__(self, x, y, labels, classes_per_batch, images_per_class, seed=0, **kwargs):
        super().__init__(**kwargs)
        if len(x) != len(y) or len(x) != len(labels):
            raise ValueError(
                f"`x`, `y` and `labels` must have the same length. "
                f"Received: len(x)={len(x)}, len(y)={len(y)}, len(labels)={len(labels)}"
            )
        groups = primary_labels(labels)
        classes, sizes = np.unique(groups, return_counts=True)
        if not 2 <= classes_per_batch <= len(classes):
            raise ValueError(
                f"`classes_per_batch` must be at least 2 and at most the {len(classes)} classes present. "
                f"Received: classes_per_batch={classes_per_batch}"
            )
        if not 2 <= images_per_class <= sizes.min():
            raise ValueError(
                f"`images_per_class` must be at least 2 and at most the smallest class's "
                f"{sizes.min()} images (class {classes[np.argmin(sizes)]}). Received: images_per_class={images_per_class}"
            )
        self.x, self.y = x, y
        self.classes_per_batch, self.images_per_class = classes_per_batch, images_per_class
        self.seed = seed
        self.epoch = 0
        self.class_members = [np.flatnonzero(groups == label) for label in classes]
        self.class_weights = sizes / sizes.sum()
        self.num_steps = steps_per_epoch(len(x), classes_per_batch, images_per_class)
        self.plan = self.epoch_plan(self.epoch)

    def epoch_plan(self, epoch):
        """The `[steps, P * K]` image indices of every batch of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        queues = [rng.permutation(members) for members in self.class_members]
        positions = [0] * len(queues)
        plan = np.empty((self.num_steps, self.classes_per_batch * self.images_per_class), dtype=np.int64)
        for step in range(self.num_steps):
            drawn = rng.choice(len(queues), size=self.classes_per_batch, replace=False, p=self.class_weights)
            blocks = []
            for class_index in drawn:
                if positions[class_index] + self.images_per_class > len(queues[class_index]):
                    queues[class_index] = rng.permutation(self.class_members[class_index])
                    positions[class_index] = 0
                start = positions[class_index]
                blocks.append(queues[class_index][start : start + self.images_per_class])
                positions[class_index] = start + self.images_per_class
            plan[step] = np.concatenate(blocks)
        return plan

    def __len__(self):
        return self.num_steps

    def __getitem__(self, index):
        batch = self.plan[index]
        return self.x[batch], self.y[batch]

    def set_epoch(self, epoch):
        """Serves the batches of `epoch` from now on."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.plan = self.epoch_plan(epoch)

    def epoch_callback(self):
        """A Keras callback that calls `set_epoch` at the start of every epoch of `fit`."""
        return _SetEpoch(self)


class ShardedBatches(keras.utils.PyDataset):
    """One process's share of seeded global batches of `batch_size` images, for training on JAX.

    On one device (one process, `replicas=1`) the share is the whole batch.

    Every process draws the same permutation of the training images per epoch
    (`numpy.random.default_rng([seed, epoch])`, so a resumed run sees the
    batches an uninterrupted one would have), cuts it into global batches and
    keeps the `process_id`-th of `num_processes` equal slices of each, which is
    the share of the global batch that JAX places on this process's devices.
    The last, smaller batch is cut to a multiple of `replicas` (each device
    needs an equal share): at most `replicas - 1` images, different ones every
    epoch, are left out of an epoch.

    With `alternating_flip`, the images (colour, `[n, h, w, c]`) are mirrored
    as airbench does: a seeded random half of them from the first epoch, and
    every image's mirroring reversed in each odd epoch, so each image is seen
    mirrored and plain in turn rather than at random.

    Args:
        x, y: training inputs and targets, the same arrays in every process.
        batch_size: the global batch, a multiple of `replicas`.
        replicas: devices of all processes together.
        num_processes: processes feeding the devices. Defaults to 1.
        process_id: which of them this is. Defaults to 0.
        seed: seed of the shuffles. Defaults to 0.
        alternating_flip: mirror the images in alternation (above). Defaults to `False`.
    """

    def __init__(self, x, y, batch_size, replicas, num_processes=1, process_id=0, seed=0, alternating_flip=False):
        super().__init__()
        if batch_size % replicas or replicas % num_processes:
            raise ValueError(
                f"`batch_size` must be a multiple of `replicas`, and `replicas` of `num_processes`. "
                f"Received: batch_size={batch_size}, replicas={replicas}, num_processes={num_processes}"
            )
        self.x, self.y, self.batch_size = x, y, batch_size
        self.num_processes, self.process_id, self.seed = num_processes, process_id, seed
        last = len(x) % batch_size // replicas * replicas
        self.sizes = [batch_size] * (len(x) // batch_size) + ([last] if last else [])
        self.epoch, self.order = 0, self._order(0)
        self.mirrored_first = np.random.default_rng([seed, FLIP_STREAM]).random(len(x)) < 0.5 if alternating_flip else None

    def _order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        share = self.sizes[index] // self.num_processes
        start = index * self.batch_size + self.process_id * share
        rows = self.order[start : start + share]
        if self.mirrored_first is None:
            return self.x[rows], self.y[rows]
        images = self.x[rows]
        mirrored = self.mirrored_first[rows] != bool(self.epoch % 2)
        images[mirrored] = images[mirrored][:, :, ::-1]
        return images, self.y[rows]

    def set_epoch(self, epoch):
        """Serves the batches of `epoch` from now on."""
        if epoch != self.epoch:
            self.epoch, self.order = epoch, self._order(epoch)

    def epoch_callback(self):
        """A Keras callback that calls `set_epoch` at the start of every epoch of `fit`."""
        return _SetEpoch(self)


class _SetEpoch(keras.callbacks.Callback):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)


def tensorflow_batches(x, y, batch_size, seed, first_epoch=0):
    """Shuffled batches of arrays for TensorFlow's `fit`, as a `tf.data.Dataset` with autotuning off.

    Given plain arrays, Keras's TensorFlow trainer builds a `tf.data` pipeline
    whose prefetching is autotuned, and makes a new iterator each epoch. When
    the old one is destroyed, TensorFlow 2.21 waits for the autotuner's
    background thread to wake from its sleep, which grows towards a minute as
    epochs lengthen: on the 2-core CPU a full CIFAR-10 run stood idle about 50 s
    in many epochs (the process's threads all waiting on that destructor). With
    autotuning off and a fixed prefetch there is no such thread. Each epoch is
    one pass over the data in a new seeded order, the last batch possibly
    smaller, as `fit` gives arrays; a resumed run's epochs take the orders
    an uninterrupted run would have taken in them.

    Args:
        x: training inputs `[n, ...]`.
        y: training targets `[n, ...]`.
        batch_size: examples per batch.
        seed: seed of the shuffling (each epoch is reshuffled from it).
        first_epoch: epochs already trained (a resumed run). Defaults to 0.

    Returns:
        A `tf.data.Dataset` of `(inputs, targets)` batches.
    """
    import tensorflow as tf

    with tf.device("CPU:0"):  # tf.data runs on the host: keep the arrays there, also on a GPU machine
        inputs, targets = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    order = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    for _ in range(first_epoch):  # each new iterator draws the next epoch's order; it shuffles only when read
        iter(order)
    return _without_autotuning(order.batch(batch_size).map(lambda index: (tf.gather(inputs, index), tf.gather(targets, index))))


def tensorflow_dataset(batches):
    """A `PyDataset` of this module (its `epoch_callback` sets the epoch it serves) as a `tf.data.Dataset` for TensorFlow's `fit`.

    Keras feeds a `PyDataset` to TensorFlow through a `tf.data` pipeline with
    autotuned prefetching, whose iterator can stall the end of an epoch as
    `tensorflow_batches` describes. This pipeline asks `batches` for its items
    in order, from a new Python generator each epoch (after the epoch callback
    has run), with autotuning off.
    """
    import tensorflow as tf

    signature = tuple(tf.TensorSpec((None, *part.shape[1:]), tf.as_dtype(part.dtype)) for part in batches[0])
    dataset = tf.data.Dataset.from_generator(lambda: (batches[index] for index in range(len(batches))), output_signature=signature)
    return _without_autotuning(dataset.apply(tf.data.experimental.assert_cardinality(len(batches))))


def _without_autotuning(dataset):
    """`dataset` prefetching `PREFETCH_BATCHES` batches, with `tf.data`'s autotuning (and its background thread) off."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)
