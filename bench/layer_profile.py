"""Where a training step spends its time: each layer's forward and backward pass alone, summed by layer type.

    python bench/layer_profile.py --recipe airbench             # width 64, batch 2,000, as retrieval.py builds it
    python bench/layer_profile.py --recipe airbench --precision mixed_bfloat16

builds the recipe's `speedrun` network with the `dlbhc` head (as `bench/step_bench.py` does), then
times, for every layer that computes, one forward pass and the gradient of its outputs' sum with
respect to its inputs and weights, on a batch of the input shape that layer sees in the network
(`--repeats` times after one warm-up; the median), outside `fit` and without XLA, as TensorFlow
runs a step on a CPU. It also times the optimiser's update of all weights. The sum over layers
is compared with the whole step (`step_bench.measure`), whose excess is what `fit` and the
joining of the layers cost. Prints a Markdown table by layer type, then one JSON line.
"""

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import options  # noqa: E402
import recipes  # noqa: E402
import step_bench  # noqa: E402

REPEATS = 3


def main(argv=None):
    parser = options.ArgumentParser(prog="layer_profile.py", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=(recipes.SPEEDRUN, recipes.AIRBENCH), default=recipes.AIRBENCH, help="the recipe whose network and batch are profiled (default: %(default)s)")
    parser.add_argument("--precision", choices=step_bench.PRECISIONS, default="float32", help="Keras's dtype policy (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timings per layer, after a warm-up (default: %(default)s)")
    parser.add_argument("--width", type=int, default=None, help="channels of the first block (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: the recipe's)")
    args = parser.parse_args(argv)
    for flag, value in (("--repeats", args.repeats), ("--width", args.width or 1), ("--batch-size", args.batch_size or 1)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    report = profile(args.recipe, args.precision, args.repeats, args.width, args.batch_size)
    print(table(report))
    print(json.dumps(report))
    return 0


def profile(recipe, precision, repeats, width=None, batch_size=None):
    """Seconds per layer type (forward + backward) and for the optimiser's update, at the recipe's batch."""
    import keras
    import tensorflow as tf

    import retrieval

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    settings = recipes.RECIPES[recipe]
    width, batch = width or settings["width"], batch_size or settings["batch_size"]
    config = {"arch": "speedrun", "method": "dlbhc", "bits": 48, "code_type": None, "width": width, "batch_size": batch}
    config = {**recipes.fill(config, recipe, colour=True, train_size=50_000), "epochs": 1}
    method = retrieval.method_for(config, step_bench.NUM_CLASSES)
    model = retrieval.compiled_model(config, method, step_bench.IMAGE_SHAPE, steps_per_epoch=10)
    seconds = defaultdict(float)
    for layer in model.layers:
        if not layer.weights and type(layer).__name__ in ("InputLayer", "Rescaling"):
            continue
        inputs = tf.random.uniform((batch, *layer.input.shape[1:]), 0, 255 if layer.input.dtype == "uint8" else 1.0)
        seconds[type(layer).__name__] += _median_seconds(lambda: _forward_backward(layer, inputs), repeats)
    gradients = [tf.random.normal(variable.shape) * 1e-3 for variable in model.trainable_variables]
    model.optimizer.build(model.trainable_variables)
    seconds["optimizer update"] = _median_seconds(lambda: model.optimizer.apply(gradients, model.trainable_variables), repeats)
    step = step_bench.measure(width, batch, 2, 48, "auto", recipe, precision=precision)
    return {"recipe": recipe, "precision": precision, "batch_size": batch, "width": width,
            "seconds_by_type": {name: round(value, 3) for name, value in seconds.items()},
            "step_seconds": round(step["seconds"] / step["batches"], 3)}


def _forward_backward(layer, inputs):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
        total = tf.reduce_sum(tf.cast(outputs, "float32"))
    tape.gradient(total, [inputs, *layer.trainable_weights])


def _median_seconds(function, repeats):
    function()  # warm-up: tracing and first allocations
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return float(np.median(timings))


def table(report):
    total = sum(report["seconds_by_type"].values())
    lines = [f"One step of the {report['recipe']} recipe's network, batch {report['batch_size']:,}, width {report['width']}, {report['precision']}:", "",
             "| layer type | seconds | share of the layers' sum |", "|---|---|---|"]
    for name, value in sorted(report["seconds_by_type"].items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {value:.3f} | {value / total:.0%} |")
    lines += [f"| all, one at a time | {total:.3f} | |", f"| the whole step under `fit` | {report['step_seconds']:.3f} | |"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
