"""The precision-recall curve of a retrieval run over Hamming radii, saved as a PNG."""

import matplotlib

matplotlib.use("Agg")  # files only: runs on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Radii whose points get a label: exact matches, and the radius-2 ball the papers report.
LABELLED_RADII = (0, 2)


def plot_pr_curve(precision, recall, path, title=""):
    """Draws precision against recall, one point per Hamming radius r = 0..L, and saves it as PNG.

    Each point is the mean over queries of precision and recall among the items within Hamming
    distance r (`evaluate.evaluate_retrieval`'s `"pr_curve"`); recall grows with r up to 1 at r = L.

    Args:
        precision: mean precision within each radius 0..L, values in [0, 1].
        recall: mean recall within each radius 0..L, values in [0, 1], the same length.
        path: where to write the figure (the caller makes the write atomic).
        title: figure title, e.g. the dataset, method and code length. Defaults to `""`.
    """
    precision, recall = np.asarray(precision), np.asarray(recall)
    if precision.shape != recall.shape or precision.ndim != 1:
        raise ValueError(
            "`precision` and `recall` must be 1-D arrays of the same length, one value per radius. "
            f"Received: precision.shape={precision.shape}, recall.shape={recall.shape}"
        )
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(recall, precision, marker="o", markersize=3, linewidth=1.5)
    for radius in LABELLED_RADII:
        if radius < len(precision):
            axes.annotate(
                f"r = {radius}", (recall[radius], precision[radius]),
                textcoords="offset points", xytext=(6, -12), fontsize=8,
            )
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    subtitle = f"within Hamming radius r = 0..{len(precision) - 1}"
    axes.set_title(f"{title}\n{subtitle}" if title else subtitle)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
