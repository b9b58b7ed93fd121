"""Tests for plots/: each figure is written as a PNG, and bad input is refused."""

import pytest
from PIL import Image

from plots.pr_curve import plot_pr_curve
from plots.precision_at_k import plot_precision_at_k


def test_precision_at_k_writes_png(tmp_path):
    plot_precision_at_k([1.0, 0.5, 2 / 3], tmp_path / "p.png", title="tiny")
    with Image.open(tmp_path / "p.png") as image:
        assert image.format == "PNG" and image.size == (600, 400)


def test_pr_curve_writes_png(tmp_path):
    # The hand-worked curve of tests/test_evaluate.py: radii 0..4.
    plot_pr_curve([1 / 3, 2 / 9, 1 / 3, 1 / 3, 1 / 3], [1 / 6, 1 / 3, 1 / 2, 2 / 3, 1], tmp_path / "pr.png")
    with Image.open(tmp_path / "pr.png") as image:
        assert image.format == "PNG" and image.size == (600, 400)


def test_pr_curve_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match=r"same length.* Received: precision\.shape=\(2,\), recall\.shape=\(3,\)"):
        plot_pr_curve([1, 0.5], [0, 0.5, 1], tmp_path / "pr.png")
    assert not (tmp_path / "pr.png").exists()
