"""The codeword each class settles into: the share of each class's codes with each bit set.

    python plots/bits.py RUN [-o PATH]

draws, from a finished run folder's `codes.h5`, a classes x bits map of the mean of each bit over
the database codes of each class (for multi-label data, of the images holding that label): a
bit near 0 or 1 for a class is that class's; a bit near 0.5 everywhere says nothing. Every run
writes it as `bits.png`.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_files import redraw_main  # noqa: E402

import rundir  # noqa: E402  (run_files puts the repository root on the path)


def bit_means(db_bits, db_labels, num_classes):
    """`[num_classes, L]`: the mean of each bit over the codes of each class (NaN for a class without images).

    >>> bit_means(np.array([[1, 0], [1, 1], [0, 0]]), np.array([0, 0, 1]), 2).tolist()
    [[1.0, 0.5], [0.0, 0.0]]
    """
    db_bits, db_labels = np.asarray(db_bits, dtype=np.float64), np.asarray(db_labels)
    members = np.eye(num_classes, dtype=bool)[db_labels] if db_labels.ndim == 1 else db_labels.astype(bool)
    counts = members.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (members.T.astype(np.float64) @ db_bits) / counts[:, None]


def plot_bits(means, path, class_names=None):
    """Draws the classes x bits map of `bit_means`; saves a PNG and returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    num_classes, code_length = means.shape
    figure, axes = pyplot.subplots(figsize=(max(5.0, 0.13 * code_length + 2.5), 0.35 * num_classes + 1.6))
    image = axes.imshow(means, cmap="RdBu_r", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    axes.set_yticks(range(num_classes), labels=list(class_names) if class_names else [str(label) for label in range(num_classes)])
    axes.set_xlabel("bit")
    axes.set_title(f"Share of each class's {code_length}-bit codes with the bit set")
    figure.colorbar(image, ax=axes, label="share set to 1")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    pyplot.close(figure)
    return figure


def num_classes_of(labels):
    """The number of classes labels `[n]` or `[n, C]` span."""
    labels = np.asarray(labels)
    return labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1


def save_bits(codes, path, class_names=None):
    """`bits.png` of a run from its codes (`rundir.read_codes`'s names); written atomically."""
    num_classes = len(class_names) if class_names else num_classes_of(codes["db_labels"])
    with rundir.atomic_path(path) as temporary:
        plot_bits(bit_means(codes["db_bits"], codes["db_labels"], num_classes), temporary, class_names)


def main(argv=None):
    return redraw_main(argv, "bits.py", __doc__.splitlines()[0], rundir.BITS_FILE,
                       lambda config, metrics, codes, out: save_bits(codes, out, metrics.get("class_names")))


if __name__ == "__main__":
    sys.exit(main())
