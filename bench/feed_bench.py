"""The pause at each epoch's end of TensorFlow's training feeds: Keras's own against this project's.

    python bench/feed_bench.py                      # 6 epochs of 20 steps, each step stretched to 1.5 s
    python bench/feed_bench.py --epochs 3 --sleep 0.5

On the TensorFlow backend, Keras feeds `fit` from a `tf.data` pipeline whose
prefetching is autotuned; when an epoch's iterator is destroyed, TensorFlow
waits for the autotuner's background thread to wake from a sleep that grows
as epochs lengthen, and the machine stands idle (docs/results.md, the idle
epochs). The pause shows only in long epochs, so this bench stretches each
step of a tiny model with a sleep (`--sleep` seconds, after the step) and
times every epoch, from one epoch's start to the next's, for each feed:

- `keras-pydataset`: a `batches.ClassBalancedBatches` (as `dnnh` trains on)
  handed to `fit` as it is, through Keras's own pipeline;
- `tensorflow_dataset`: the same through `batches.tensorflow_dataset`, as
  `train.fit_resumable` feeds it on TensorFlow;
- `keras-arrays`: arrays handed to `fit` with a batch size, through Keras's own pipeline;
- `tensorflow_batches`: the same arrays through `batches.tensorflow_batches`,
  as `devices.Placement.training_batches` feeds them on TensorFlow.

An epoch longer than `--steps` x `--sleep` by more than a fraction of a second
holds a pause. Runs on the TensorFlow backend only. Prints one JSON line.
"""

import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import batches  # noqa: E402  (after the path: the bench runs from anywhere)
import options  # noqa: E402

FEEDS = ("keras-pydataset", "tensorflow_dataset", "keras-arrays", "tensorflow_batches")
CLASSES, IMAGES_PER_CLASS, FEATURES = 10, 10, 8  # one P x K batch holds every class


def main(argv=None):
    parser = options.ArgumentParser(prog="feed_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per feed (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (default: %(default)s)")
    parser.add_argument("--sleep", type=float, default=1.5, help="seconds each step is stretched by (default: %(default)s)")
    parser.add_argument("--feeds", nargs="+", choices=FEEDS, default=list(FEEDS), help="feeds to time (default: all)")
    args = parser.parse_args(argv)
    for flag, value in (("--epochs", args.epochs), ("--steps", args.steps)):
        if value < 2:
            parser.error(f"{flag} must be at least 2, got {value}")
    if args.sleep < 0:
        parser.error(f"--sleep must be at least 0, got {args.sleep}")
    if keras.backend.backend() != "tensorflow":
        parser.error(f"the feeds timed here are TensorFlow's; this is the {keras.backend.backend()} backend")
    report = {"epochs": args.epochs, "steps": args.steps, "sleep": args.sleep, "step_seconds_slept": args.steps * args.sleep}
    report["epoch_seconds"] = {feed: epoch_seconds(feed, args.epochs, args.steps, args.sleep) for feed in args.feeds}
    print(json.dumps(report))
    return 0


def epoch_seconds(feed, epochs, steps, sleep):
    """Trains a tiny model on `feed` for `epochs` of `steps` steps, each followed by `sleep` s; returns each epoch's wall seconds."""
    labels = np.repeat(np.arange(CLASSES), steps * IMAGES_PER_CLASS)
    x = np.random.default_rng(0).random((len(labels), FEATURES), dtype="float32")
    y = keras.utils.to_categorical(labels, CLASSES)
    batch_size = CLASSES * IMAGES_PER_CLASS
    class_batches = batches.ClassBalancedBatches(x, y, labels, CLASSES, IMAGES_PER_CLASS, seed=0)
    fit_data = {
        "keras-pydataset": lambda: {"x": class_batches},
        "tensorflow_dataset": lambda: {"x": batches.tensorflow_dataset(class_batches)},
        "keras-arrays": lambda: {"x": x, "y": y, "batch_size": batch_size},
        "tensorflow_batches": lambda: {"x": batches.tensorflow_batches(x, y, batch_size, seed=0)},
    }[feed]()
    clock = EpochClock(sleep)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    model.fit(**fit_data, epochs=epochs, shuffle=False, verbose=0, callbacks=[class_batches.epoch_callback(), clock])
    return [round(seconds, 2) for seconds in clock.seconds]


class EpochClock(keras.callbacks.Callback):
    """Sleeps `sleep` s after each step; records each epoch's seconds from its start to the next one's (the last: to the end of `fit`)."""

    def __init__(self, sleep):
        super().__init__()
        self.sleep, self.seconds, self.started = sleep, [], None

    def on_epoch_begin(self, epoch, logs=None):
        self._lap()

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.sleep)

    def on_train_end(self, logs=None):
        self._lap()

    def _lap(self):
        now = time.perf_counter()
        if self.started is not None:
            self.seconds.append(now - self.started)
        self.started = now


if __name__ == "__main__":
    sys.exit(main())
