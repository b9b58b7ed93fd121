"""The precision@k curve of a retrieval run, saved as a PNG."""

import matplotlib

matplotlib.use("Agg")  # files only: runs on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_precision_at_k(precision_at_k, path, title=""):
    """Draws precision@k for k = 1..len(precision_at_k) and saves it to `path` as PNG.

    Args:
        precision_at_k: mean precision over queries at each k, values in [0, 1].
        path: where to write the figure (the caller makes the write atomic).
        title: figure title, e.g. the dataset, method and code length. Defaults to `""`.
    """
    precision_at_k = np.asarray(precision_at_k)
    ranks = np.arange(1, len(precision_at_k) + 1)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(ranks, precision_at_k, linewidth=1.5)
    axes.set(xlabel="k (number of retrieved images)", ylabel="precision@k", ylim=(0, 1.02), xlim=(1, ranks[-1]))
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
