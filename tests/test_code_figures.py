"""Tests for the figures every run draws of its codes: what each shows, not only that a PNG exists."""

import subprocess
import sys
from pathlib import Path

import h5py
import matplotlib.colors
import numpy as np
import pytest

from plots import bits as bits_figure
from plots import distances as distances_figure
from plots import retrieved as retrieved_figure
from plots import result_grid
from plots.result_grid import IRRELEVANT_COLOUR, RELEVANT_COLOUR

REPO_ROOT = Path(__file__).resolve().parents[1]


def flat_images(count, side=4):
    """`count` uint8 colour images, image i filled with the value 10 * i: each tells which it is."""
    return np.repeat(np.arange(count, dtype=np.uint8)[:, None, None, None] * 10, side * side * 3).reshape(count, side, side, 3)


def codes_with_distances(distances, bits=8):
    """Database codes at the given Hamming distances from the all-zeros query code."""
    return np.array([[1] * distance + [0] * (bits - distance) for distance in distances], dtype=np.uint8)


def test_retrieved_places_each_querys_nearest_images_in_rank_order_with_frames_by_label(tmp_path):
    db_bits = codes_with_distances([5, 0, 3, 1, 7, 2])
    db_labels = np.array([0, 1, 0, 0, 1, 1])
    query_bits, query_labels = np.zeros((2, 8), np.uint8), np.array([0, 1])
    figure = retrieved_figure.plot_retrieved([1], flat_images(2), query_labels, query_bits, flat_images(6), db_labels, db_bits,
                                             tmp_path / "retrieved.png", k=4, class_names=("cat", "dog"))
    canvas = figure.axes[0].images[0].get_array()
    texts = [text.get_text() for text in figure.axes[0].texts]

    def cell(column):
        top, left = result_grid.cell_origin(0, column)
        return canvas[top : top + result_grid.CELL, left : left + result_grid.CELL]

    def frame(column):
        top, left = result_grid.cell_origin(0, column)
        return canvas[top - 1, left]  # a pixel of the frame just above the image

    assert np.all(cell(0) == 10) and texts[0] == "query 1\ndog"  # query 1, of class dog
    assert tuple(frame(0)) == (255, 255, 255)  # the query has no frame
    expected_order, expected_distances = [1, 3, 5, 2], [0, 1, 2, 3]  # nearest first
    for column, (index, distance) in enumerate(zip(expected_order, expected_distances), start=1):
        assert np.all(cell(column) == 10 * index)
        assert texts[column] == f"d={distance}"
        colour = RELEVANT_COLOUR if db_labels[index] == 1 else IRRELEVANT_COLOUR
        assert matplotlib.colors.to_hex(frame(column) / 255) == colour
    assert (tmp_path / "retrieved.png").stat().st_size > 0


def test_retrieved_counts_any_shared_label_as_relevant_for_multi_label_data():
    query = np.array([[1, 0, 1]])
    results = np.array([[[0, 0, 1], [0, 1, 0], [1, 1, 0]]])
    np.testing.assert_array_equal(retrieved_figure.relevance(query, results), [[True, False, True]])


def test_queries_are_drawn_with_their_seed():
    first, again = retrieved_figure.choose_queries(100, 8, seed=3), retrieved_figure.choose_queries(100, 8, seed=3)
    np.testing.assert_array_equal(first, again)
    assert len(set(first)) == 8 and list(first) == sorted(first)
    assert not np.array_equal(first, retrieved_figure.choose_queries(100, 8, seed=4))
    assert len(retrieved_figure.choose_queries(5, 8)) == 5


def test_distance_counts_are_the_codes_pairwise_distances_split_by_label():
    rng = np.random.default_rng(0)
    query_bits, db_bits = rng.integers(0, 2, (30, 12)), rng.integers(0, 2, (50, 12))
    query_labels, db_labels = rng.integers(0, 3, 30), rng.integers(0, 3, 50)
    same, different = distances_figure.distance_counts(query_bits, query_labels, db_bits, db_labels)
    distances = (query_bits[:, None, :] != db_bits[None, :, :]).sum(axis=-1)
    shared = query_labels[:, None] == db_labels[None, :]
    np.testing.assert_array_equal(same, np.bincount(distances[shared], minlength=13))
    np.testing.assert_array_equal(different, np.bincount(distances[~shared], minlength=13))
    sampled_same, sampled_different = distances_figure.distance_counts(query_bits, query_labels, db_bits, db_labels, max_pairs=500)
    assert 450 <= sampled_same.sum() + sampled_different.sum() <= 500  # a sample of the pairs where they are too many


