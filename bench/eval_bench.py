"""Benchmark of retrieval evaluation: our Hamming search and metrics against NumPy and FAISS.

Measures, on random 48-bit codes and 48-d float features (10,000 queries x 50,000 database items,
10 random labels, top 1000, the sizes of the project's performance target: the whole evaluation
that `retrieval.run` does, rows (a) + (e), within about 15 s on a 2-core CPU, TensorFlow backend):

- (a) `evaluate.evaluate_retrieval` end to end: packing, the whole-database ranking, mAP@1000,
  precision@k, mAP@all and precision and recall within every Hamming radius;
- (b) `engines.BackendEngine.search` alone, k = 1000;
- (c) a plain NumPy reference (XOR, `np.bitwise_count`, stable argsort), timed on a subset of the
  queries and extrapolated, since it is slow;
- (d) `faiss.IndexBinaryFlat` search, k = 1000, on the same packed codes;
- (e) `evaluate.evaluate_features`: mAP@1000 of the float features by Euclidean distance;
- (f) `faiss.IndexFlatL2` search, k = 1000, on the same features.

It checks that (b), (c) and FAISS agree on the distances, that (b) and (c) agree on the ids (ties
to the lower index), how many ids FAISS shares with (b), how far the mAP moves when (a) ranks
through the FAISS index instead (any engine with `search(query_codes, k)` plugs in), that (a)'s
mAP@all matches the reference's on the subset, and how many ids `ExactEuclideanSearch` shares with
(f). Each timing is the best of `repeats` runs after a warm-up call (which traces and compiles the
tf.function); CPU seconds and the load average are printed too, since other processes on the
machine slow every row.

    python bench/eval_bench.py [--json results.json] [--backend tensorflow]
"""

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import options  # noqa: E402  (after the path: the bench runs from anywhere)

CONFIG = {
    "nq": 10_000,  # queries
    "ntotal": 50_000,  # database codes
    "bits": 48,  # code length L
    "feature_dim": 48,  # dimension of the float features of rows (e) and (f)
    "num_labels": 10,  # random integer labels 0..9
    "top": 1000,  # ranked list length for mAP@top and the k of every search
    "reference_queries": 500,  # queries the NumPy reference runs on; its time is scaled up to nq
    "repeats": 3,  # timed runs per row; the best is reported
    "seed": 0,
}


def parse_args():
    parser = options.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here. Defaults to none.")
    parser.add_argument(
        "--backend",
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="Keras backend for evaluate.py's kernels (jax is far slower: XLA's CPU top_k sorts "
        "whole rows). Defaults to $KERAS_BACKEND or tensorflow.",
    )
    return parser.parse_args()


def best_time(function, repeats):
    """Runs `function` once to warm up, then `repeats` times.

    Returns:
        Tuple `(wall seconds, CPU seconds, result)` of the run with the least wall time. CPU
        seconds add up all the process's threads: on a busy machine they move less than wall time.
    """
    result = function()
    times = []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        result = function()
        times.append((time.perf_counter() - wall_start, time.process_time() - cpu_start))
    wall, cpu = min(times)
    return wall, cpu, result


def numpy_reference_search(query_codes, db_codes, k):
    """XOR and popcount over uint64 words, then a stable argsort: ties to the lower index.

    The distances are summed into uint16, for which NumPy's stable sort is a radix sort.
    """
    padding = -query_codes.shape[1] % 8
    query_words = np.pad(query_codes, ((0, 0), (0, padding))).view(np.uint64)
    db_words = np.pad(db_codes, ((0, 0), (0, padding))).view(np.uint64)
    distances = np.bitwise_count(query_words[:, None, :] ^ db_words[None, :, :])
    distances = distances.sum(axis=-1, dtype=np.uint16)
    ids = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, ids, axis=1), ids


def versions():
    """Versions of the libraries measured."""
    import faiss
    import keras
    import tensorflow as tf

    found = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "faiss": faiss.__version__,
    }
    try:
        import jax

        found["jax"] = jax.__version__
    except ImportError:
        pass
    return found


def random_dataset(config):
    """Random 0/1 codes and integer labels: (query_bits, query_labels, db_bits, db_labels)."""
    rng = np.random.default_rng(config["seed"])
    return (
        rng.integers(0, 2, size=(config["nq"], config["bits"]), dtype=np.uint8),
        rng.integers(0, config["num_labels"], size=config["nq"]),
        rng.integers(0, 2, size=(config["ntotal"], config["bits"]), dtype=np.uint8),
        rng.integers(0, config["num_labels"], size=config["ntotal"]),
    )


def random_features(config):
    """Random float32 features in [0, 1), like sigmoid activations: (query, database)."""
    rng = np.random.default_rng(config["seed"] + 1)
    shape = (config["nq"] + config["ntotal"], config["feature_dim"])
    features = rng.random(shape, dtype=np.float32)
    return features[: config["nq"]], features[config["nq"]:]


def reference_map_all(query_codes, query_labels, db_codes, db_labels):
    """mAP over the whole database, (distance, id) order, one query at a time with NumPy."""
    distances, ids = numpy_reference_search(query_codes, db_codes, len(db_codes))
    average_precisions = []
    for query_label, ranked_ids in zip(query_labels, ids):
        relevant = db_labels[ranked_ids] == query_label
        hits = np.cumsum(relevant)
        ranks = np.arange(1, len(relevant) + 1)
        average_precisions.append((hits / ranks)[relevant].mean() if relevant.any() else 0.0)
    return float(np.mean(average_precisions))


