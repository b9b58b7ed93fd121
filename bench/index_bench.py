"""Benchmark of the index file and of `search.py query`: size, open + first query, query by image, re-ranking.

    python bench/index_bench.py --json bench/results/index_bench.json \\
        --model /tmp/runs/full48/model.keras --data-dir ../shared/datasets/cifar10-jpeg.tar.gz \\
        --index /tmp/index_bench/cifar10_train_latent.h5 --rerank --rerank-n 1000,5000 \\
        --penultimate-index /tmp/index_bench/cifar10_train_penultimate.h5
    python bench/index_bench.py --sizes 10000 --command-runs 1          # quick: the random index only

Three measurements, each against its target:

1. Random index (`--sizes`, default 1M; `--bits`, default 64): random codes written with
   `index.write_index` (ids `item/<n>`). Reports the file size on disk and the bytes of its `codes`
   dataset (target <= 10 MB). Open + first query, k = 10 (target < 1 s), two ways:
   - in-process: `search.main(["query", "--index", IDX, "--query-id", ID])`, i.e. `read_index`, the
     id lookup, the `exact` engine, the search and the printed table, after the modules are imported
     (the imports are start-up, not opening); a separate pass times its parts: read / id lookup /
     engine + search;
   - the whole command `python search.py query --index IDX --query-id ID` in a subprocess, wall time:
     it includes the Python interpreter's start-up and the imports of NumPy, h5py and PIL;
     `imports_keras` says whether Keras or TensorFlow were imported too (read from a separate
     `python -X importtime` run of the same command).
   Both run with the file just written, so in the OS page cache. The first query's top result must
   be the queried item itself, at distance 0 (`first_result_ok`).
2. Query by image (`--model MODEL.keras --data-dir CIFAR`; skipped with a note without them): the
   CIFAR-10 train split index is built by
   `python search.py encode --model MODEL --dataset cifar10 --data-dir DIR --split train --out IDX --features latent`
   (or reused with `--index IDX` when that file exists). 21 seeded test images are saved as PNG
   files; each is queried with `search.main(["query", "--index", IDX, "--model", MODEL, PNG, "-k",
   "10"])` in-process, with the model loaded once beforehand (search.py's loader is wrapped to hand
   back the loaded model), so a figure is what `query` does minus start-up: read the index, check
   the fingerprint, decode the file, encode it, search, print the table. The first query is
   reported alone (`first_ms`: graph tracing); median and p90 over the other 20 (target < 100 ms).
3. `--rerank`: 1,000 seeded test images encoded as image queries are (`search._encode_queries`,
   codes and the index's stored feature layer). Per query, the exact engine's Hamming top-N
   (N = `--rerank-n`, default 1000) and then `search._rerank` (the `query --rerank N` path: the N
   candidates' stored float16 features, ordered by Euclidean distance) keeping
   the top 1000. mAP@1000 (DLBHC's, `evaluate._metric_sums`) of both lists; the added time is the
   `_rerank` call per query. Items at equal Hamming distance are ranked by position, so the
   database order moves the Hamming mAP: `encode --dataset` stores the split in a seeded random
   order (`stored`, what `search.py` returns on this file), and the same database in a second
   seeded order (`shuffled`, features in memory) shows how much another order moves it. Only the
   stored rows time what `query --rerank` costs through `index.Index` (`features_read_from`:
   `index`, which reads small feature sets whole on first use: `rerank_added_ms_first_query`
   holds that read); the shuffled rows' times are of a permuted copy already in memory.
   `check_mAP_evaluate_retrieval` is `evaluate.evaluate_retrieval`'s mAP@1000 of the stored order,
   which must equal the Hamming mAP here. With `--penultimate-index IDX` the same is measured on a
   second index whose stored features are the layer before the latent one (`encode --features
   penultimate`, built there when missing): `rerank_penultimate`.

Prints a table and one JSON line; `--json FILE` saves everything, with the load average per section.
"""

import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import options  # noqa: E402  (after the path: the bench runs from anywhere)

