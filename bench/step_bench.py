"""Training throughput of the speed-run network alone: images per second on random images, XLA on or off.

    python bench/step_bench.py                  # the default recipe's model, batch and step
    python bench/step_bench.py --jit-compile on --width 48 --batch-size 500
    python bench/step_bench.py --recipe airbench --batches 4   # airbench94_muon's port: width 64, Muon, batch 2,000
    python bench/step_bench.py --recipe airbench --batches 4 --pooling same --precision mixed_bfloat16 --feed train_on_batch

builds the `speedrun` network with the `dlbhc` head and the recipe's optimiser,
weight decay and augmentation (as `retrieval.py` compiles it), fits it on
`WARMUP_BATCHES` batches of random pixels to trace and compile, then times
`--batches` further batches. No data is read and nothing is scored: it isolates
the step's cost from the input pipeline and the host's data, so two settings
(XLA on or off, a width, a batch size) compare on equal terms. `--jit-compile
auto` is what `retrieval.py` gets: Keras turns XLA off for TensorFlow on a
machine without a GPU. Prints one JSON line.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import options  # noqa: E402  (after the path: the bench runs from anywhere)
import recipes  # noqa: E402
import vocabulary  # noqa: E402

WARMUP_BATCHES = 2
PRECISIONS = vocabulary.PRECISIONS
FEEDS = ("fit", "train_on_batch")
JIT_CHOICES = {"auto": "auto", "on": True, "off": False}
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
# The training-set size the recipe is filled for: full-scale CIFAR-10, the recipe's own settings.
CIFAR10_TRAINING_IMAGES = 50_000


def main(argv=None):
    parser = options.ArgumentParser(prog="step_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=(recipes.SPEEDRUN, recipes.AIRBENCH), default=recipes.SPEEDRUN, help="the recipe whose network, optimiser and batch are timed (default: %(default)s)")
    parser.add_argument("--width", type=int, default=None, help="channels of the first block (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default: the recipe's)")
    parser.add_argument("--batches", type=int, default=10, help="batches timed, after the warm-up (default: %(default)s)")
    parser.add_argument("--bits", type=int, default=48, help="code length (default: %(default)s)")
    parser.add_argument("--jit-compile", choices=tuple(JIT_CHOICES), default="auto", help="XLA compilation of the step (default: %(default)s, Keras's choice)")
    parser.add_argument("--pooling", choices=("same", "floor"), default=None, help="the speed-run network's pooling (default: the recipe's)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32", help="Keras's dtype policy (default: %(default)s)")
    parser.add_argument("--feed", choices=FEEDS, default="fit", help="one model.fit over the timed batches, or a train_on_batch loop (default: %(default)s)")
    args = parser.parse_args(argv)
    recipe = recipes.RECIPES[args.recipe]
    width = recipe["width"] if args.width is None else args.width
    batch_size = recipe["batch_size"] if args.batch_size is None else args.batch_size
    for flag, value in (("--width", width), ("--batch-size", batch_size), ("--batches", args.batches), ("--bits", args.bits)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    settings = {"pooling": args.pooling, "precision": args.precision, "feed": args.feed}
    print(json.dumps(measure(width, batch_size, args.batches, args.bits, JIT_CHOICES[args.jit_compile], args.recipe, **settings)))
    return 0


def measure(width, batch_size, batches, bits, jit_compile, recipe=recipes.SPEEDRUN, pooling=None, precision="float32", feed="fit"):
    """Builds and compiles the recipe's model as `retrieval.py` does, warms it up, and times `batches` training steps."""
    import keras

    import models
    import retrieval
    import train

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    config = {"arch": "speedrun", "method": "dlbhc", "bits": bits, "code_type": None, "width": width, "batch_size": batch_size, "pooling": pooling}
    config = recipes.fill(config, recipe, colour=True, train_size=CIFAR10_TRAINING_IMAGES)
    method = retrieval.method_for(config, NUM_CLASSES)
    total_steps = WARMUP_BATCHES + batches
    config["epochs"] = 1  # the schedule spans the steps run here
    model = retrieval.compiled_model(config, method, IMAGE_SHAPE, total_steps, jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (total_steps * batch_size, *IMAGE_SHAPE), dtype=np.uint8)
    targets = method.targets(rng.integers(0, NUM_CLASSES, len(images)))
    models.adapt_to_images(model, images)
    warmup = WARMUP_BATCHES * batch_size
    model.fit(images[:warmup], targets[:warmup], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    started = time.perf_counter()
    if feed == "fit":
        model.fit(images[warmup:], targets[warmup:], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    else:
        for start in range(warmup, len(images), batch_size):
            model.train_on_batch(images[start : start + batch_size], targets[start : start + batch_size])
    seconds = time.perf_counter() - started
    return {
        "device": train.device_description(), "recipe": recipe, "pooling": config["pooling"], "precision": precision, "feed": feed,
        "jit_compile": bool(model.jit_compile), "width": width, "batch_size": batch_size,
        "batches": batches, "seconds": round(seconds, 3), "images_per_second": round(batches * batch_size / seconds, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
