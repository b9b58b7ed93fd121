"""Query results as a PNG grid: one row per query, the query on the left, then its results."""

import matplotlib

matplotlib.use("Agg")  # files only: runs on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RELEVANT_COLOUR, IRRELEVANT_COLOUR = "#1a9641", "#d7191c"
CELL_INCHES = 1.3


def plot_result_grid(query_images, result_images, distances, path, relevant=None, query_titles=None, result_titles=None):
    """Draws each query beside its results, titled with their Hamming distance, saves a PNG and returns the figure.

    Args:
        query_images: one uint8 image `(h, w, 3)` or `(h, w, 1)` per query.
        result_images: per query, a list of uint8 images of its results, best first.
        distances: per query, the results' Hamming distances.
        path: where to write the figure (the caller makes the write atomic).
        relevant: per query, one bool per result (shares the query's label), drawn as a green or
            red border; `None` (or a `None` row) when labels are unknown. Defaults to `None`.
        query_titles: one short title per query. Defaults to `None`: "query".
        result_titles: per query, a short line under each result's distance (a file name).
            Defaults to `None`: the distance alone.
    """
    if len(result_images) != len(query_images) or len(distances) != len(query_images):
        raise ValueError(
            "`query_images`, `result_images` and `distances` must have one entry per query. "
            f"Received: {len(query_images)}, {len(result_images)} and {len(distances)}"
        )
    rows = len(query_images)
    columns = 1 + max((len(results) for results in result_images), default=0)
    figure, axes = plt.subplots(rows, columns, figsize=(CELL_INCHES * columns, CELL_INCHES * rows + 0.2), dpi=100, squeeze=False)
    for row in range(rows):
        _show(axes[row, 0], query_images[row], (query_titles or ["query"] * rows)[row], None)
        for column in range(1, columns):
            position = column - 1
            if position >= len(result_images[row]):
                axes[row, column].axis("off")
                continue
            is_relevant = None if relevant is None or relevant[row] is None else bool(relevant[row][position])
            title = f"d={int(distances[row][position])}"
            if result_titles is not None:
                title += f"\n{result_titles[row][position]}"
            _show(axes[row, column], result_images[row][position], title, is_relevant)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return figure


def _show(axes, image, title, is_relevant):
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    axes.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    axes.set_title(title, fontsize=8)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        if is_relevant is None:
            spine.set_visible(False)
        else:
            spine.set_edgecolor(RELEVANT_COLOUR if is_relevant else IRRELEVANT_COLOUR)
            spine.set_linewidth(4)