SEARCH_PY = REPO_ROOT / "search.py"
DEFAULT_SIZES = [1_000_000]
DEFAULT_BITS = 64
FIRST_QUERY_K = 10
COMMAND_RUNS = 3  # subprocess runs of the whole command
IN_PROCESS_RUNS = 3  # in-process open + first query runs (the first is reported alone too)
IMAGE_QUERIES = 20  # timed image queries, after one untimed-in-the-median first query
IMAGE_K = 10
RERANK_QUERIES = 1000
RERANK_TOP = 1000  # mAP@RERANK_TOP
RERANK_N = [1000]
QUERY_ENCODE_BATCH = 250
SEED = 0
TARGETS = {"codes_mb": 10.0, "open_first_query_s": 1.0, "image_query_ms": 100.0}
ENCODE_FEATURES = "latent"
CIFAR10_TEST_IMAGES = 10_000


def parse_args(argv=None):
    parser = options.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated random index sizes. Defaults to 1000000.")
    parser.add_argument("--bits", type=int, default=DEFAULT_BITS, help="bits of the random codes. Defaults to 64.")
    parser.add_argument("--command-runs", type=int, default=COMMAND_RUNS, help="subprocess runs of the whole query command; 0 for none. Defaults to 3.")
    parser.add_argument("--model", type=Path, help="a trained model.keras for the CIFAR-10 measurements. Defaults to none (skipped).")
    parser.add_argument("--data-dir", type=Path, help="the offline CIFAR-10 copy (cifar10-jpeg.tar.gz). Defaults to none (skipped).")
    parser.add_argument("--index", type=Path, help="the CIFAR-10 train index: reused when it exists, else written there. Defaults to a temporary file.")
    parser.add_argument("--penultimate-index", type=Path, help="--rerank on this index too, of `encode --features penultimate` (reused when it exists, else written there). Defaults to none.")
    parser.add_argument("--rerank", action="store_true", help="measure re-ranking too (needs --model and --data-dir).")
    parser.add_argument("--rerank-n", default=",".join(map(str, RERANK_N)), help="comma-separated Hamming candidates N >= 1000. Defaults to 1000.")
    parser.add_argument("--rerank-queries", type=int, default=RERANK_QUERIES, help="Defaults to 1000.")
    parser.add_argument("--workdir", type=Path, help="folder for the random index and query images. Defaults to a temporary folder, removed.")
    parser.add_argument("--json", type=Path, help="write the results here. Defaults to none.")
    args = parser.parse_args(argv)
    args.sizes, args.rerank_n = _positive_list(parser, "--sizes", args.sizes), _positive_list(parser, "--rerank-n", args.rerank_n)
    if any(n < RERANK_TOP for n in args.rerank_n):
        parser.error(f"--rerank-n must be at least {RERANK_TOP}, got {args.rerank_n}")
    if not 1 <= args.rerank_queries <= CIFAR10_TEST_IMAGES:
        parser.error(f"--rerank-queries must be between 1 and {CIFAR10_TEST_IMAGES}, got {args.rerank_queries}")
    for flag, value, smallest in (("--bits", args.bits, 1), ("--command-runs", args.command_runs, 0)):
        if value < smallest:
            parser.error(f"{flag} must be at least {smallest}, got {value}")
    return args


def _positive_list(parser, flag, text):
    """Comma-separated positive integers, or a `parser.error` naming `flag`."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        parser.error(f"{flag} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        parser.error(f"{flag} must be comma-separated positive integers, got {text!r}")
    return values


def load_average():
    return round(os.getloadavg()[0], 2)


def run_query_in_process(argv):
    """`search.main(argv)` with its printed output captured; returns (seconds, printed text)."""
    import search

    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        status = search.main(argv)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"search.py {' '.join(argv)} exited with {status}")
    return seconds, buffer.getvalue()


# --- 1. random index ---------------------------------------------------------------------------------------


def write_random_index(path, ntotal, bits, seed=SEED):
    """Writes `ntotal` random `bits`-bit codes with ids `item/<n>`; returns (codes, write seconds)."""
    import index as index_file

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(ntotal, -(-bits // 8)), dtype=np.uint8)
    if bits % 8:
        codes[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)  # pack_bits leaves the padding bits clear
    ids = [f"item/{position}" for position in range(ntotal)]
    start = time.perf_counter()
    index_file.write_index(path, codes, ids, bits, "random", attrs={"source": "folder", "root": "/random"})
    return codes, time.perf_counter() - start


def dataset_storage_bytes(path, name):
    import h5py

    with h5py.File(path, "r") as file:
        return int(file[name].id.get_storage_size())


def first_result(table_text):
    """(id, distance) of the first result row of `search.py query`'s table."""
    rows = [line.split() for line in table_text.splitlines()[2:] if line.strip()]
    return rows[0][2], int(rows[0][1])


