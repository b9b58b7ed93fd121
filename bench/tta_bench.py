"""What test-time augmentation buys a trained model: mAP under each mode, and its encoding cost.

    python bench/tta_bench.py runs/RUN [--val-size N]

re-encodes the run's database and queries with its `model.keras` under every
mode of `retrieval.py --tta` (none; flip, the mean of each image's and its
mirror image's latent activations; flip-shift, that mean also over copies
shifted by a pixel), and scores each by mAP@k and precision@k under the run's
own split. `--val-size N` scores held-out training images instead of the
run's queries, for a decision that must not look at the test queries. The run
is read as `retrieval.py --model-from RUN` reads it, so a split whose training
images are not exactly those the run trained on (a `--val-size` other than the
run's own) is refused with exit status 2: its queries could be trained images.
Prints one JSON line.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import options
import protocols
import retrieval  # noqa: E402  (after the path: the bench runs from anywhere)
import rundir  # noqa: E402
import vocabulary  # noqa: E402


def main(argv=None):
    parser = options.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run folder (config.json, model.keras, metrics.json)")
    parser.add_argument("--val-size", type=int, default=None, help="score N held-out training images instead of the run's queries (default: the run's own)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    needed = (rundir.CONFIG_FILE, rundir.MODEL_FILE, rundir.METRICS_FILE)
    if not all((run / name).is_file() for name in needed):
        parser.error(f"{run} is not a finished run: it needs {', '.join(needed)}")
    try:
        config = model_config(run, args.val_size)
        report = measure(config, run / rundir.MODEL_FILE)
    except retrieval.USAGE_ERRORS as error:
        parser.error(str(error))
    print(json.dumps(report))
    return 0


def model_config(run, val_size):
    """The config that re-encodes `run`'s model, as `retrieval.py --model-from` resolves it.

    The run's own queries and k, and `val_size` (None: the run's own) held-out
    queries; `retrieval.load_arrays` then refuses a split whose training images
    differ from the run's.
    """
    trained = rundir.read_json(run / rundir.CONFIG_FILE)
    flags = {"--val-size": trained["val_size"] if val_size is None else val_size, "--queries": trained["queries"], "--top": trained["top"]}
    argv = ["--model-from", str(run), *(token for flag, value in flags.items() if value is not None for token in (flag, str(value)))]
    return options.resolve_model_from(options.build_parser().parse_args(argv))


def measure(config, model_path):
    """Scores the model's codes under each TTA mode (`vocabulary.TTA_MODES`); returns the report."""
    import keras

    import evaluate
    import methods  # noqa: F401  (registers the losses a saved model may name)
    import models
    import train  # noqa: F401  (registers the optimisers)

    arrays = retrieval.load_arrays(config)
    if arrays.train_x.shape[-1] != 3:
        raise options.UsageError("test-time augmentation applies to colour images only; this run's are grey")
    top = protocols.resolve_top(config.get("top"), len(arrays.db_y), arrays.split.top)[0]
    scorer = models.scoring_model(keras.saving.load_model(model_path))
    report = {"model": str(model_path), "num_queries": len(arrays.query_y), "num_database": len(arrays.db_y),
              "query_source": "validation" if config.get("val_size") else "test"}
    for tta in vocabulary.TTA_MODES:
        started = time.perf_counter()
        db_latent, query_latent, accuracy = retrieval.encode_split(scorer, arrays.db_x, arrays.query_x, arrays.query_y, tta=tta)
        encode_seconds = time.perf_counter() - started
        scores = evaluate.evaluate_retrieval(models.binarise(query_latent), arrays.query_y, models.binarise(db_latent), arrays.db_y, top)
        report[tta] = {
            f"mAP@{top}": round(scores["mAP"], 4), f"precision@{top}": round(scores["precision"], 4),
            **({"accuracy": round(accuracy, 4)} if accuracy is not None else {}), "encode_seconds": round(encode_seconds, 1),
        }
    return report


if __name__ == "__main__":
    sys.exit(main())
