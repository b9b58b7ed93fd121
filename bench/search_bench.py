"""Benchmark of the search engines: exact counting top-k against FAISS's binary and float indexes.

Times `engines.make_engine(...).search(query_codes, k)` for 1,000 queries, k = 1, 100 and 1000, on

- random 48- and 64-bit codes, databases of 50k and 1M codes (`--sizes` adds 10M, slow);
- the real CIFAR-10 codes of a run, `--codes RUN/codes.h5` (`db_bits`, the first 1,000 `query_bits`);
- float search for comparison: random 4096-d float32 features (the width of DLBHC's fc7) in
  `faiss.IndexFlatL2`, databases of 50k and 200k (larger ones do not fit in 24 GiB).

What each figure includes: every `search` call is timed whole, from packed queries to the sorted
`(distances, ids)` arrays, so it includes the top-k selection and, for the binary engines, the
validation and word packing of the queries. It excludes building the index (timed apart, `build
s`). `exact` and `faiss` (`IndexBinaryFlat`) scan every code; `faiss-mih` (multi-index hashing)
and `faiss-ivf` probe part of the database and report their recall@k against `exact`, counted with
ties (a returned code counts when it is no farther than the exact k-th neighbour); `faiss` reports
whether it returned exactly `exact`'s distances and ids. `ns/pair` is wall time / (queries x
database size), the cost per (query, code) comparison including its share of the selection.
Float rows: one matrix product plus FAISS's top-k per query batch.

Each timing is the best of `repeats` runs after one warm-up call (which also compiles the numba
kernels); the JSON keeps every run (`run_seconds`) and the median (`median_qps`) too, and the table
prints both q/s. All threads of the machine in use (`--threads` to pin both numba and FAISS); other
processes slow every row, so the load average is recorded beside each row. Peak memory is the
process's maximum resident set (`resource.getrusage`), which only grows: read it row by row.

    python bench/search_bench.py [--sizes 50000,1000000,10000000] [--codes RUN/codes.h5]
                                 [--json results.json] [--threads 2]
"""

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import options  # noqa: E402  (after the path: the bench runs from anywhere)

CONFIG = {
    "nq": 1000,  # queries per timed search call
    "sizes": [50_000, 1_000_000],  # random database sizes (codes)
    "code_lengths": [48, 64],  # bits of the random codes
    "ks": [1, 100, 1000],  # neighbours per query
    "engines": ["exact", "faiss", "faiss-mih", "faiss-ivf"],  # binary engines timed
    "float_sizes": [50_000, 200_000],  # database sizes of the float search
    "feature_dim": 4096,  # float feature width
    "repeats": 3,  # timed runs per row, the best reported
    "max_row_seconds": 20,  # stop repeating a row once its runs add up to this
    "seed": 0,
}


def parse_args():
    parser = options.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in CONFIG["sizes"]),
        help="comma-separated random database sizes. Defaults to 50000,1000000.",
    )
    parser.add_argument(
        "--engines",
        default=",".join(CONFIG["engines"]),
        help="comma-separated binary engines. Defaults to exact,faiss,faiss-mih,faiss-ivf.",
    )
    parser.add_argument(
        "--float-sizes",
        default=",".join(str(size) for size in CONFIG["float_sizes"]),
        help="comma-separated float database sizes; empty for none. Defaults to 50000,200000.",
    )
    parser.add_argument("--codes", type=Path, help="a run's codes.h5 to search too. Defaults to none.")
    parser.add_argument("--json", type=Path, help="write the results here. Defaults to none.")
    parser.add_argument(
        "--threads", type=int, help="threads for numba and FAISS. Defaults to all cores."
    )
    parser.add_argument("--repeats", type=int, default=CONFIG["repeats"], help="Defaults to 3.")
    return parser.parse_args()


def sizes_list(text):
    return [int(float(size)) for size in text.split(",") if size.strip()]


def peak_memory_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def timed_runs(function, repeats):
    """Warm-up call, then up to `repeats` timed calls; returns (every run's wall seconds, last result)."""
    result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
        if sum(times) > CONFIG["max_row_seconds"]:
            break
    return times, result


def index_bytes(engine):
    """Bytes the engine holds for the database: its codes, or FAISS's serialised index."""
    if hasattr(engine, "index"):
        import faiss

        return int(faiss.serialize_index_binary(engine.index).nbytes)
    return int(engine._db_words.nbytes)


def tie_aware_recall(distances, ids, exact_distances):
    """Share of returned codes no farther than the exact k-th neighbour (any id among ties)."""
    return float(np.mean((ids >= 0) & (distances <= exact_distances[:, -1:])))


def timing_row(data, bits, nq, ntotal, engine, k, times, load_before, **facts):
    """One table/JSON row: the best of `times` (seconds per search call) as q/s and ns per pair, the median too."""
    seconds = min(times)
    return {
        "data": data, "bits": bits, **({"dim": facts.pop("dim")} if "dim" in facts else {}),
        "ntotal": ntotal, "nq": nq, "engine": engine, "k": k,
        "qps": nq / seconds, "ns_per_pair": seconds / (nq * ntotal) * 1e9, "seconds": seconds,
        "median_qps": nq / float(np.median(times)), "run_seconds": times, **facts,
        "peak_memory_mb": peak_memory_mb(), "load_average": [load_before, os.getloadavg()[0]],
    }