def in_process_open_and_query(path, query_id):
    """One open + first query, whole (`search.main`) and split into its parts; seconds."""
    import index as index_file
    import search

    seconds, text = run_query_in_process(["query", "--index", str(path), "--query-id", query_id, "-k", str(FIRST_QUERY_K)])
    start = time.perf_counter()
    index = index_file.read_index(path)
    read = time.perf_counter() - start
    position = index.position_of(query_id)
    lookup = time.perf_counter() - start - read
    engine = search.make_engine("exact", index.codes, index.bits)
    engine.search(index.codes[[position]], FIRST_QUERY_K)
    searched = time.perf_counter() - start - read - lookup
    return {"seconds": seconds, "read_index_s": read, "position_of_s": lookup, "engine_search_s": searched}, text


def command_open_and_query(path, query_id, runs):
    """Wall seconds of `python search.py query --index IDX --query-id ID`, `runs` times, and whether it imports Keras."""
    command = [sys.executable, str(SEARCH_PY), "query", "--index", str(path), "--query-id", query_id, "-k", str(FIRST_QUERY_K)]
    times, text = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        text = result.stdout
    imports = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], capture_output=True, text=True, cwd=REPO_ROOT).stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in imports.splitlines() if line.startswith("import time:")}
    return {
        "command": " ".join(["python", "search.py", *command[2:]]),
        "run_seconds": times,
        "median_s": float(np.median(times)),
        "imports_keras": bool({"keras", "tensorflow"} & imported),
        "imports_numba": "numba" in imported,
    }, text


def measure_random_index(path, ntotal, bits=DEFAULT_BITS, command_runs=COMMAND_RUNS, seed=SEED):
    """Writes a random index at `path` and measures its size and its open + first query; a dict."""
    import engines  # noqa: F401  (imported before timing: imports are start-up, not opening)
    import h5py  # noqa: F401
    import search  # noqa: F401

    load_before = load_average()
    codes, write_seconds = write_random_index(path, ntotal, bits, seed)
    position = int(np.random.default_rng(seed + 1).integers(ntotal))
    query_id = f"item/{position}"
    runs, text = [], ""
    for _ in range(IN_PROCESS_RUNS):
        run, text = in_process_open_and_query(path, query_id)
        runs.append(run)
    result_id, result_distance = first_result(text)
    row = {
        "ntotal": ntotal,
        "bits": bits,
        "query_id": query_id,
        "k": FIRST_QUERY_K,
        "write_s": write_seconds,
        "file_bytes": os.path.getsize(path),
        "codes_bytes": dataset_storage_bytes(path, "codes"),
        "codes_array_bytes": int(codes.nbytes),
        "ids_bytes": dataset_storage_bytes(path, "ids"),
        "in_process": {"first": runs[0], "runs": runs, "best_s": min(run["seconds"] for run in runs)},
        "first_result": {"id": result_id, "distance": result_distance},
        "first_result_ok": result_id == query_id and result_distance == 0,
    }
    if command_runs > 0:
        command, command_text = command_open_and_query(path, query_id, command_runs)
        command["first_result_ok"] = first_result(command_text) == (query_id, 0)
        row["command"] = command
    row["load_average"] = [load_before, load_average()]
    return row


# --- 2. query by image ---------------------------------------------------------------------------------------