def test_the_distance_figure_shows_each_histogram_as_shares_and_marks_the_crossing(tmp_path):
    same, different = np.array([6, 3, 1, 0, 0]), np.array([0, 1, 2, 4, 3])
    figure = distances_figure.plot_distances(same, different, tmp_path / "d.png", 1000, 0.5)
    axes = figure.axes[0]
    heights = [patch.get_height() for patch in axes.patches]
    np.testing.assert_allclose(heights, [*(same / same.sum()), *(different / different.sum())])
    assert distances_figure.crossing(same, different) == 2
    assert axes.lines[0].get_xdata()[0] == pytest.approx(1.5)
    assert axes.get_title() == "4-bit codes, mAP@1000 0.500"
    assert distances_figure.crossing(np.array([1, 0]), np.array([1, 0])) == 0


def test_bits_figure_shows_each_classs_mean_code(tmp_path):
    db_bits = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [0, 0, 1]])
    means = bits_figure.bit_means(db_bits, np.array([0, 0, 1, 1]), 2)
    np.testing.assert_allclose(means, [[1.0, 0.5, 1.0], [0.0, 0.0, 0.5]])
    multi = bits_figure.bit_means(db_bits, np.array([[1, 1], [1, 0], [0, 1], [0, 0]]), 2)
    np.testing.assert_allclose(multi, [[1.0, 0.5, 1.0], [0.5, 0.0, 0.5]])
    figure = bits_figure.plot_bits(means, tmp_path / "bits.png", class_names=("cat", "dog"))
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), means)
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == ["cat", "dog"]


def fake_run(folder, code_length=8):
    """A finished run folder with hand-made codes: two classes whose codes sit apart."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "metrics.json").write_text('{"top": 4, "mAP@4": 0.75, "class_names": ["cat", "dog"]}')
    labels = np.array([0, 0, 1, 1])
    bits = np.array([[0] * code_length, [0] * (code_length - 1) + [1], [1] * code_length, [1] * code_length])
    with h5py.File(folder / "codes.h5", "w") as codes:
        codes["db_bits"], codes["query_bits"], codes["db_labels"], codes["query_labels"] = bits, bits, labels, labels
    return folder


@pytest.mark.parametrize("script", ["distances", "bits"])
def test_the_code_figures_redraw_from_a_finished_run(tmp_path, script):
    run = fake_run(tmp_path / "run")
    completed = subprocess.run([sys.executable, f"plots/{script}.py", str(run)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert (run / f"{script}.png").stat().st_size > 0


@pytest.mark.parametrize("script", ["distances", "bits", "retrieved"])
def test_a_folder_without_a_run_is_one_line_and_exit_2(tmp_path, script):
    (tmp_path / "empty").mkdir()
    completed = subprocess.run([sys.executable, f"plots/{script}.py", str(tmp_path / "empty")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stderr == f"{script}.py: error: {tmp_path / 'empty'} has no config.json: not a finished run folder\n"


@pytest.mark.slow
def test_a_run_draws_its_retrievals_and_redraws_them_with_other_queries(tiny_tree, tmp_path):
    import retrieval
    from cli import tiny_argv

    out = tmp_path / "run"
    assert retrieval.main(tiny_argv(tiny_tree, out)) == 0
    drawn = (out / "retrieved.png").read_bytes()
    command = [sys.executable, "plots/retrieved.py", str(out), "--queries", "3", "17", "-k", "5", "-o", str(tmp_path / "again.png")]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "again.png").read_bytes() != drawn
    refused = subprocess.run([*command[:3], "--queries", "99"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--queries must lie in 0..31" in refused.stderr
