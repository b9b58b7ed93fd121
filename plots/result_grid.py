"""Query results as a PNG grid: one row per query, the query on the left, then its results.

The grid is one picture (a canvas of cells, each image scaled to `CELL` pixels and framed),
drawn with a single `imshow` and a text line over each cell: a grid of 8 x 11 images takes a
fraction of the second that as many matplotlib axes would.
"""

import matplotlib

matplotlib.use("Agg")  # files only: runs on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

RELEVANT_COLOUR, IRRELEVANT_COLOUR = "#1a9641", "#d7191c"
CELL = 64  # pixels of each image's side in the grid
FRAME = 4  # pixels of the green or red frame around a result
TITLE_SPACE = 30  # pixels above each row for the titles (two lines)
GAP = 6  # pixels between cells
DPI = 100
FONT_SIZE = 7


def cell_origin(row, column):
    """`(top, left)` pixel of the image in cell (`row`, `column`) of the canvas (inside its frame)."""
    pitch_y, pitch_x = TITLE_SPACE + CELL + 2 * FRAME, CELL + 2 * FRAME + GAP
    return row * pitch_y + TITLE_SPACE + FRAME, column * pitch_x + FRAME


def plot_result_grid(query_images, result_images, distances, path, relevant=None, query_titles=None, result_titles=None):
    """Draws each query beside its results, titled with their Hamming distance, saves a PNG and returns the figure.

    Args:
        query_images: one uint8 image `(h, w, 3)` or `(h, w, 1)` per query.
        result_images: per query, a list of uint8 images of its results, best first.
        distances: per query, the results' Hamming distances.
        path: where to write the figure (the caller makes the write atomic).
        relevant: per query, one bool per result (shares the query's label), drawn as a green or
            red frame; `None` (or a `None` row) when labels are unknown. Defaults to `None`.
        query_titles: one short title per query. Defaults to `None`: "query".
        result_titles: per query, a short line under each result's distance (a file name).
            Defaults to `None`: the distance alone.

    Returns:
        The (closed) figure; its one axes holds the canvas (`cell_origin` says where each image is).
    """
    if len(result_images) != len(query_images) or len(distances) != len(query_images):
        raise ValueError(
            "`query_images`, `result_images` and `distances` must have one entry per query. "
            f"Received: {len(query_images)}, {len(result_images)} and {len(distances)}"
        )
    rows = len(query_images)
    columns = 1 + max((len(results) for results in result_images), default=0)
    height, width = cell_origin(rows, columns)
    canvas = np.full((height - TITLE_SPACE - FRAME, width - FRAME, 3), 255, np.uint8)
    figure = plt.figure(figsize=(canvas.shape[1] / DPI, canvas.shape[0] / DPI), dpi=DPI)
    axes = figure.add_axes((0, 0, 1, 1))
    texts = []
    for row in range(rows):
        _place(canvas, row, 0, query_images[row], None)
        texts.append((row, 0, (query_titles or ["query"] * rows)[row]))
        for position, image in enumerate(result_images[row]):
            is_relevant = None if relevant is None or relevant[row] is None else bool(relevant[row][position])
            _place(canvas, row, position + 1, image, is_relevant)
            title = f"d={int(distances[row][position])}"
            texts.append((row, position + 1, title if result_titles is None else f"{title}\n{result_titles[row][position]}"))
    axes.imshow(canvas, interpolation="nearest")
    for row, column, text in texts:
        top, left = cell_origin(row, column)
        axes.text(left + CELL / 2, top - FRAME - 2, text, ha="center", va="bottom", fontsize=FONT_SIZE)
    axes.axis("off")
    figure.savefig(path, format="png", dpi=DPI)
    plt.close(figure)
    return figure


def _place(canvas, row, column, image, is_relevant):
    """Scales `image` to the cell and paints it, framed green or red when its relevance is known."""
    top, left = cell_origin(row, column)
    if is_relevant is not None:
        colour = np.array(matplotlib.colors.to_rgb(RELEVANT_COLOUR if is_relevant else IRRELEVANT_COLOUR)) * 255
        canvas[top - FRAME : top + CELL + FRAME, left - FRAME : left + CELL + FRAME] = colour.astype(np.uint8)
    canvas[top : top + CELL, left : left + CELL] = _cell_image(image)


def _cell_image(image):
    """A uint8 image `(h, w, 1 or 3)` as RGB `(CELL, CELL, 3)`, scaled by nearest neighbour."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    scaled = np.asarray(Image.fromarray(image).resize((CELL, CELL), Image.NEAREST))
    return np.repeat(scaled[..., None], 3, axis=-1) if scaled.ndim == 2 else scaled