def ensure_cifar_index(model, data_dir, path, features=ENCODE_FEATURES):
    """Reuses the index at `path`, or builds it with `search.py encode`; returns the encode details."""
    command = [sys.executable, str(SEARCH_PY), "encode", "--model", str(model), "--dataset", "cifar10",
               "--data-dir", str(data_dir), "--split", "train", "--out", str(path), "--features", features]
    shown = " ".join(["python", "search.py", *command[2:]])
    if not Path(path).exists():
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"{shown} failed: {result.stderr.strip()}")
        seconds = time.perf_counter() - start
    else:
        seconds = None
    return {"command": shown, "reused": seconds is None, "seconds": seconds, "path": str(path), "file_bytes": os.path.getsize(path)}


@contextlib.contextmanager
def model_loaded_once():
    """search.py's model loader, wrapped so the model is loaded once and handed back after that."""
    import search

    original, loaded = search._load_encoder, {}

    def cached(model_path, features="none"):
        key = (str(model_path), features)
        if key not in loaded:
            loaded[key] = original(model_path, features)
        return loaded[key]

    search._load_encoder = cached
    try:
        yield cached
    finally:
        search._load_encoder = original


def save_query_images(images, folder):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, image in enumerate(images):
        path = folder / f"query_{number}.png"
        Image.fromarray(image.squeeze() if image.shape[-1] == 1 else image).save(path)
        paths.append(path)
    return paths


def measure_image_queries(index_path, model, test_images, workdir, seed=SEED):
    """Times `search.py query --model MODEL IMAGE -k 10` in-process, the model loaded once; a dict."""
    load_before = load_average()
    positions = np.random.default_rng(seed).choice(len(test_images), IMAGE_QUERIES + 1, replace=False)
    paths = save_query_images(test_images[positions], workdir / "query_images")
    with model_loaded_once() as load:
        start = time.perf_counter()
        load(str(model))
        model_load_s = time.perf_counter() - start
        times = [run_query_in_process(["query", "--index", str(index_path), "--model", str(model), str(path), "-k", str(IMAGE_K)])[0] for path in paths]
    timed = np.array(times[1:]) * 1000
    return {
        "queries": IMAGE_QUERIES,
        "k": IMAGE_K,
        "test_positions": positions.tolist(),
        "model_load_s": model_load_s,
        "first_ms": times[0] * 1000,
        "median_ms": float(np.median(timed)),
        "p90_ms": float(np.percentile(timed, 90)),
        "max_ms": float(timed.max()),
        "run_ms": timed.tolist(),
        "load_average": [load_before, load_average()],
    }


# --- 3. re-ranking ----------------------------------------------------------------------------------------------


class _FeaturesInMemory:
    """The part of `index.Index` that `search._rerank` reads, over features held in memory."""

    def __init__(self, features):
        self._features = features

    def features(self, positions):
        return self._features[positions].astype(np.float32)


def encode_queries(index, model, images):
    """Codes and features of test images, encoded as `query --rerank` encodes image queries."""
    import search

    encoder, _, features_model = search._load_encoder(str(model), index.attrs.get("features_layer", "latent"))
    tta = search.index_tta(index)
    parts = [search._encode_queries(encoder, features_model, images[start : start + QUERY_ENCODE_BATCH], tta)
             for start in range(0, len(images), QUERY_ENCODE_BATCH)]
    return np.concatenate([codes for codes, _ in parts]), np.concatenate([features for _, features in parts])


def rank_and_rerank(engine, feature_source, query_codes, query_features, n):
    """Per query: Hamming top-n, then `search._rerank` to the top RERANK_TOP; ids and seconds of each step."""
    import search

    hamming_ids, reranked_ids, search_s, rerank_s = [], [], [], []
    for row in range(len(query_codes)):
        start = time.perf_counter()
        distances, ids = engine.search(query_codes[row : row + 1], n)
        middle = time.perf_counter()
        _, kept, _ = search._rerank(feature_source, query_features[row], distances[0], ids[0], RERANK_TOP)
        end = time.perf_counter()
        hamming_ids.append(ids[0, :RERANK_TOP])
        reranked_ids.append(kept)
        search_s.append(middle - start)
        rerank_s.append(end - middle)
    return np.array(hamming_ids), np.array(reranked_ids), np.array(search_s), np.array(rerank_s)


