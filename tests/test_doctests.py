"""The docstring examples of every module run and print what they show (`python -m doctest`)."""

import doctest
import importlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(path.stem for path in REPO_ROOT.glob("*.py")) + ["plots.compare", "plots.distances", "plots.bits", "plots.retrieved"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples of {name} failed (output above)"
