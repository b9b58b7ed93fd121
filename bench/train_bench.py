"""Training speed and quality per epoch: how long the recipe takes to reach mAP@1000 0.90, 0.92, 0.94.

    python bench/train_bench.py --data-dir ../shared/datasets/cifar10-jpeg.tar.gz -l 48 --eval-every 3

trains exactly what `retrieval.py` would with the same flags (any of its flags
may follow; by default the recipe `retrieval.py` picks) and, after every
epoch (or every `--eval-every` epochs), encodes the database and queries and scores mAP@1000 (with the run's
test-time augmentation, `--tta`). Per epoch it prints:

- the epoch's wall seconds of training, and images per second. The first
  epoch's first step (and its last, if smaller) holds the tracing and XLA
  compilation; their excess over the median step is reported as
  `compile_seconds` (and stays in the training time);
- test accuracy where the method has a classifier (`dlbhc`), and mAP@1000;
  neither's time counts as training time, and each is printed apart.

Before training it times the input pipeline alone: one epoch of shuffled
batches made as the run's `fit` gets them (gathered from host memory and
copied to the device; on one JAX GPU, gathered on the device, where the
training data is held). Its share of a training epoch is an upper bound of the
time a step waits for data: on a GPU, Keras fetches the next batch while the
current step runs. (Augmentation is inside the model, so it is step time.)

The last line is one JSON object: device, backend, recipe, the per-epoch
rows, the training seconds at which mAP@1000 first reached each of
`THRESHOLDS` (null if never), data loading, and the final encoding and
evaluation that `retrieval.py` reports in `metrics.json`.

Only the run's own queries are scored: by default the test split, which
the targets are stated on; choose settings with `--val-size N`, which
makes the queries N held-out training images instead.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import options  # noqa: E402
import protocols  # noqa: E402
import retrieval  # noqa: E402  (after the path: the bench runs from anywhere)
import rundir  # noqa: E402

THRESHOLDS = (0.90, 0.92, 0.94)
# A first-epoch step this many times the median step is taken to hold a compilation (the first
# step's, and a smaller last batch's), whose excess over the median is `compile_seconds`.
COMPILE_FACTOR = 5


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="train_bench.py", description=__doc__.splitlines()[0], epilog="Every other argument goes to retrieval.py (see python retrieval.py --help)."
    )
    parser.add_argument("--eval-every", type=int, default=1, help="score mAP@1000 after every N epochs, and after the last (default: 1)")
    parser.add_argument("--json", default=None, help="also write the final JSON object to this file")
    own, rest = parser.parse_known_args(argv)
    if own.eval_every < 1:
        parser.error(f"--eval-every must be at least 1, got {own.eval_every}")
    retrieval_parser = options.build_parser()
    retrieval_parser.prog = parser.prog  # its errors are this command's
    with tempfile.TemporaryDirectory() as scratch:
        args = retrieval_parser.parse_args([*rest, "-s", "0"] + ([] if "--out" in rest else ["--out", str(Path(scratch) / "run")]))
        if args.resume or args.model_from:
            parser.error(f"{'--resume' if args.resume else '--model-from'} does not apply: the benchmark times a whole training")
        if args.epochs is not None and args.epochs < 1:
            parser.error(f"--epochs must be at least 1 to time an epoch, got {args.epochs}")
        try:
            report = benchmark(retrieval.prepare(args), own.eval_every)
        except retrieval.USAGE_ERRORS as error:
            retrieval_parser.error(str(error))
    line = json.dumps(report)
    print(line)
    if own.json:
        Path(own.json).write_text(line + "\n")
    return 0


def benchmark(config, eval_every):
    """Loads the data, times the input pipeline, trains with an `EpochProbe`; returns the report."""
    started = time.perf_counter()
    arrays = retrieval.load_arrays(config)
    load_seconds = time.perf_counter() - started
    top = protocols.resolve_top(config["top"], len(arrays.db_y), arrays.split.top)[0]
    probe = epoch_probe(arrays, top, Path(config["out"]), eval_every)
    metrics = retrieval.run(config, verbose=0, callbacks=[probe])
    return {
        "device": metrics["device"],
        "backend": metrics["backend"],
        "recipe": metrics["recipe"],
        "jit_compile": metrics["jit_compile"],
        "precision_policy": metrics["precision_policy"],
        "bits": config["bits"],
        "num_train": metrics["num_train"],
        "num_queries": metrics["num_queries"],
        "num_database": metrics["num_database"],
        "query_source": metrics["query_source"],
        "input_seconds_per_epoch": round(probe.input_seconds, 3),
        "input_share_of_epoch": round(probe.input_seconds / np.median([row["train_seconds"] for row in probe.rows]), 4),
        "compile_seconds": round(probe.compile_seconds, 3),
        "train_seconds": round(probe.train_seconds, 3),
        "epochs": probe.rows,
        "seconds_to": {f"{threshold:.2f}": probe.first_reached(threshold) for threshold in THRESHOLDS},
        "data_seconds": round(load_seconds, 3),
        f"final_mAP@{top}": metrics[f"mAP@{top}"],
        "final_timings": metrics["timings"],
    }


def input_pipeline_seconds(x, y, batch_size, seed):
    """Seconds for one epoch of batches made as this run's `fit` gets them, and copied to the device, alone.

    On TensorFlow, the run's `tf.data` pipeline (`batches.tensorflow_batches`);
    on JAX, `batches.ShardedBatches` (`devices.Placement.training_batches`): a gather
    on the host, or on the device where it holds the data (one JAX GPU).
    """
    import keras

    import devices

    dataset, _ = devices.placement().training_batches(x, y, batch_size, seed)
    if hasattr(dataset, "__getitem__"):  # a PyDataset
        batches = (dataset[index] for index in range(len(dataset)))
    else:  # TensorFlow's tf.data pipeline (batches.tensorflow_batches)
        batches = iter(dataset)
    started = time.perf_counter()
    for batch in batches:
        for part in batch:
            tensor = keras.ops.convert_to_tensor(part)
            if hasattr(tensor, "block_until_ready"):  # JAX works asynchronously
                tensor.block_until_ready()
    return time.perf_counter() - started


def epoch_probe(arrays, top, out, eval_every):
    """A Keras callback that times each epoch and, outside that time, scores the codes after it.

    Built inside a function so that `--help` and bad flags never import Keras.

    Args:
        arrays: the run's `retrieval.Arrays`.
        top: k of mAP@k.
        out: the run folder (its `config.json`, written before training, has the
            recipe's settings: batch size, seed, TTA mode).
        eval_every: score after every this many epochs, and after the last.
    """
    import keras

    import evaluate
    import models

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.config = rundir.read_json(out / rundir.CONFIG_FILE)
            targets = retrieval.method_for(self.config, len(arrays.class_names)).targets(arrays.train_y)  # what fit is given
            self.input_seconds = input_pipeline_seconds(arrays.train_x, targets, self.config["batch_size"], self.config["seed"])
            self.rows, self.step_seconds, self.train_seconds = [], [], 0.0
            self.compile_seconds = 0.0
            self.scorer = models.scoring_model(self.model)  # built once: its predict step compiles once

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = self.step_started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.step_seconds.append(now - self.step_started)
            self.step_started = now

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.epoch_started
            if not self.rows:  # steps far slower than the typical one traced and compiled a step function
                typical = float(np.median(self.step_seconds))
                self.compile_seconds = sum(step - typical for step in self.step_seconds if step > COMPILE_FACTOR * typical)
            self.train_seconds += seconds
            row = {"epoch": epoch + 1, "train_seconds": round(seconds, 3), "images_per_second": round(len(arrays.train_y) / seconds, 1),
                   "cumulative_train_seconds": round(self.train_seconds, 3), "loss": float(logs["loss"])}
            if (epoch + 1) % eval_every == 0 or epoch + 1 == self.params["epochs"]:
                row.update(self.scores())
            self.rows.append(row)
            print(" ".join(f"{key} {value}" for key, value in row.items()), flush=True)

        def scores(self):
            started = time.perf_counter()
            db_latent, query_latent, accuracy = retrieval.encode_split(self.scorer, arrays.db_x, arrays.query_x, arrays.query_y, tta=self.config["tta"])
            result = evaluate.evaluate_retrieval(models.binarise(query_latent), arrays.query_y, models.binarise(db_latent), arrays.db_y, top)
            scores = {f"mAP@{top}": round(result["mAP"], 4)}
            if accuracy is not None:
                scores["accuracy"] = round(accuracy, 4)
            return {**scores, "eval_seconds": round(time.perf_counter() - started, 3)}

        def first_reached(self, threshold):
            """Training seconds (compilation included) when mAP@top first reached `threshold`, else None."""
            return next((row["cumulative_train_seconds"] for row in self.rows if row.get(f"mAP@{top}", 0.0) >= threshold), None)

    return Probe()


if __name__ == "__main__":
    sys.exit(main())