def run_benchmark(config):
    """Times rows (a) to (d) and cross-checks them: (rows, metrics, checks)."""
    import faiss

    import engines
    import evaluate

    query_bits, query_labels, db_bits, db_labels = random_dataset(config)
    query_features, db_features = random_features(config)
    query_codes, db_codes = evaluate.pack_bits(query_bits), evaluate.pack_bits(db_bits)
    top, repeats, subset = config["top"], config["repeats"], config["reference_queries"]
    index = engines.BackendEngine(db_codes, CONFIG["bits"])
    faiss_index = faiss.IndexBinaryFlat(config["bits"])
    faiss_index.add(db_codes)

    evaluate_wall, evaluate_cpu, metrics = best_time(
        lambda: evaluate.evaluate_retrieval(query_bits, query_labels, db_bits, db_labels, top),
        repeats,
    )
    search_wall, search_cpu, (distances, ids) = best_time(
        lambda: index.search(query_codes, top), repeats
    )
    reference_wall, reference_cpu, (reference_distances, reference_ids) = best_time(
        lambda: numpy_reference_search(query_codes[:subset], db_codes, top), 1
    )
    faiss_wall, faiss_cpu, (faiss_distances, faiss_ids) = best_time(
        lambda: faiss_index.search(query_codes, top), repeats
    )
    faiss_metrics = evaluate.evaluate_retrieval(
        query_bits, query_labels, db_bits, db_labels, top, search=faiss_index
    )
    features_wall, features_cpu, features_metrics = best_time(
        lambda: evaluate.evaluate_features(
            query_features, query_labels, db_features, db_labels, top
        ),
        repeats,
    )
    faiss_float_index = faiss.IndexFlatL2(config["feature_dim"])
    faiss_float_index.add(db_features)
    faiss_float_wall, faiss_float_cpu, (_, faiss_float_ids) = best_time(
        lambda: faiss_float_index.search(query_features, top), repeats
    )
    _, float_ids = evaluate.ExactEuclideanSearch(db_features).search(query_features, top)
    subset_metrics = evaluate.evaluate_retrieval(
        query_bits[:subset], query_labels[:subset], db_bits, db_labels, top
    )

    scale = config["nq"] / subset
    rows = [
        ("(a) evaluate_retrieval, end to end", evaluate_wall, evaluate_cpu, ""),
        ("(b) BackendEngine.search", search_wall, search_cpu, ""),
        (
            "(c) NumPy XOR + bitwise_count + argsort",
            reference_wall * scale,
            reference_cpu * scale,
            f"extrapolated from {subset} queries ({reference_wall:.2f} s)",
        ),
        (
            "(d) faiss.IndexBinaryFlat.search",
            faiss_wall,
            faiss_cpu,
            f"{faiss.omp_get_max_threads()} OpenMP threads",
        ),
        ("(e) evaluate_features, float mAP", features_wall, features_cpu, ""),
        (
            "(f) faiss.IndexFlatL2.search",
            faiss_float_wall,
            faiss_float_cpu,
            f"{faiss.omp_get_max_threads()} OpenMP threads",
        ),
        (
            "(a) + (e): retrieval.run's evaluation",
            evaluate_wall + features_wall,
            evaluate_cpu + features_cpu,
            "",
        ),
    ]
    checks = {
        "distances (b) == faiss": bool(np.array_equal(distances, faiss_distances)),
        "distances (b) == numpy, subset": bool(
            np.array_equal(distances[:subset], reference_distances)
        ),
        "ids (b) == numpy, subset (ties to lower index)": bool(
            np.array_equal(ids[:subset], reference_ids)
        ),
        "ids (b) == faiss, fraction": float(np.mean(ids == faiss_ids)),
        "mAP (a) - mAP with search=faiss": metrics["mAP"] - faiss_metrics["mAP"],
        "mAP@all (a) - numpy reference, subset": subset_metrics["mAP_all"] - reference_map_all(
            query_codes[:subset], query_labels[:subset], db_codes, db_labels
        ),
        "float ids (e) == faiss IndexFlatL2, fraction": float(
            np.mean(float_ids == faiss_float_ids)
        ),
    }
    metrics = {**metrics, "float_mAP": features_metrics["mAP"]}
    return rows, metrics, checks


def main():
    args = parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import engines

    config = CONFIG
    rows, metrics, checks = run_benchmark(config)
    machine = {
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "platform": platform.platform(),
        "backend": keras.backend.backend(),
        "batch_elements": engines.BATCH_ELEMENTS,
    }

    print(f"{config['nq']} queries x {config['ntotal']} codes, {config['bits']} bits, "
          f"top={config['top']}")
    print(", ".join(f"{key}={value}" for key, value in {**machine, **versions()}.items()))
    print(f"\n{'':42} {'seconds':>8} {'CPU s':>6} {'queries/s':>10}  note")
    for name, seconds, cpu, note in rows:
        print(f"{name:42} {seconds:8.2f} {cpu:6.2f} {config['nq'] / seconds:10.0f}  {note}")
    print(f"\nmAP@{config['top']} = {metrics['mAP']:.5f}, "
          f"precision@{config['top']} = {metrics['precision']:.5f}, "
          f"mAP@all = {metrics['mAP_all']:.5f}, precision@r2 = {metrics['precision_r2']:.5f}, "
          f"float mAP@{config['top']} = {metrics['float_mAP']:.5f}")
    for name, value in checks.items():
        print(f"check: {name}: {value}")

    if args.json:
        results = {
            "config": config,
            "machine": machine,
            "versions": versions(),
            "seconds": {name: seconds for name, seconds, _, _ in rows},
            "cpu_seconds": {name: cpu for name, _, cpu, _ in rows},
            "metrics": {
                name: metrics[name]
                for name in (
                    "mAP", "precision", "mAP_all", "precision_r2", "recall_r2", "float_mAP"
                )
            },
            "checks": checks,
        }
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