def mean_average_precision(ids, query_labels, db_labels):
    """mAP@len(top list) with `evaluate._metric_sums` (DLBHC's: a query with no relevant item scores 0)."""
    import evaluate

    _, average_precision_sum = evaluate._metric_sums(db_labels[ids] == query_labels[:, None])
    return float(average_precision_sum / len(ids))


def rerank_row(order, engine, feature_source, query_codes, query_features, query_labels, db_labels, n):
    hamming_ids, reranked_ids, search_s, rerank_s = rank_and_rerank(engine, feature_source, query_codes, query_features, n)
    return {
        "order": order,
        "n": n,
        "features_read_from": "memory" if isinstance(feature_source, _FeaturesInMemory) else "index",
        "mAP_hamming": mean_average_precision(hamming_ids, query_labels, db_labels),
        "mAP_reranked": mean_average_precision(reranked_ids, query_labels, db_labels),
        "hamming_ms_per_query": float(np.median(search_s) * 1000),
        "rerank_added_ms_per_query": float(np.median(rerank_s) * 1000),
        "rerank_added_ms_mean": float(np.mean(rerank_s) * 1000),
        "rerank_added_ms_first_query": float(rerank_s[0] * 1000),  # holds reading the features, where they are read whole
    }


def measure_rerank(index_path, model, test_images, test_labels, nqueries, ns, seed=SEED):
    """mAP@1000 of the Hamming top list and of its re-ranking, stored and shuffled order; a dict."""
    import evaluate
    import index as index_file
    import search

    load_before = load_average()
    index = index_file.read_index(index_path)
    positions = np.random.default_rng(seed).choice(len(test_images), nqueries, replace=False)
    query_codes, query_features = encode_queries(index, model, test_images[positions])
    query_labels, db_labels = test_labels[positions], index.labels()
    print(f"re-ranking: {nqueries} test queries, the {index.attrs.get('features_layer')} features ({query_features.shape[1]}-d) of {index_path}", flush=True)
    rows = []
    engine = search.make_engine("exact", index.codes, index.bits)
    for n in ns:
        rows.append(rerank_row("stored", engine, index, query_codes, query_features, query_labels, db_labels, n))
        print_rerank_row(rows[-1])
    permutation = np.random.default_rng(seed + 2).permutation(index.ntotal)
    shuffled = search.make_engine("exact", index.codes[permutation], index.bits)
    in_memory = _FeaturesInMemory(index._read("features", None)[permutation])
    for n in ns:
        rows.append(rerank_row("shuffled", shuffled, in_memory, query_codes, query_features, query_labels, db_labels[permutation], n))
        print_rerank_row(rows[-1])
    check = evaluate.evaluate_retrieval(
        evaluate.unpack_bits(query_codes, index.bits), query_labels,
        evaluate.unpack_bits(index.codes, index.bits), db_labels, top=RERANK_TOP,
    )["mAP"]
    return {
        "queries": nqueries,
        "top": RERANK_TOP,
        "features_layer": index.attrs.get("features_layer"),
        "feature_dim": int(query_features.shape[1]),
        "shuffle_seed": seed + 2,
        "check_mAP_evaluate_retrieval": check,
        "rows": rows,
        "load_average": [load_before, load_average()],
    }


# --- output --------------------------------------------------------------------------------------------------


def print_random_row(row):
    command = row.get("command")
    print(
        f"{row['ntotal']:>10,} x {row['bits']} bits: file {row['file_bytes'] / 1e6:.1f} MB, codes {row['codes_bytes'] / 1e6:.2f} MB; "
        f"open + first query in-process {row['in_process']['first']['seconds']:.3f} s (best {row['in_process']['best_s']:.3f} s)"
        + (f", whole command {command['median_s']:.2f} s (median of {len(command['run_seconds'])})" if command else "")
        + f"; first result ok: {row['first_result_ok']}; load {row['load_average'][0]:.2f}",
        flush=True,
    )


