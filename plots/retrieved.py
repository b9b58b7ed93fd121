"""What the codes retrieve: a few queries, each beside the database images nearest to it in Hamming distance.

    python plots/retrieved.py RUN [--queries 3 17 42 | --seed S] [--count 8] [-k 10] [-o PATH]

draws `--count` queries of a finished run folder (drawn with `--seed`, or the ones `--queries`
names, by their position among the run's queries), each followed by its `-k` nearest database
images in rank order, framed green where they share the query's label (any label, for multi-label
data) and red where not, with the Hamming distance (and, for your own images, the file name) over each. Ranks come from the project's exact
search engine, ties to the lower database position as in the evaluation. Every run writes it as
`retrieved.png` from the images it holds; from a finished run the images are loaded again with the
run's own data settings.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_grid import plot_result_grid  # noqa: E402
from run_files import RunFilesError, read_run  # noqa: E402

import engines  # noqa: E402  (run_files puts the repository root on the path)
import evaluate  # noqa: E402
import rundir  # noqa: E402
from options import UsageError  # noqa: E402

QUERIES = 8
TOP = 10
NAME_CHARACTERS = 16  # of a file name under its image


def choose_queries(num_queries, count=QUERIES, seed=0):
    """`count` distinct query positions drawn with `seed`, in increasing order (all of them if fewer)."""
    return np.sort(np.random.default_rng(seed).choice(num_queries, min(count, num_queries), replace=False))


def retrieve(query_bits, db_bits, k=TOP):
    """`(distances, ids)` `[nq, k]` of the `k` database codes nearest each query's, by the exact engine."""
    code_length = np.shape(db_bits)[1]
    engine = engines.make_engine("exact", evaluate.pack_bits(db_bits), code_length)
    return engine.search(evaluate.pack_bits(query_bits), min(k, len(db_bits)))


def relevance(query_labels, result_labels):
    """`[nq, k]` bool: whether each result shares a label with its query; labels `[nq]`/`[nq, k]` or multi-hot."""
    query_labels, result_labels = np.asarray(query_labels), np.asarray(result_labels)
    if query_labels.ndim == 1:
        return result_labels == query_labels[:, None]
    return (result_labels.astype(bool) & query_labels[:, None, :].astype(bool)).any(axis=-1)


def plot_retrieved(queries, query_images, query_labels, query_bits, db_images, db_labels, db_bits, path, k=TOP, class_names=None,
                   db_names=None):
    """Draws the queries at positions `queries` with their `k` nearest database images; saves a PNG, returns the figure.

    `db_names`, the database images' file names (own images), are written under their distances.
    """
    queries = np.asarray(queries)
    distances, ids = retrieve(np.asarray(query_bits)[queries], db_bits, k)
    relevant = relevance(np.asarray(query_labels)[queries], np.asarray(db_labels)[ids])
    titles = [f"query {position}" + (f"\n{_label_name(query_labels[position], class_names)}" if class_names else "") for position in queries]
    names = None if db_names is None else [[_short(db_names[index]) for index in row] for row in ids]
    return plot_result_grid(
        [query_images[position] for position in queries], [[db_images[index] for index in row] for row in ids],
        distances, path, relevant=relevant, query_titles=titles, result_titles=names,
    )


def _short(name, width=NAME_CHARACTERS):
    """A file name's last path part, cut to `width` characters from its end.

    >>> _short("holidays/2019/beach-at-sunset.jpg", 12)
    '…-sunset.jpg'
    """
    name = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _label_name(label, class_names):
    label = np.asarray(label)
    return class_names[int(label)] if label.ndim == 0 else ", ".join(class_names[index] for index in np.flatnonzero(label))


def save_retrieved(path, queries, query_images, query_labels, query_bits, db_images, db_labels, db_bits, k=TOP, class_names=None,
                   db_names=None):
    """`retrieved.png`, written atomically."""
    with rundir.atomic_path(path) as temporary:
        plot_retrieved(queries, query_images, query_labels, query_bits, db_images, db_labels, db_bits, temporary, k, class_names, db_names)


def run_images(config, codes):
    """The run's `retrieval.Arrays` (images, class and file names), loaded again with its data settings; checked against its codes."""
    import retrieval

    arrays = retrieval.load_arrays(config)
    for role, split_items in (("db", arrays.split.database), ("query", arrays.split.queries)):
        if not np.array_equal(split_items.positions, codes[f"{role}_index"]):
            raise RunFilesError(f"the data the run's settings load now is not the data its codes were made from ({role} images differ)")
    return arrays


def main(argv=None):
    parser = argparse.ArgumentParser(prog="retrieved.py", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run folder")
    parser.add_argument("--queries", type=int, nargs="+", default=None, help="positions of the queries to draw among the run's queries (default: --count drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the queries drawn (default: %(default)s)")
    parser.add_argument("--count", type=int, default=QUERIES, help="queries drawn (default: %(default)s)")
    parser.add_argument("-k", type=int, default=TOP, help="images retrieved per query (default: %(default)s)")
    parser.add_argument("-o", "--out", default=None, help="the PNG to write (default: RUN/retrieved.png)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.k < 1:
        parser.error(f"--count and -k must be at least 1, got {args.count} and {args.k}")
    try:
        config, _, codes = read_run(args.run)
        num_queries = len(codes["query_bits"])
        queries = choose_queries(num_queries, args.count, args.seed) if args.queries is None else np.asarray(args.queries)
        if queries.min() < 0 or queries.max() >= num_queries:
            raise RunFilesError(f"--queries must lie in 0..{num_queries - 1}, the run's {num_queries} queries")
        arrays = run_images(config, codes)
    except (RunFilesError, UsageError) as error:
        parser.exit(2, f"retrieved.py: error: {error}\n")
    out = Path(args.out or Path(args.run) / rundir.RETRIEVED_FILE)
    save_retrieved(out, queries, arrays.query_x, codes["query_labels"], codes["query_bits"], arrays.db_x, codes["db_labels"], codes["db_bits"],
                   args.k, arrays.class_names, arrays.db_names)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
