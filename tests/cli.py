"""Helpers for the command-line tests: the tiny image tree's images and argv, and a run that must fail cleanly."""

import numpy as np
import pytest
from PIL import Image

import retrieval

TINY_CLASSES = ("circle", "square", "stripes", "triangle")
TINY_TRAIN_PER_CLASS, TINY_TEST_PER_CLASS, TINY_SIZE = 30, 8, 32


def tiny_image(class_index, rng):
    """A 32x32 RGB image (CIFAR-sized) whose bright quadrant says its class, plus noise: easy to learn."""
    pixels = rng.integers(0, 60, size=(TINY_SIZE, TINY_SIZE, 3))
    half = TINY_SIZE // 2
    row, column = divmod(class_index, 2)
    pixels[row * half : (row + 1) * half, column * half : (column + 1) * half, class_index % 3] += 190
    return Image.fromarray(pixels.astype(np.uint8))


def fails_with(capsys, argv, message, main=retrieval.main):
    """Runs a CLI's `main` in-process (retrieval.py's unless given) and asserts exit status 2 with
    `message` on stderr, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr, stderr
    assert "Traceback" not in stderr
    return stderr


def tiny_argv(tiny_tree, out, *extra):
    """A quick run on the `tiny_tree` fixture: the original CNN, 12 bits, 3 epochs, silent."""
    return ["--data-dir", str(tiny_tree), "--arch", "dbr", "-l", "12", "-e", "3", "-s", "0", "--out", str(out), *extra]
