"""How far apart the codes lie: Hamming distances of same-label pairs against different-label pairs.

    python plots/distances.py RUN [-o PATH]

draws, from a finished run folder's `codes.h5`, the share of query-database pairs at each Hamming
distance 0..L, for the pairs that share a label and for the others, and marks the distance at
which the two cross: below it a pair is more likely of one class than not. Every run writes it as
`distances.png`. Where the pairs are more than `MAX_PAIRS`, a seeded sample of queries (and of the
database) is counted.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_files import mean_ap, redraw_main  # noqa: E402

import evaluate  # noqa: E402  (run_files puts the repository root on the path)
import engines  # noqa: E402
import rundir  # noqa: E402

MAX_PAIRS = 2_000_000
SAME_COLOUR, DIFFERENT_COLOUR = "#1a9641", "#d7191c"


def sampled_pairs(num_queries, num_db, max_pairs=MAX_PAIRS, seed=0):
    """Sorted query and database positions whose pairs number at most `max_pairs`: all of the database where it fits."""
    rng = np.random.default_rng(seed)
    db = np.arange(num_db) if num_db <= max_pairs else np.sort(rng.choice(num_db, max_pairs, replace=False))
    queries = max(1, min(num_queries, max_pairs // len(db)))
    return np.sort(rng.choice(num_queries, queries, replace=False)), db


def distance_counts(query_bits, query_labels, db_bits, db_labels, max_pairs=MAX_PAIRS, seed=0):
    """Pairs at each Hamming distance 0..L: `(same_label_counts, different_label_counts)`, int64 `[L + 1]` each.

    >>> bits = np.array([[0, 0], [1, 1]])
    >>> distance_counts(bits, np.array([0, 1]), bits, np.array([0, 1]))
    (array([2, 0, 0]), array([0, 0, 2]))
    """
    code_length = np.shape(query_bits)[1]
    queries, db = sampled_pairs(len(query_bits), len(db_bits), max_pairs, seed)
    distances = engines.hamming_distances(evaluate.pack_bits(np.asarray(query_bits)[queries]), evaluate.pack_bits(np.asarray(db_bits)[db]))
    same = evaluate.Relevance(np.asarray(db_labels)[db])(np.asarray(query_labels)[queries])  # the evaluation's rule
    return (np.bincount(distances[same], minlength=code_length + 1).astype(np.int64),
            np.bincount(distances[~same], minlength=code_length + 1).astype(np.int64))


def crossing(same_counts, different_counts):
    """The smallest distance, past the same-label pairs' peak, at which a different-label pair is at least as likely; None if never.

    Each histogram is taken as shares of its own pairs.

    >>> crossing(np.array([4, 4, 1, 0]), np.array([0, 1, 2, 3]))
    2
    """
    same = same_counts / max(same_counts.sum(), 1)
    different = different_counts / max(different_counts.sum(), 1)
    past_peak = np.arange(len(same)) >= np.argmax(same)
    where = np.flatnonzero(past_peak & (different >= same) & (different > 0))
    return int(where[0]) if len(where) else None


def plot_distances(same_counts, different_counts, path, k, mean_average_precision):
    """Draws the two histograms (as shares of their pairs) and their crossing; saves a PNG and returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    code_length = len(same_counts) - 1
    distances = np.arange(code_length + 1)
    figure, axes = pyplot.subplots(figsize=(6.5, 4))
    for counts, colour, name in ((same_counts, SAME_COLOUR, "same label"), (different_counts, DIFFERENT_COLOUR, "different labels")):
        axes.bar(distances, counts / max(counts.sum(), 1), width=1.0, alpha=0.55, color=colour, label=f"{name} ({counts.sum():,} pairs)")
    cross = crossing(same_counts, different_counts)
    if cross is not None:
        axes.axvline(cross - 0.5, color="black", linestyle="--", label=f"they cross at distance {cross}")
    axes.set_xlabel("Hamming distance between a query's code and a database code")
    axes.set_ylabel("share of the pairs")
    axes.set_xlim(-0.5, code_length + 0.5)
    axes.set_title(f"{code_length}-bit codes, mAP@{k} {mean_average_precision:.3f}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)
    return figure


def save_distances(codes, metrics, path):
    """`distances.png` of a run from its codes (`rundir.read_codes`'s names) and metrics; written atomically."""
    same, different = distance_counts(codes["query_bits"], codes["query_labels"], codes["db_bits"], codes["db_labels"])
    with rundir.atomic_path(path) as temporary:
        plot_distances(same, different, temporary, *mean_ap(metrics))


def main(argv=None):
    return redraw_main(argv, "distances.py", __doc__.splitlines()[0], rundir.DISTANCES_FILE,
                       lambda config, metrics, codes, out: save_distances(codes, metrics, out))


if __name__ == "__main__":
    sys.exit(main())