def bench_codes(name, query_codes, db_codes, bits, engine_names, repeats, rows):
    from engines import make_engine

    nq, ntotal = len(query_codes), len(db_codes)
    print(f"\n{name}: {nq} queries x {ntotal:,} codes of {bits} bits", flush=True)
    exact_results = {}
    for engine_name in engine_names:
        start = time.perf_counter()
        engine = make_engine(engine_name, db_codes, bits)
        build_seconds = time.perf_counter() - start
        for k in CONFIG["ks"]:
            if k > ntotal:
                continue
            load_before = os.getloadavg()[0]
            times, (distances, ids) = timed_runs(lambda: engine.search(query_codes, k), repeats)
            row = timing_row(name, bits, nq, ntotal, engine_name, k, times, load_before,
                             build_seconds=build_seconds, codes_bytes=int(db_codes.nbytes), index_bytes=index_bytes(engine))
            if engine_name == "exact":
                exact_results[k] = distances, ids
            elif k in exact_results:
                exact_distances, exact_ids = exact_results[k]
                row["recall"] = tie_aware_recall(distances, ids, exact_distances)
                row["identical_to_exact"] = bool(
                    np.array_equal(distances, exact_distances) and np.array_equal(ids, exact_ids)
                )
            rows.append(row)
            print_row(row)
        del engine


def bench_float(ntotal, repeats, rows, rng):
    import faiss

    dim, nq = CONFIG["feature_dim"], CONFIG["nq"]
    print(f"\nfloat: {nq} queries x {ntotal:,} features of {dim} float32", flush=True)
    db_features = rng.standard_normal((ntotal, dim), dtype=np.float32)
    query_features = rng.standard_normal((nq, dim), dtype=np.float32)
    start = time.perf_counter()
    index = faiss.IndexFlatL2(dim)
    index.add(db_features)
    build_seconds = time.perf_counter() - start
    for k in CONFIG["ks"]:
        load_before = os.getloadavg()[0]
        times, _ = timed_runs(lambda: index.search(query_features, k), repeats)
        row = timing_row("random float32", None, nq, ntotal, "faiss-flat-l2", k, times, load_before, dim=dim,
                         build_seconds=build_seconds, codes_bytes=int(db_features.nbytes), index_bytes=int(db_features.nbytes))
        rows.append(row)
        print_row(row)
    del index, db_features


HEADER = (
    f"{'data':<16} {'bits':>5} {'ntotal':>10} {'engine':<14} {'k':>5} {'q/s':>9} {'median':>9} "
    f"{'ns/pair':>8} {'recall':>7} {'same':>5} {'index MB':>9} {'peak MB':>8} {'load':>5}"
)


def print_row(row):
    recall = f"{row['recall']:.3f}" if "recall" in row else ""
    same = {True: "yes", False: "no"}.get(row.get("identical_to_exact"), "")
    bits = row["bits"] if row["bits"] is not None else f"{row['dim']}d"
    print(
        f"{row['data']:<16} {bits:>5} {row['ntotal']:>10,} {row['engine']:<14} {row['k']:>5} "
        f"{row['qps']:>9,.0f} {row['median_qps']:>9,.0f} {row['ns_per_pair']:>8.3f} {recall:>7} {same:>5} "
        f"{row['index_bytes'] / 1e6:>9.1f} {row['peak_memory_mb']:>8.0f} "
        f"{row['load_average'][0]:>5.2f}",
        flush=True,
    )


def main():
    args = parse_args()
    import faiss
    import numba

    if args.threads:
        numba.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    from evaluate import pack_bits

    engine_names = [name for name in args.engines.split(",") if name]
    if "exact" in engine_names:  # exact first: the others are compared with it
        engine_names.remove("exact")
        engine_names.insert(0, "exact")
    rng = np.random.default_rng(CONFIG["seed"])
    rows = []
    print(HEADER)
    for bits in CONFIG["code_lengths"]:
        code_size = -(-bits // 8)
        for ntotal in sizes_list(args.sizes):
            db_codes = pack_bits(rng.integers(0, 2, (ntotal, bits), dtype=np.uint8))
            query_codes = pack_bits(rng.integers(0, 2, (CONFIG["nq"], bits), dtype=np.uint8))
            assert db_codes.shape[1] == code_size
            bench_codes("random", query_codes, db_codes, bits, engine_names, args.repeats, rows)
            del db_codes
    if args.codes:
        import h5py

        with h5py.File(args.codes, "r") as file:
            db_bits, query_bits = file["db_bits"][:], file["query_bits"][: CONFIG["nq"]]
        bench_codes(
            f"codes.h5", pack_bits(query_bits), pack_bits(db_bits), db_bits.shape[1],
            engine_names, args.repeats, rows,
        )
    for ntotal in sizes_list(args.float_sizes):
        bench_float(ntotal, args.repeats, rows, rng)
    results = {
        "config": {**CONFIG, "sizes": sizes_list(args.sizes), "engines": engine_names,
                   "float_sizes": sizes_list(args.float_sizes), "repeats": args.repeats,
                   "codes": str(args.codes) if args.codes else None},
        "includes": (
            "each figure times a whole search call on 1000 packed queries: distances, top-k "
            "selection and sorted (distances, ids); not the index build"
        ),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "numba_threads": numba.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "faiss": faiss.__version__,
        },
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