def print_rerank_row(row):
    print(
        f"rerank {row['order']:<8} N={row['n']:>5}: mAP@{RERANK_TOP} Hamming {row['mAP_hamming']:.4f} -> re-ranked {row['mAP_reranked']:.4f}; "
        f"+{row['rerank_added_ms_per_query']:.2f} ms per query (median, features from {row['features_read_from']}; Hamming search {row['hamming_ms_per_query']:.2f} ms)",
        flush=True,
    )


def summary(results):
    """The key figures, for the one JSON line."""
    line = {"load_average": results["load_average"]}
    for row in results["random_index"]:
        line[f"random_{row['ntotal']}x{row['bits']}"] = {
            "codes_mb": round(row["codes_bytes"] / 1e6, 3), "file_mb": round(row["file_bytes"] / 1e6, 1),
            "open_first_query_s": round(row["in_process"]["first"]["seconds"], 3),
            "command_s": round(row["command"]["median_s"], 3) if "command" in row else None,
            "first_result_ok": row["first_result_ok"],
        }
    if results.get("image_queries"):
        image = results["image_queries"]
        line["image_query_ms"] = {"median": round(image["median_ms"], 1), "p90": round(image["p90_ms"], 1), "first": round(image["first_ms"], 1)}
    for name in ("rerank", "rerank_penultimate"):
        if results.get(name):
            line[name] = [{key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()
                           if key in ("order", "n", "mAP_hamming", "mAP_reranked", "rerank_added_ms_per_query")}
                          for row in results[name]["rows"]]
    return line


def main(argv=None):
    args = parse_args(argv)
    ns = args.rerank_n
    results = {
        "config": {"sizes": args.sizes, "bits": args.bits,
                   "command_runs": args.command_runs, "model": str(args.model) if args.model else None,
                   "data_dir": str(args.data_dir) if args.data_dir else None, "rerank_n": ns,
                   "rerank_queries": args.rerank_queries, "seed": SEED, "targets": TARGETS},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "load_average": [load_average()],
        "random_index": [],
        "notes": [],
    }
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        for ntotal in results["config"]["sizes"]:
            path = workdir / f"random_{ntotal}x{args.bits}.h5"
            results["random_index"].append(measure_random_index(path, ntotal, args.bits, args.command_runs))
            print_random_row(results["random_index"][-1])
            path.unlink()
        if args.model is None or args.data_dir is None or not args.model.is_file() or not args.data_dir.exists():
            note = "CIFAR-10 query-by-image and re-ranking skipped: they need --model MODEL.keras and --data-dir CIFAR (existing)"
            results["notes"].append(note)
            print(note)
        else:
            import data

            index_path = args.index or workdir / "cifar10_train.h5"
            results["cifar_index"] = ensure_cifar_index(args.model, args.data_dir, index_path)
            dataset = data.load_dataset("cifar10", data_dir=str(args.data_dir))
            results["image_queries"] = measure_image_queries(index_path, args.model, dataset.x_test, workdir)
            image = results["image_queries"]
            print(f"query by image, 50k CIFAR-10 index, model loaded: median {image['median_ms']:.1f} ms, p90 {image['p90_ms']:.1f} ms "
                  f"over {IMAGE_QUERIES} images (first {image['first_ms']:.1f} ms); load {image['load_average'][0]:.2f}", flush=True)
            if args.rerank:
                results["rerank"] = measure_rerank(index_path, args.model, dataset.x_test, dataset.y_test, args.rerank_queries, ns)
                print(f"check: evaluate.evaluate_retrieval mAP@{RERANK_TOP} of the stored order {results['rerank']['check_mAP_evaluate_retrieval']:.4f}")
                if args.penultimate_index:
                    results["cifar_index_penultimate"] = ensure_cifar_index(args.model, args.data_dir, args.penultimate_index, "penultimate")
                    results["rerank_penultimate"] = measure_rerank(args.penultimate_index, args.model, dataset.x_test, dataset.y_test, args.rerank_queries, ns)
    results["load_average"].append(load_average())
    line = summary(results)
    print(json.dumps(line))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
